"""Wire formats shared by processes that do not otherwise depend on each other: ``openai`` (the
OpenAI / vLLM chat and completions format, spoken by the gateway and the emulated engines)."""
