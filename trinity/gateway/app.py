"""The PD gateway's FastAPI application: ``create_app(config)``.

The lifespan connects to the pool and the LLM backends and keeps them, typed, on
``app.state.gateway`` (:class:`~trinity.gateway.state.GatewayState`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from trinity.gateway.config import GatewayConfig
from trinity.gateway.metrics import GatewayMetrics
from trinity.gateway.routes import completions, ops
from trinity.gateway.state import GatewayState
from trinity.protocol.openai import install_error_handlers

__all__ = ["create_app"]


def create_app(cfg: GatewayConfig, embedder: Any = None) -> FastAPI:
    """Build the gateway; ``embedder`` (``encode(list[str]) -> ndarray``) overrides the local model."""
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = await GatewayState.start(cfg, metrics, embedder)
        try:
            yield
        finally:
            await app.state.gateway.aclose()

    app = FastAPI(title="Trinity PD gateway", lifespan=lifespan)
    install_error_handlers(app)  # NOTE: unknown routes and methods answer OpenAI's error shape too
    app.include_router(completions.router)
    app.include_router(ops.router)
    return app
