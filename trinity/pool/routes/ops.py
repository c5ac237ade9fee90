"""Operations: liveness, Prometheus metrics, memory held vs vector bytes."""

from __future__ import annotations

import os
import time

import psutil
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from trinity.pool.errors import FastJSONResponse
from trinity.pool.routes.common import pool_state

__all__ = ["router"]

router = APIRouter(tags=["ops"])


@router.get("/health", summary="Liveness: the engine loop runs (no auth, never queued)")
async def health(request: Request) -> Response:
    st = pool_state(request)
    thread = st.engine._thread
    alive = thread is not None and thread.is_alive()
    body = {"status": "ok" if alive else "engine loop stopped", "collections": len(st.catalog.collections),
            "caches": len(st.caches), "inflight": st.inflight, "uptime_s": round(time.time() - st.started, 1),
            "quarantined": dict(st.catalog.quarantined)}  # NOTE: the pool serves the rest: still 200
    return FastJSONResponse(body, status_code=200 if alive else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(pool_state(request).registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/stats", summary="Process memory vs the vectors held")
async def stats(request: Request) -> Response:
    st = pool_state(request)
    colls = {n: await st.run_io(c.describe) for n, c in list(st.catalog.collections.items())}
    return FastJSONResponse({
        "rss_bytes": psutil.Process(os.getpid()).memory_info().rss,
        "vector_bytes": sum(c["memory"]["raw_vectors"] for c in colls.values()),
        "index_bytes": sum(c["memory"]["total"] for c in colls.values()),
        "embedder_loaded": st.embedder_loaded,
        "collections": {n: {"count": c["count"], "memory": c["memory"]} for n, c in colls.items()},
        "caches": {n: c.stats() for n, c in list(st.caches.items())}})
