"""One router per API family: health, Ollama, OpenAI."""
