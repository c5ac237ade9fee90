"""Answers of the completions routes: OpenAI-style errors, a collected body, an SSE stream.

The ``trinity`` object travels in the body, or in the last chunk before ``[DONE]``; the
``x-trinity-*`` headers summarise it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

from trinity.errors import ErrorCode, TrinityError
from trinity.gateway.backends.instances import BackendError, Chunk
from trinity.gateway.deadline import DeadlineExceeded
from trinity.gateway.decode import DecodeLoop
from trinity.gateway.metrics import GatewayMetrics
from trinity.gateway.pipeline import Pipeline
from trinity.gateway.trace import Prepared, Trace
from trinity.protocol import openai as wire

__all__ = [
    "ClientGone", "cached_pieces", "collect", "error_response", "finish_metrics", "headers_of", "outcome_of", "peek",
    "stream", "unless_disconnected",
]

T = TypeVar("T")


class ClientGone(TrinityError):
    """The client disconnected before the response was committed."""

    code = ErrorCode.CLIENT_GONE


def error_response(err: TrinityError) -> JSONResponse:
    headers = {"Retry-After": str(math.ceil(err.retry_after_s or 1))} if err.retryable else None
    body = wire.error_body(err.message, err.status, err.field, getattr(err, "etype", None))
    return JSONResponse(body, status_code=err.status, headers=headers)


def outcome_of(trace: Trace) -> str:
    return "cache_hit" if trace.cache == "hit" else "degraded" if trace.degraded_reasons else "ok"


def headers_of(trace: Trace) -> dict[str, str]:
    return {"x-trinity-request-id": trace.request_id, "x-trinity-cache": trace.cache,
            "x-trinity-degraded": "; ".join(trace.degraded_reasons) or "false"}


def finish_metrics(metrics: GatewayMetrics, endpoint: str, outcome: str, trace: Trace) -> None:
    metrics.requests.labels(endpoint, outcome).inc()
    metrics.phase.labels("total").observe(trace.elapsed_ms() / 1e3)
    if trace.first_token_at is not None:
        metrics.ttft.observe(trace.first_token_at - trace.arrival)
        if trace.completion_tokens > 1:
            metrics.tpot.observe((time.perf_counter() - trace.first_token_at) / (trace.completion_tokens - 1))
    metrics.tokens.inc(trace.completion_tokens)


async def unless_disconnected(request: Request, work: Awaitable[T], poll_s: float = 0.05) -> T:
    """Run ``work``; cancel it (closing its upstream connections) if the client leaves.

    NOTE: never while a StreamingResponse runs: both would read the same ``http.disconnect``.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise ClientGone("the client disconnected")
    finally:
        if not task.done():
            task.cancel()


async def peek(gen: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """Wait for ``gen``'s first substantive event (a token, a tool call, a finish), then return an
    iterator over all of it.

    NOTE: a stream is committed (200) with its first byte; waiting for the first token turns a
    decode instance that fails before it into a proper 502.
    """
    head: list[Chunk] = []
    async for ch in gen:
        head.append(ch)
        if ch.substantive or ch.usage_only:
            break

    async def chain() -> AsyncIterator[Chunk]:
        try:
            for ch in head:
                yield ch
            async for ch in gen:
                yield ch
        finally:
            await gen.aclose()

    return chain()


def _response_id(endpoint: str, trace: Trace) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + trace.request_id


async def cached_pieces(prep: Prepared, trace: Trace) -> AsyncIterator[Chunk]:
    """Replay a cached answer as a stream (word by word, no upstream work)."""
    req, cached = prep.request, prep.cached or {}
    trace.completion_tokens = int(cached.get("completion_tokens") or 0)
    trace.prompt_tokens = int(cached.get("prompt_tokens") or 0)  # NOTE: the cached request's, as it was served
    trace.finish_reason = cached.get("finish_reason")
    trace.first_token_at = time.perf_counter()
    rid, created = _response_id(req.endpoint, trace), int(time.time())
    if req.endpoint == "chat":
        yield Chunk(wire.chunk(req.endpoint, rid, req.model, created, text="", role=True), "", None)
    for i, w in enumerate(str(cached.get("text", "")).split(" ")):
        w = w if i == 0 else " " + w
        yield Chunk(wire.chunk(req.endpoint, rid, req.model, created, text=w), w, None)
    yield Chunk(wire.chunk(req.endpoint, rid, req.model, created, text="", finish_reason=trace.finish_reason), "",
                trace.finish_reason)


async def collect(pipeline: Pipeline, prep: Prepared, trace: Trace) -> dict[str, Any]:
    """Non-streaming answer: the upstream's body plus ``trinity`` (one leg), else built from the legs' text."""
    req = prep.request
    if prep.cached is not None:
        text = "".join([c.text async for c in cached_pieces(prep, trace)])
    else:
        prefill = await pipeline.prefill(prep, trace)
        loop = DecodeLoop(pipeline, prep, prefill, trace)
        if loop.single_leg:
            body = await loop.once()
            pipeline.remember(prep, trace, "".join(loop.parts))
            return {**body, "trinity": trace.to_json()}
        text = "".join([c.text async for c in loop.run()])
        pipeline.remember(prep, trace, text)
    usage = wire.usage(trace.prompt_tokens or 0, trace.completion_tokens)
    return wire.response(req.endpoint, _response_id(req.endpoint, trace), req.model, text, trace.finish_reason, usage,
                         trinity=trace.to_json())


async def stream(pipeline: Pipeline, prep: Prepared, trace: Trace, chunks: AsyncIterator[Chunk],
                 done: Callable[[str], None]) -> AsyncIterator[bytes]:
    """The upstream's SSE events unchanged (continuation legs under the first leg's ``id``), the
    usage event only if the client asked for it, ``trinity`` on the last event; ``done(outcome)``
    runs at the end."""
    req = prep.request
    outcome, parts, last, held, usage_ev, first_id = "error", [], None, None, None, None
    try:
        async for ch in chunks:
            if ch.usage_only:
                usage_ev = ch.obj
                continue
            obj = ch.obj
            first_id = first_id or obj.get("id")
            if obj.get("id") != first_id:
                obj = {**obj, "id": first_id}
            if ch.text:
                now = time.perf_counter()
                if last is not None:
                    pipeline.metrics.itl.observe(now - last)
                last = now
                parts.append(ch.text)
            if held is not None:
                yield wire.sse_event(held)
            held = obj
        if prep.cached is None:
            pipeline.remember(prep, trace, "".join(parts))
        tail = [held] if held is not None else []
        if req.include_usage:
            base = usage_ev or {k: v for k, v in (held or {}).items() if k in ("object", "created", "model")}
            tail.append({**base, "id": first_id, "choices": [],
                         "usage": wire.usage(trace.prompt_tokens or 0, trace.completion_tokens)})
        if tail:
            tail[-1] = {**tail[-1], "trinity": trace.to_json()}
        for obj in tail:
            yield wire.sse_event(obj)
        yield wire.done_event()
        outcome = outcome_of(trace)
    except BackendError as exc:
        pipeline.metrics.upstream_errors.labels(exc.phase, exc.instance or "").inc()
        yield wire.sse_event(wire.error_body(str(exc), 502))
        yield wire.done_event()
    except DeadlineExceeded as exc:
        outcome = "timeout"
        pipeline.metrics.deadline_exceeded.labels(exc.leg).inc()
        yield wire.sse_event(wire.error_body(str(exc), exc.status, exc.field, exc.etype))
        yield wire.done_event()
    except asyncio.CancelledError:
        outcome = "cancelled"
        pipeline.metrics.disconnects.inc()
        raise
    finally:
        done(outcome)
