"""slm-operator: reconciles LocalModel resources into running model servers."""
