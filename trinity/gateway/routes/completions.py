"""``POST /v1/completions`` and ``POST /v1/chat/completions``: OpenAI-compatible, streaming or not.

The response is committed only after the prefill leg (and, streaming, the first token), like
vLLM's proxy, so prefill and policy failures are proper HTTP errors.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from trinity.errors import ErrorCode, TrinityError
from trinity.gateway.auth import resolve_tenant
from trinity.gateway.backends.instances import BackendError
from trinity.gateway.deadline import Deadline, DeadlineExceeded
from trinity.gateway.decode import DecodeLoop
from trinity.gateway.options import RequestOptions, resolve_options
from trinity.gateway.request import ClientRequest
from trinity.gateway.responses import (
    ClientGone,
    cached_pieces,
    collect,
    error_response,
    finish_metrics,
    headers_of,
    outcome_of,
    peek,
    stream,
    unless_disconnected,
)
from trinity.gateway.state import GatewayState, gateway_state
from trinity.gateway.trace import Trace
from trinity.protocol import openai as wire

__all__ = ["router"]

router = APIRouter()
Release = Callable[[], None]


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await handle(request, "completions")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await handle(request, "chat")


async def handle(request: Request, endpoint: wire.Endpoint) -> Response:
    st = gateway_state(request)
    trace = Trace(request.headers.get("x-request-id") or uuid.uuid4().hex)
    try:
        req, opts = await _parse(st, request, endpoint, trace)
        release = await _admit(st, trace)
    except DeadlineExceeded as exc:
        return _failed(st, endpoint, trace, exc)
    except TrinityError as exc:
        return error_response(exc)
    streaming = False
    try:
        response = await _serve(st, request, req, opts, trace, release)
        streaming = isinstance(response, wire.ClosingStreamingResponse)
        return response
    except TrinityError as exc:
        return _failed(st, endpoint, trace, exc)
    finally:
        if not streaming:
            release()


async def _parse(st: GatewayState, request: Request, endpoint: wire.Endpoint,
                 trace: Trace) -> tuple[ClientRequest, RequestOptions]:
    try:
        body = await request.json()
    except ValueError:
        raise TrinityError("request body is not valid JSON", code=ErrorCode.INVALID_JSON) from None
    if not isinstance(body, dict):
        raise TrinityError("request body must be a JSON object", code=ErrorCode.INVALID_JSON)
    cfg = st.config
    tenant = resolve_tenant(cfg, request.headers)
    opts = resolve_options(cfg, body.pop("trinity", None), request.headers, tenant)
    req = ClientRequest.parse(endpoint, body, cfg.backend.model)
    trace.deadline = Deadline.of(cfg.slo, opts.ttft_ms, opts.tpot_ms, req.max_tokens, trace.arrival)
    return req, opts


async def _admit(st: GatewayState, trace: Trace) -> Release:
    """Pass the admission gate by the first-token deadline; return the release (idempotent)."""
    t0 = time.perf_counter()
    assert trace.deadline is not None
    await trace.deadline.within(st.gate.acquire(), "queue")
    st.metrics.active.inc()
    trace.add("queue", (time.perf_counter() - t0) * 1e3)
    st.metrics.phase.labels("queue").observe(time.perf_counter() - t0)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            st.gate.release()
            st.metrics.active.dec()

    return release


async def _serve(st: GatewayState, request: Request, req: ClientRequest, opts: RequestOptions, trace: Trace,
                 release: Release) -> Response:
    pipe = st.pipeline
    prep = await unless_disconnected(request, pipe.prepare(req, opts, trace))
    if not req.stream:
        payload = await unless_disconnected(request, collect(pipe, prep, trace))
        finish_metrics(st.metrics, req.endpoint, outcome_of(trace), trace)
        return JSONResponse(payload, headers=headers_of(trace))
    if prep.cached is not None:
        gen = pieces = cached_pieces(prep, trace)
    else:
        prefill = await unless_disconnected(request, pipe.prefill(prep, trace))
        gen = DecodeLoop(pipe, prep, prefill, trace).run()
        pieces = await unless_disconnected(request, peek(gen))

    def done(outcome: str) -> None:
        release()
        finish_metrics(st.metrics, req.endpoint, outcome, trace)

    async def on_close() -> None:
        release()
        await gen.aclose()  # NOTE: frees the upstream stream even if the body never started

    return wire.ClosingStreamingResponse(stream(pipe, prep, trace, pieces, done), on_close=on_close,
                                         media_type="text/event-stream", headers=headers_of(trace))


def _failed(st: GatewayState, endpoint: str, trace: Trace, exc: TrinityError) -> Response:
    """Count a failed request by outcome and answer its error."""
    metrics = st.metrics
    if isinstance(exc, ClientGone):
        metrics.disconnects.inc()
        finish_metrics(metrics, endpoint, "cancelled", trace)
        return Response(status_code=exc.status)
    if isinstance(exc, DeadlineExceeded):
        metrics.deadline_exceeded.labels(exc.leg).inc()
        outcome = "timeout"
    elif isinstance(exc, BackendError):
        metrics.upstream_errors.labels(exc.phase, exc.instance or "").inc()
        outcome = "error"
    else:
        outcome = "rejected" if exc.code is ErrorCode.UNAVAILABLE else "error"
    finish_metrics(metrics, endpoint, outcome, trace)
    return error_response(exc)
