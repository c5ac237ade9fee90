"""``GET /v1/models`` (from the decode instances), ``GET /health`` (``?deep=true`` also probes the
pool and every instance) and ``GET /metrics``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trinity.gateway.state import gateway_state

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    st = gateway_state(request)
    data = await st.backend.models()
    if not data and st.config.backend.model:
        data = [{"id": st.config.backend.model, "object": "model", "created": 0, "owned_by": "trinity"}]
    return {"object": "list", "data": data}


async def _pool_health(st: Any) -> str:
    try:
        await st.pool.health(deadline_ms=1000)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - report, never fail the probe itself
        return f"error: {exc}"


@router.get("/health")
async def health(request: Request, deep: bool = False) -> Response:
    """Shallow: the gateway answers. Deep: ``ok`` only if the pool and every instance answer;
    ``degraded`` (200) if requests can still be served (each role has a live instance; without
    the pool, answers lose retrieval); ``unavailable`` (503) if some role has none."""
    st = gateway_state(request)
    out: dict[str, Any] = {"status": "ok", "backend": st.config.backend.kind}
    if not deep:
        return JSONResponse(out)
    out["pool"], out["instances"] = await asyncio.gather(_pool_health(st), st.backend.health())
    roles: dict[str, bool] = {}
    for info in out["instances"].values():
        roles[info["role"]] = roles.get(info["role"], False) or info["ok"]
    if not all(roles.values()):
        out["status"] = "unavailable"
        out["down_roles"] = sorted(r for r, ok in roles.items() if not ok)
    elif out["pool"] != "ok" or not all(i["ok"] for i in out["instances"].values()):
        out["status"] = "degraded"
    return JSONResponse(out, status_code=503 if out["status"] == "unavailable" else 200)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(gateway_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
