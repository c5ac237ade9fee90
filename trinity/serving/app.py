"""The FastAPI application of the vector pool: ``create_app(config)``.

Routes (all JSON; see ``docs/api.md`` and ``/openapi.json``):

* ``GET /health`` (no auth), ``GET /metrics`` (Prometheus text), ``GET /v1/stats``
* collections: ``/v1/collections[/{name}[/vectors|/vectors/get|/vectors/delete|/search|/train]]``
* semantic caches: ``/v1/caches[/{name}[/lookup|/insert|/tenants/{tenant}]]``

The app owns a :class:`~trinity.serving.state.PoolState`; its lifespan opens the data
directory (replaying WALs) before the first request and snapshots everything on a
graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import psutil
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from trinity.serving import cache_routes, routes
from trinity.serving.auth import add_security_scheme
from trinity.serving.config import ServerConfig
from trinity.serving.errors import FastJSONResponse, install_error_handlers
from trinity.serving.guard import Guard
from trinity.serving.models import UpsertVectors
from trinity.serving.state import PoolState

log = logging.getLogger("trinity.serving")


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """Build the pool's ASGI app (the state opens in the lifespan, i.e. under uvicorn)."""
    config = config or ServerConfig()
    state = PoolState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(None, state.open)
        sweeper = asyncio.create_task(_sweep_caches(state))
        log.info("trinity pool ready: %d collection(s), %d cache(s), data dir %s",
                 len(state.catalog.collections), len(state.caches), config.data_dir)
        try:
            yield
        finally:
            sweeper.cancel()
            log.info("shutting down: snapshotting collections")
            await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = FastAPI(title="Trinity vector pool", version="1.0",
                  description="One shared, continuously batched vector-search pool for prefill/decode-disaggregated "
                              "LLM serving: collections, k-NN search by stage and deadline, semantic caches.",
                  lifespan=lifespan, default_response_class=FastJSONResponse)
    app.state.pool = state
    install_error_handlers(app, config.retry_after_s)
    app.include_router(routes.router)
    app.include_router(cache_routes.router)

    @app.get("/health", tags=["ops"], summary="Liveness: the engine loop runs (no auth, never queued)")
    async def health() -> Response:
        thread = state.engine._thread
        alive = thread is not None and thread.is_alive()
        body = {"status": "ok" if alive else "engine loop stopped", "collections": len(state.catalog.collections),
                "caches": len(state.caches), "inflight": state.inflight,
                "uptime_s": round(time.time() - state.started, 1),
                "quarantined": dict(state.catalog.quarantined)}  # NOTE: the pool serves the rest: still 200
        return FastJSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/stats", tags=["ops"], summary="Process memory vs the vectors held")
    async def stats(request: Request) -> Response:
        colls = {n: await state.run_io(c.describe) for n, c in list(state.catalog.collections.items())}
        raw = sum(c["memory"]["raw_vectors"] for c in colls.values())
        held = sum(c["memory"]["total"] for c in colls.values())
        rss = psutil.Process(os.getpid()).memory_info().rss
        return FastJSONResponse({"rss_bytes": rss, "vector_bytes": raw, "index_bytes": held,
                                 "embedder_loaded": state.embedder_loaded,
                                 "collections": {n: {"count": c["count"], "memory": c["memory"]} for n, c in colls.items()},
                                 "caches": {n: c.stats() for n, c in list(state.caches.items())}})

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            # the upsert body is parsed off the event loop, so FastAPI does not see its model
            schema["components"]["schemas"]["UpsertVectors"] = UpsertVectors.model_json_schema(
                ref_template="#/components/schemas/{model}")
            app.openapi_schema = add_security_scheme(schema) if config.auth_enabled else schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Guard, state=state)
    return app


async def _sweep_caches(state: PoolState) -> None:
    """Periodically drop expired cache entries (TTL eviction)."""
    while True:
        await asyncio.sleep(state.config.cache_sweep_s)
        for cache in list(state.caches.values()):
            try:
                await state.run_io(cache.sweep)
            except Exception:  # noqa: BLE001 - never let the sweeper die
                log.exception("cache %s: sweep failed", cache.name)
