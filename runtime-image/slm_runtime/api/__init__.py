"""The HTTP APIs: a package per family (``ollama``, ``openai``), each with its request models and
a router built by a factory; health, bearer auth and request-body rules they share."""
