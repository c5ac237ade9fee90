"""``GET /v1/models`` (from the decode instances), ``GET /health`` (``?deep=true`` also probes the
pool and every instance) and ``GET /metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
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


@router.get("/health")
async def health(request: Request, deep: bool = False) -> dict[str, Any]:
    st = gateway_state(request)
    out: dict[str, Any] = {"status": "ok", "backend": st.config.backend.kind}
    if deep:
        try:
            await st.pool.health(deadline_ms=1000)
            out["pool"] = "ok"
        except Exception as exc:  # noqa: BLE001 - report, never fail the probe itself
            out["pool"] = f"error: {exc}"
        out["instances"] = await st.backend.health()
    return out


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(gateway_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
