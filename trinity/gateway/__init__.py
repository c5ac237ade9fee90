"""The PD gateway: OpenAI-compatible API in front of a prefill pool and a decode pool, with the
vector pool for semantic caches and RAG (before prefill and while decoding).

``app`` / ``state`` / ``routes/`` (HTTP), ``pipeline`` + ``decode`` (per-request orchestration),
``retrieval`` (embedding, caches, search), ``backends/`` (openai, vllm_pd), ``config``
(GatewayConfig), ``cli`` (``trinity gateway``).
"""
