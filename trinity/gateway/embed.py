"""Query embedding through an OpenAI-compatible ``/v1/embeddings`` server (``embed = "openai"``).

Production deployments run their embedding model as a server -- vLLM with an embedding model
(``vllm serve BAAI/bge-small-en-v1.5``), text-embeddings-inference, or any server speaking
OpenAI's embeddings API -- rather than in the gateway. The vectors must match the pool
collection's dimension (MiniLM's 384 for the bundled corpus). The local MiniLM
(``embed = "local"``) stays the default.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from trinity.client.pool import PoolError

__all__ = ["OpenAIEmbedder"]


class OpenAIEmbedder:
    """``aencode(texts)`` -> one vector per text, in order, from ``{base_url}/embeddings``."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 30.0) -> None:
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s,
                                        limits=httpx.Limits(max_keepalive_connections=64))

    async def _model(self) -> str:
        if self.model is None:
            data = (await self._call("GET", "/models")).get("data") or []
            if not data or not isinstance(data[0], dict) or "id" not in data[0]:
                raise PoolError("unavailable", f"{self.base_url}/models lists no model; set --embed-model")
            self.model = str(data[0]["id"])
        return self.model

    async def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            resp = await self.client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise PoolError("unavailable", f"embedding server {self.base_url}: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise PoolError("error", f"embedding server {self.base_url}{path}: HTTP {resp.status_code}: "
                                     f"{resp.text[:200]}", resp.status_code)
        try:
            return resp.json()
        except ValueError:
            raise PoolError("error", f"embedding server {self.base_url}{path}: response is not JSON") from None

    async def aencode(self, texts: Sequence[str]) -> list[list[float]]:
        body = {"model": await self._model(), "input": list(texts), "encoding_format": "float"}
        data = (await self._call("POST", "/embeddings", body)).get("data")
        if not isinstance(data, list) or len(data) != len(texts):
            raise PoolError("error", f"embedding server {self.base_url}: expected {len(texts)} embeddings")
        rows = sorted(data, key=lambda d: d.get("index", 0))
        return [list(map(float, d["embedding"])) for d in rows]

    async def aclose(self) -> None:
        await self.client.aclose()
