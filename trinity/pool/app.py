"""The pool's FastAPI application: ``create_app(config)``.

The lifespan opens the data directory (replaying WALs) before the first request and
snapshots everything on a graceful shutdown.  Routes: ``trinity.pool.routes`` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from trinity.pool.auth import add_security_scheme
from trinity.pool.config import PoolConfig
from trinity.pool.errors import FastJSONResponse, install_error_handlers
from trinity.pool.guard import Guard
from trinity.pool.protocol import UpsertVectors
from trinity.pool.routes import caches, collections, ops, search, vectors
from trinity.pool.state import PoolState

__all__ = ["create_app"]

log = logging.getLogger("trinity.pool")

DESCRIPTION = ("One shared, continuously batched vector-search pool for prefill/decode-disaggregated LLM serving: "
               "collections, k-NN search by stage and deadline, semantic caches.")


def create_app(config: PoolConfig | None = None) -> FastAPI:
    """Build the pool's ASGI app (the state opens in the lifespan, i.e. under uvicorn)."""
    config = config or PoolConfig()
    state = PoolState(config)
    app = FastAPI(title="Trinity vector pool", version="1.0", description=DESCRIPTION, lifespan=_lifespan,
                  default_response_class=FastJSONResponse)
    app.state.pool = state
    install_error_handlers(app, config.retry_after_s)
    for module in (ops, collections, vectors, search, caches):
        app.include_router(module.router)
    app.openapi = lambda: _openapi(app, config.auth_enabled)  # type: ignore[method-assign]
    app.add_middleware(Guard, state=state)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: PoolState = app.state.pool
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, state.open)
    sweeper = asyncio.create_task(_sweep_caches(state))
    log.info("trinity pool ready: %d collection(s), %d cache(s), data dir %s",
             len(state.catalog.collections), len(state.caches), state.config.data_dir)
    try:
        yield
    finally:
        sweeper.cancel()
        log.info("shutting down: snapshotting collections")
        await loop.run_in_executor(None, state.close)


def _openapi(app: FastAPI, auth: bool) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        # NOTE: the upsert body is parsed off the event loop, so FastAPI does not see its model
        schema["components"]["schemas"]["UpsertVectors"] = UpsertVectors.model_json_schema(
            ref_template="#/components/schemas/{model}")
        app.openapi_schema = add_security_scheme(schema) if auth else schema
    return app.openapi_schema


async def _sweep_caches(state: PoolState) -> None:
    """Periodically drop expired cache entries (TTL eviction)."""
    while True:
        await asyncio.sleep(state.config.cache_sweep_s)
        for cache in list(state.caches.values()):
            try:
                await state.run_io(cache.sweep)
            except Exception:  # noqa: BLE001 - never let the sweeper die
                log.exception("cache %s: sweep failed", cache.name)
