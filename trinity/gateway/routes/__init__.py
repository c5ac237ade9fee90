"""The gateway's routes: ``completions`` (the OpenAI API) and ``ops`` (models, health, metrics)."""
