"""slm-runtime: the model server and puller that every LocalModel pod runs."""
