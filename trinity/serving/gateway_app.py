"""The PD gateway's HTTP app: OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``.

Non-streaming and SSE streaming, usable with the official ``openai`` client. The answer
carries a ``trinity`` object (cache hit, degradation, retrieval, legs, timings); streamed
answers carry it in the last chunk before ``[DONE]`` and summarise it in the
``x-trinity-*`` response headers. The response is committed only after the prefill leg,
like vLLM's proxy, so prefill and policy failures are proper HTTP errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trinity.serving import llm_wire as wire
from trinity.serving.gateway_auth import resolve_tenant
from trinity.serving.gateway_config import GatewayConfig, OptionError, resolve_options
from trinity.serving.gateway_deadline import Deadline
from trinity.serving.gateway_errors import DeadlineExceeded, GatewayError
from trinity.serving.gateway_metrics import GatewayMetrics
from trinity.serving.gateway_pipeline import Pipeline, Prepared, Trace
from trinity.serving.gateway_request import BadRequest, ClientRequest
from trinity.serving.gateway_retrieval import Retriever
from trinity.serving.llm_backend import BackendError
from trinity.serving.llm_openai import OpenAIBackend
from trinity.serving.llm_vllm_pd import VllmPDBackend
from trinity.serving.pool_client import PoolClient

__all__ = ["create_app", "make_backend"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response was committed."""


def make_backend(cfg: GatewayConfig, metrics: GatewayMetrics | None = None) -> OpenAIBackend:
    b = cfg.backend
    if b.kind == "openai":
        return OpenAIBackend(b.decode_urls, b.upstream, metrics)
    return VllmPDBackend(b.prefill_urls, b.decode_urls, b.upstream, metrics, prefill_retries=b.prefill_retries,
                         require_kv_transfer=b.require_kv_transfer)


