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
from trinity.gateway.backends.instances import BackendError
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


async def peek(gen: AsyncIterator[str]) -> AsyncIterator[str]:
    """Wait for ``gen``'s first item, then return an iterator over all of it.

    NOTE: a stream is committed (200) with its first byte; waiting for the first token turns a
    decode instance that fails before it into a proper 502.
    """
    try:
        first = await anext(gen)
    except StopAsyncIteration:
        first = None

    async def chain() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield first
                async for item in gen:
                    yield item
        finally:
            await gen.aclose()

    return chain()


async def cached_pieces(prep: Prepared, trace: Trace) -> AsyncIterator[str]:
    """Replay a cached answer as a stream (word by word, no upstream work)."""
    cached = prep.cached or {}
    trace.completion_tokens = int(cached.get("completion_tokens") or 0)
    trace.finish_reason = cached.get("finish_reason")
    trace.first_token_at = time.perf_counter()
    for i, w in enumerate(str(cached.get("text", "")).split(" ")):
        yield w if i == 0 else " " + w


def _response_id(endpoint: str, trace: Trace) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + trace.request_id


async def collect(pipeline: Pipeline, prep: Prepared, trace: Trace) -> dict[str, Any]:
    """Non-streaming answer: run the prefill and decode legs to the end and build one body."""
    req = prep.request
    if prep.cached is not None:
        text = "".join([t async for t in cached_pieces(prep, trace)])
    else:
        prefill = await pipeline.prefill(prep, trace)
        text = "".join([t async for t in DecodeLoop(pipeline, prep, prefill, trace).run()])
        pipeline.remember(prep, trace, text)
    usage = wire.usage(trace.prompt_tokens or 0, trace.completion_tokens)
    return wire.response(req.endpoint, _response_id(req.endpoint, trace), req.model, text, trace.finish_reason, usage,
                         trinity=trace.to_json())


async def stream(pipeline: Pipeline, prep: Prepared, trace: Trace, pieces: AsyncIterator[str],
                 done: Callable[[str], None]) -> AsyncIterator[bytes]:
    """SSE chunks of ``pieces``, then the ``trinity`` object; ``done(outcome)`` runs at the end."""
    req, created = prep.request, int(time.time())
    rid = _response_id(req.endpoint, trace)
    chunk = lambda **kw: wire.sse_event(wire.chunk(req.endpoint, rid, req.model, created, **kw))  # noqa: E731
    outcome, parts, last = "error", [], None
    try:
        if req.endpoint == "chat":
            yield chunk(text="", role=True)
        async for text in pieces:
            now = time.perf_counter()
            if last is not None:
                pipeline.metrics.itl.observe(now - last)
            last = now
            parts.append(text)
            yield chunk(text=text)
        if prep.cached is None:
            pipeline.remember(prep, trace, "".join(parts))
        yield chunk(text="", finish_reason=trace.finish_reason, trinity=trace.to_json())
        if req.include_usage:
            yield chunk(no_choices=True, usage_=wire.usage(trace.prompt_tokens or 0, trace.completion_tokens))
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
