"""What the gateway's handlers share, typed, on ``app.state.gateway``."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from trinity.client.pool import PoolClient
from trinity.gateway.backends import make_backend
from trinity.gateway.backends.openai import OpenAIBackend
from trinity.gateway.config import GatewayConfig
from trinity.gateway.metrics import GatewayMetrics
from trinity.gateway.pipeline import Pipeline
from trinity.gateway.retrieval import Retriever

__all__ = ["GatewayState", "gateway_state"]

log = logging.getLogger(__name__)


async def _local_embedder(cfg: GatewayConfig) -> Any:
    from trinity.data.embed import Embedder  # NOTE: lazy: sentence-transformers is heavy (embed=pool skips it)

    try:
        emb = Embedder(num_threads=cfg.retrieval.embed_threads)
        await asyncio.to_thread(emb.encode, ["warm-up"])  # NOTE: load the weights before the first request
        return emb
    except Exception:  # noqa: BLE001 - degrade to the pool's embedder rather than not starting
        log.exception("local embedder unavailable; sending texts to the pool instead (embed=pool)")
        return None


@dataclass
class GatewayState:
    config: GatewayConfig
    metrics: GatewayMetrics
    pool: PoolClient
    backend: OpenAIBackend
    retriever: Retriever
    pipeline: Pipeline
    gate: asyncio.Semaphore
    ensure_caches: asyncio.Task

    @classmethod
    async def start(cls, cfg: GatewayConfig, metrics: GatewayMetrics, embedder: Any = None) -> GatewayState:
        """Connect to the pool and the backends; ``embedder`` overrides the local model."""
        decode_embedder = None
        if embedder is None and cfg.retrieval.embed == "local":
            embedder = await _local_embedder(cfg)
            if embedder is not None and cfg.retrieval.embed_decode_lane:
                decode_embedder = await _local_embedder(cfg)
        elif embedder is None and cfg.retrieval.embed == "openai":
            from trinity.gateway.embed import OpenAIEmbedder

            assert cfg.retrieval.embed_url
            embedder = OpenAIEmbedder(cfg.retrieval.embed_url, cfg.retrieval.embed_model,
                                      os.environ.get("TRINITY_EMBED_API_KEY"))
        pool = PoolClient(cfg.pool_url, cfg.pool_api_key)
        backend = make_backend(cfg, metrics)
        retriever = Retriever(cfg, pool, metrics, embedder, decode_embedder)
        pipeline = Pipeline(cfg, backend, retriever, metrics)
        ensure = asyncio.create_task(retriever.ensure_caches())
        return cls(cfg, metrics, pool, backend, retriever, pipeline, asyncio.Semaphore(cfg.max_concurrency), ensure)

    async def aclose(self) -> None:
        self.ensure_caches.cancel()
        await self.retriever.aclose()
        await self.backend.aclose()
        await self.pool.aclose()


def gateway_state(request: Request) -> GatewayState:
    return request.app.state.gateway
