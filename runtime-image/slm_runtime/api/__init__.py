"""The HTTP APIs: a package per family (``ollama``, ``openai``), each with its typed requests and
answers (``protocol``), a serving object that answers them (``serving``) and a router built by a
factory that binds it to HTTP; health, bearer auth, request-body rules and stream framing they
share."""
