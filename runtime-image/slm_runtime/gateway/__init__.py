"""`slm-gateway`: one OpenAI and Ollama endpoint in front of every LocalModel."""
