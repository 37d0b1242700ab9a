"""The OpenAI API family: chat completions, completions, embeddings, models and responses."""
