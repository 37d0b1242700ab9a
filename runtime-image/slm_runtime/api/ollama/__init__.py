"""The Ollama API family."""