def _error(exc: GatewayError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(wire.error_body(str(exc), exc.status, exc.param, exc.etype), status_code=exc.status,
                        headers=headers)


def _backend_error(exc: BackendError) -> GatewayError:
    # NOTE: upstream 4xx (e.g. prompt too long) are the client's fault: pass them through.
    status = exc.status if exc.status is not None and 400 <= exc.status < 500 else 502
    return GatewayError(status, str(exc))


async def _unless_disconnected(request: Request, work: Awaitable[T], poll_s: float = 0.05) -> T:
    """Run ``work``; cancel it (closing its upstream connections) if the client leaves.

    NOTE: plain handlers are not cancelled on disconnect, and this must not run while a
    StreamingResponse is active (both would read the same ``http.disconnect`` message).
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
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


async def _peek(gen: AsyncIterator[str]) -> AsyncIterator[str]:
    """Wait for ``gen``'s first item, then return an iterator over all of it.

    NOTE: a streamed response is committed (200) with its first byte; waiting for the
    first token first turns a decode instance that fails before it into a proper 502
    instead of an error event in a 200 stream. It costs nothing: no byte could be sent earlier.
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


def create_app(cfg: GatewayConfig, embedder: Any = None) -> FastAPI:
    """Build the gateway. ``embedder`` (``encode(list[str]) -> ndarray``) overrides the local model."""
    metrics = GatewayMetrics()
    st: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        emb = embedder
        if emb is None and cfg.retrieval.embed == "local":
            from trinity.data.embed import Embedder

            try:
                emb = Embedder(num_threads=cfg.retrieval.embed_threads)
                await asyncio.to_thread(emb.encode, ["warm-up"])  # NOTE: load weights before the first request
            except Exception:  # noqa: BLE001 - degrade to the pool's embedder rather than not starting
                log.exception("local embedder unavailable; sending texts to the pool instead (embed=pool)")
                emb = None
        st["pool"] = PoolClient(cfg.pool_url, cfg.pool_api_key)
        st["backend"] = make_backend(cfg, metrics)
        st["retriever"] = Retriever(cfg, st["pool"], metrics, emb)
        st["pipeline"] = Pipeline(cfg, st["backend"], st["retriever"], metrics)
        st["gate"] = asyncio.Semaphore(cfg.max_concurrency)
        st["ensure"] = asyncio.create_task(st["retriever"].ensure_caches())
        yield
        st["ensure"].cancel()
        await st["retriever"].aclose()
        await st["backend"].aclose()
        await st["pool"].aclose()

    app = FastAPI(title="Trinity PD gateway", lifespan=lifespan)

    def finish_metrics(endpoint: str, outcome: str, trace: Trace) -> None:
        metrics.requests.labels(endpoint, outcome).inc()
        metrics.phase.labels("total").observe(trace.elapsed_ms() / 1e3)
        if trace.first_token_at is not None:
            metrics.ttft.observe(trace.first_token_at - trace.arrival)
            if trace.completion_tokens > 1:
                metrics.tpot.observe((time.perf_counter() - trace.first_token_at) / (trace.completion_tokens - 1))
        metrics.tokens.inc(trace.completion_tokens)

    def outcome_of(trace: Trace) -> str:
        return "cache_hit" if trace.cache == "hit" else "degraded" if trace.degraded_reasons else "ok"

    def headers_of(trace: Trace) -> dict[str, str]:
        return {"x-trinity-request-id": trace.request_id, "x-trinity-cache": trace.cache,
                "x-trinity-degraded": "; ".join(trace.degraded_reasons) or "false"}

    async def collect(prep: Prepared, trace: Trace) -> dict[str, Any]:
        """Non-streaming answer: run the decode legs to the end and build one body."""
        req = prep.request
        if prep.cached is not None:
            trace.first_token_at = time.perf_counter()
            text = prep.cached["text"]
            trace.completion_tokens, trace.finish_reason = int(prep.cached.get("completion_tokens") or 0), \
                prep.cached.get("finish_reason")
        else:
            prefill = await st["pipeline"].prefill(prep, trace)
            text = "".join([t async for t in st["pipeline"].generate(prep, prefill, trace)])
            st["pipeline"].remember(prep, trace, text)
        usage = wire.usage(trace.prompt_tokens or 0, trace.completion_tokens)
        return wire.response(req.endpoint, "cmpl-" + trace.request_id if req.endpoint == "completions" else
                             "chatcmpl-" + trace.request_id, req.model, text, trace.finish_reason, usage,
                             trinity=trace.to_json())

    async def stream(prep: Prepared, trace: Trace, pieces: AsyncIterator[str], endpoint: str,
                     release: Any) -> AsyncIterator[bytes]:
        req, created = prep.request, int(time.time())
        rid = ("chatcmpl-" if req.endpoint == "chat" else "cmpl-") + trace.request_id
        outcome, parts, last = "error", [], None
        try:
            if req.endpoint == "chat":
                yield wire.sse_event(wire.chunk(req.endpoint, rid, req.model, created, text="", role=True))
            async for text in pieces:
                now = time.perf_counter()
                if last is not None:
                    metrics.itl.observe(now - last)
                last = now
                parts.append(text)
                yield wire.sse_event(wire.chunk(req.endpoint, rid, req.model, created, text=text))
            if prep.cached is None:
                st["pipeline"].remember(prep, trace, "".join(parts))
            yield wire.sse_event(wire.chunk(req.endpoint, rid, req.model, created, text="",
                                            finish_reason=trace.finish_reason, trinity=trace.to_json()))
            if req.include_usage:
                yield wire.sse_event(wire.chunk(req.endpoint, rid, req.model, created, no_choices=True,
                                                usage_=wire.usage(trace.prompt_tokens or 0, trace.completion_tokens)))
            yield wire.done_event()
            outcome = outcome_of(trace)
        except BackendError as exc:
            metrics.upstream_errors.labels(exc.phase, exc.instance or "").inc()
            yield wire.sse_event(wire.error_body(str(exc), 502))
            yield wire.done_event()
        except DeadlineExceeded as exc:
            outcome = "timeout"
            metrics.deadline_exceeded.labels(exc.leg).inc()
            yield wire.sse_event(wire.error_body(str(exc), exc.status, exc.param, exc.etype))
            yield wire.done_event()
        except asyncio.CancelledError:
            outcome = "cancelled"
            metrics.disconnects.inc()
            raise
        finally:
            release()
            finish_metrics(endpoint, outcome, trace)

    async def cached_pieces(prep: Prepared, trace: Trace) -> AsyncIterator[str]:
        """Replay a cached answer as a stream (word by word, no upstream work)."""
        text = prep.cached["text"] if prep.cached else ""
        trace.completion_tokens = int(prep.cached.get("completion_tokens") or 0) if prep.cached else 0
        trace.finish_reason = prep.cached.get("finish_reason") if prep.cached else None
        trace.first_token_at = time.perf_counter()
        words = text.split(" ")
        for i, w in enumerate(words):
            yield w if i == 0 else " " + w

    async def handle(request: Request, endpoint: wire.Endpoint) -> Response:
        trace = Trace(request.headers.get("x-request-id") or uuid.uuid4().hex)
        try:
            body = await request.json()
        except ValueError:
            return _error(GatewayError(400, "request body is not valid JSON"))
        if not isinstance(body, dict):
            return _error(GatewayError(400, "request body must be a JSON object"))
        gate: asyncio.Semaphore = st["gate"]
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                gate.release()
                metrics.active.dec()

        try:
            tenant = resolve_tenant(cfg, request.headers)
            opts = resolve_options(cfg, body.pop("trinity", None), request.headers, tenant)
            req = ClientRequest.parse(endpoint, body, cfg.backend.model)
            trace.deadline = Deadline.of(cfg.slo, opts.ttft_ms, opts.tpot_ms, req.max_tokens, trace.arrival)
        except OptionError as exc:
            return _error(GatewayError(400, str(exc), exc.param))
        except BadRequest as exc:
            return _error(GatewayError(400, str(exc), exc.param))
        except GatewayError as exc:
            return _error(exc)
        t0 = time.perf_counter()
        try:
            await trace.deadline.within(gate.acquire(), "queue")
        except DeadlineExceeded as exc:
            metrics.deadline_exceeded.labels(exc.leg).inc()
            finish_metrics(endpoint, "timeout", trace)
            return _error(exc)
        metrics.active.inc()
        trace.add("queue", (time.perf_counter() - t0) * 1e3)
        metrics.phase.labels("queue").observe(time.perf_counter() - t0)
        streaming = False
        try:
            prep = await _unless_disconnected(request, st["pipeline"].prepare(req, opts, trace))
            if not req.stream:
                payload = await _unless_disconnected(request, collect(prep, trace))
                finish_metrics(endpoint, outcome_of(trace), trace)
                return JSONResponse(payload, headers=headers_of(trace))
            if prep.cached is not None:
                gen = pieces = cached_pieces(prep, trace)
            else:
                prefill = await _unless_disconnected(request, st["pipeline"].prefill(prep, trace))
                gen = st["pipeline"].generate(prep, prefill, trace)
                pieces = await _unless_disconnected(request, _peek(gen))

            async def on_close() -> None:
                release()
                await gen.aclose()  # NOTE: frees the upstream stream even if the body never started

            streaming = True
            return wire.ClosingStreamingResponse(stream(prep, trace, pieces, endpoint, release), on_close=on_close,
                                                 media_type="text/event-stream", headers=headers_of(trace))
        except ClientGone:
            metrics.disconnects.inc()
            finish_metrics(endpoint, "cancelled", trace)
            return Response(status_code=499)
        except DeadlineExceeded as exc:
            metrics.deadline_exceeded.labels(exc.leg).inc()
            finish_metrics(endpoint, "timeout", trace)
            return _error(exc)
        except GatewayError as exc:
            finish_metrics(endpoint, "rejected" if exc.status == 503 else "error", trace)
            return _error(exc)
        except BackendError as exc:
            metrics.upstream_errors.labels(exc.phase, exc.instance or "").inc()
            finish_metrics(endpoint, "error", trace)
            return _error(_backend_error(exc))
        finally:
            if not streaming:
                release()

    wire.add_openai_routes(app, handle)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = await st["backend"].models()
        if not data and cfg.backend.model:
            data = [{"id": cfg.backend.model, "object": "model", "created": 0, "owned_by": "trinity"}]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health(deep: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok", "backend": cfg.backend.kind}
        if deep:
            try:
                await st["pool"].health(deadline_ms=1000)
                out["pool"] = "ok"
            except Exception as exc:  # noqa: BLE001 - report, never fail the probe itself
                out["pool"] = f"error: {exc}"
            out["instances"] = await st["backend"].health()
        return out

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.gateway_config, app.state.metrics = cfg, metrics
    return app
