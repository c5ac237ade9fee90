"""OpenAI-compatible HTTP front of an emulated prefill/decode engine (``trinity emulate``).

EMULATOR, NOT AN LLM: the text is deterministic filler; token counts, timing,
continuous batching and vLLM's PD ``kv_transfer_params`` handshake are modelled.
Routes: ``/v1/completions``, ``/v1/chat/completions`` (SSE streaming or not),
``/v1/models``, ``/health``, ``/metrics``, and test hooks under ``/debug/``
(``requests`` -- what was received; ``faults`` -- fault injection; ``state``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from trinity.emulator.engine import EmulatedEngine, EngineConfig, Finished, Sequence
from trinity.emulator.faults import FaultConfig, Faults, RequestLog
from trinity.emulator.metrics import EmulatorMetrics
from trinity.emulator.text import render_chat, tokenize
from trinity.errors import BadRequest
from trinity.protocol import openai as wire

__all__ = ["EmulatorConfig", "create_app", "run"]


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything ``trinity emulate`` configures."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    default_completion_max_tokens: int = 16  # OpenAI/vLLM default for /v1/completions
    default_chat_max_tokens: int = 256  # NOTE: vLLM uses the whole remaining context; too slow here.
    request_log_size: int = 2000


def _error(message: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(wire.error_body(message, status, param), status_code=status)


def _prompt_tokens(body: dict[str, Any], endpoint: wire.Endpoint) -> list[str]:
    if endpoint == "chat":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise BadRequest("messages: expected a non-empty list of message objects", "messages")
        cont = bool(body.get("continue_final_message"))
        return tokenize(render_chat(msgs, add_generation_prompt=not cont and body.get("add_generation_prompt", True)))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return tokenize(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [str(t) for t in prompt]  # token ids
    raise BadRequest("prompt: expected a string, a list of token ids, or a batch of exactly one", "prompt")


def _max_tokens(body: dict[str, Any], endpoint: wire.Endpoint, cfg: EmulatorConfig, n_prompt: int) -> int:
    key = "max_completion_tokens" if endpoint == "chat" and body.get("max_completion_tokens") else "max_tokens"
    value = body.get(key)
    if value is None:
        value = cfg.default_chat_max_tokens if endpoint == "chat" else cfg.default_completion_max_tokens
        value = max(1, min(value, cfg.engine.max_model_len - n_prompt))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{key}: expected an integer >= 1", key)
    if n_prompt + value > cfg.engine.max_model_len:
        raise BadRequest(
            f"This model's maximum context length is {cfg.engine.max_model_len} tokens. However, you requested "
            f"{n_prompt + value} tokens ({n_prompt} in the prompt, {value} in the completion).", key)
    return value


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build the emulator app; the engine loop starts with the app's lifespan."""
    cfg = config or EmulatorConfig()
    metrics = EmulatorMetrics(cfg.engine.role)
    faults, log = Faults(cfg.faults), RequestLog(cfg.request_log_size)
    state: dict[str, EmulatedEngine] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["engine"] = EmulatedEngine(cfg.engine, metrics)
        state["engine"].start()
        yield
        await state["engine"].stop()

    app = FastAPI(title=f"Trinity emulated {cfg.engine.role} engine (not a real LLM)", lifespan=lifespan)

    async def generate(request: Request, endpoint: wire.Endpoint) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error("request body is not valid JSON", 400)
        if not isinstance(body, dict):
            return _error("request body must be a JSON object", 400)
        entry = log.record(request.url.path, body, dict(request.headers))
        try:
            prompt = _prompt_tokens(body, endpoint)
            max_tokens = _max_tokens(body, endpoint, cfg, len(prompt))
            kv = body.get("kv_transfer_params")
            if kv is not None and not isinstance(kv, dict):
                raise BadRequest("kv_transfer_params: expected an object", "kv_transfer_params")
        except BadRequest as exc:
            entry["outcome"] = "rejected"
            return _error(exc.message, exc.status, exc.field)
        fc = faults.config
        if fc.extra_delay_ms:
            await asyncio.sleep(fc.extra_delay_ms / 1e3)
        if fc.hang:
            metrics.injected_faults.labels(cfg.engine.role, "hang").inc()
            entry["outcome"] = "hung"
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=499)
        if (status := faults.take_failure()) is not None:
            metrics.injected_faults.labels(cfg.engine.role, "status").inc()
            entry["outcome"] = f"injected_{status}"
            return _error(f"injected fault ({status})", status)
        engine = state["engine"]
        seq = Sequence(request.headers.get("x-request-id") or wire.new_id(endpoint), prompt, max_tokens,
                       seed=body.get("seed") if isinstance(body.get("seed"), int) else None)
        engine.add(seq, kv)
        rid, model = wire.new_id(endpoint), str(body.get("model") or cfg.engine.model)
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            return wire.ClosingStreamingResponse(
                _stream(engine, seq, entry, endpoint, rid, model, bool(opts.get("include_usage"))),
                on_close=lambda: engine.abort(seq), media_type="text/event-stream")
        return await _complete(request, engine, seq, entry, endpoint, rid, model)

    async def _stream(engine: EmulatedEngine, seq: Sequence, entry: dict[str, Any], endpoint: wire.Endpoint,
                      rid: str, model: str, include_usage: bool) -> AsyncIterator[bytes]:
        created, n = int(time.time()), 0
        try:
            if endpoint == "chat":
                yield wire.sse_event(wire.chunk(endpoint, rid, model, created, text="", role=True))
            async for ev in engine.events(seq):
                if isinstance(ev, Finished):
                    kv = None if faults.config.drop_kv_transfer_params else ev.kv_transfer_params
                    yield wire.sse_event(wire.chunk(endpoint, rid, model, created, text="",
                                                    finish_reason=ev.reason, kv_transfer_params=kv))
                    if include_usage:
                        yield wire.sse_event(wire.chunk(endpoint, rid, model, created, no_choices=True,
                                                        usage_=wire.usage(ev.prompt_tokens, ev.completion_tokens)))
                    yield wire.done_event()
                    entry["outcome"] = "completed"
                    return
                n += 1
                entry["completion_tokens"] = n
                if faults.config.fail_after_tokens is not None and n > faults.config.fail_after_tokens:
                    entry["outcome"] = "broken"
                    raise ConnectionAbortedError("injected fault: stream cut")
                yield wire.sse_event(wire.chunk(endpoint, rid, model, created, text=ev.text))
        finally:
            if not seq.finished:  # client went away (or injected cut): free the batch slot
                engine.abort(seq)
                if entry["outcome"] == "in_progress":
                    entry["outcome"] = "aborted"

    async def _complete(request: Request, engine: EmulatedEngine, seq: Sequence, entry: dict[str, Any],
                        endpoint: wire.Endpoint, rid: str, model: str) -> Response:
        async def watch_disconnect() -> None:
            # NOTE: a plain (non-streaming) handler is not cancelled when the client leaves.
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            engine.abort(seq)

        watcher = asyncio.create_task(watch_disconnect())
        parts: list[str] = []
        try:
            async for ev in engine.events(seq):
                if not isinstance(ev, Finished):
                    parts.append(ev.text)
                    entry["completion_tokens"] = len(parts)
                    cut = faults.config.fail_after_tokens
                    if cut is not None and len(parts) > cut:
                        engine.abort(seq)
                        entry["outcome"] = "broken"
                        return _error("injected fault: generation failed", 500)
                    continue
                if ev.reason == "abort":
                    entry["outcome"] = "aborted"
                    return Response(status_code=499)
                entry["outcome"] = "completed"
                kv = None if faults.config.drop_kv_transfer_params else ev.kv_transfer_params
                return JSONResponse(wire.response(endpoint, rid, model, "".join(parts), ev.reason,
                                                  wire.usage(ev.prompt_tokens, ev.completion_tokens),
                                                  kv_transfer_params=kv))
        finally:
            watcher.cancel()
        return _error("engine stopped", 503)  # pragma: no cover - events always end with Finished

    wire.add_openai_routes(app, generate)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        m = cfg.engine.model
        return {"object": "list", "data": [{
            "id": m, "object": "model", "created": 0, "owned_by": "trinity-emulator", "root": m,
            "max_model_len": cfg.engine.max_model_len}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "role": cfg.engine.role, "emulated": True}

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/debug/requests")
    async def debug_requests() -> list[dict[str, Any]]:
        return log.entries()

    @app.delete("/debug/requests")
    async def debug_clear() -> dict[str, Any]:
        log.clear()
        return {"cleared": True}

    @app.get("/debug/faults")
    async def get_faults() -> dict[str, Any]:
        return faults.as_dict()

    @app.post("/debug/faults")
    async def set_faults(request: Request) -> Response:
        try:
            changes = await request.json()
            if changes.pop("reset", False):
                faults.reset()
            faults.update(changes)
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(f"faults: {exc}", 400)
        return JSONResponse(faults.as_dict())

    @app.get("/debug/state")
    async def debug_state() -> dict[str, Any]:
        e = state["engine"]
        return {"role": cfg.engine.role, "engine_id": e.engine_id, "running": e.num_running,
                "waiting": e.num_waiting, "config": asdict(cfg.engine)}

    app.state.emulator_config = cfg
    return app


def run(config: EmulatorConfig, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``config`` on ``host:port`` until interrupted."""
    import uvicorn

    cfg = replace(config, engine=replace(config.engine, host=host, port=port))
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level, access_log=False)
