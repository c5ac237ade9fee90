"""``POST /v1/completions`` and ``/v1/chat/completions`` of an emulated engine: validate as vLLM
does, run ``n`` sequences on the engine, answer in vLLM's JSON or SSE shapes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from trinity.emulator.connectors import kv_params
from trinity.emulator.engine import EmulatedEngine, Finished, Sequence
from trinity.emulator.render import ChoiceWriter
from trinity.emulator.request import GenParams, parse_request
from trinity.errors import TrinityError
from trinity.protocol import openai as wire

__all__ = ["Generator"]


def error(message: str, status: int, param: str | None = None, etype: str | None = None) -> JSONResponse:
    if etype is None and status == 404:
        etype = "NotFoundError"
    return JSONResponse(wire.error_body(message, status, param, etype), status_code=status)


class Generator:
    """The generation routes' handler, over the app's engine, faults and request log."""

    def __init__(self, cfg: Any, state: dict[str, Any], faults: Any, log: Any) -> None:
        self.cfg, self.state, self.faults, self.log = cfg, state, faults, log

    @property
    def engine(self) -> EmulatedEngine:
        return self.state["engine"]

    def _params(self, body: dict[str, Any], endpoint: wire.Endpoint, rid: str) -> tuple[GenParams, dict | None]:
        cfg, eng = self.cfg, self.cfg.engine
        chat = endpoint == "chat"
        params = parse_request(body, chat, cfg.served_names, cfg.default_chat_max_tokens if chat
                               else cfg.default_completion_max_tokens, eng.max_model_len, cfg.enable_auto_tool_choice)
        return params, kv_params(cfg.connector, eng.role, body, rid)

    async def __call__(self, request: Request, endpoint: wire.Endpoint) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return error("request body is not valid JSON", 400)
        if not isinstance(body, dict):
            return error("request body must be a JSON object", 400)
        entry = self.log.record(request.url.path, body, dict(request.headers))
        rid_in = request.headers.get("x-request-id") or wire.new_id(endpoint)
        metrics = self.engine.metrics
        try:
            params, kv = self._params(body, endpoint, rid_in)
        except TrinityError as exc:
            entry["outcome"] = "rejected"
            metrics.rejected_request(exc.field)
            return error(exc.message, exc.status, exc.field)
        if (early := await self._faults(request, entry)) is not None:
            return early
        seqs = [Sequence(rid_in if i == 0 else f"{rid_in}-{i}", params.prompt, params.max_tokens,
                         seed=params.seed if i == 0 else hash((params.seed, i)) & 0x7FFFFFFF, stop=params.stop)
                for i in range(params.n)]
        for s in seqs:
            self.engine.add(s, kv)
        metrics.req_n.observe(params.n)
        rid, model = wire.new_id(endpoint), str(body.get("model") or self.cfg.served_names[0])
        writers = [ChoiceWriter(params, endpoint == "chat", i, rid) for i in range(params.n)]
        if params.stream:
            return wire.ClosingStreamingResponse(self._stream(seqs, writers, entry, endpoint, rid, model, params),
                                                 on_close=lambda: [self.engine.abort(s) for s in seqs],
                                                 media_type="text/event-stream")
        return await self._complete(request, seqs, writers, entry, endpoint, rid, model)

    async def _faults(self, request: Request, entry: dict[str, Any]) -> Response | None:
        fc, metrics = self.faults.config, self.engine.metrics
        if fc.extra_delay_ms:
            await asyncio.sleep(fc.extra_delay_ms / 1e3)
        if fc.hang:
            metrics.injected_fault("hang")
            entry["outcome"] = "hung"
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=499)
        if (status := self.faults.take_failure()) is not None:
            metrics.injected_fault("status")
            entry["outcome"] = f"injected_{status}"
            return error(f"injected fault ({status})", status)
        return None

    def _kv_out(self, fin: Finished) -> dict[str, Any] | None:
        if self.faults.config.drop_kv_transfer_params or self.cfg.connector.kind != "nixl":
            return None
        return fin.kv_transfer_params

    async def _merged(self, seqs: list[Sequence]) -> AsyncIterator[tuple[int, Any]]:
        if len(seqs) == 1:
            async for ev in self.engine.events(seqs[0]):
                yield 0, ev
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, s: Sequence) -> None:
            async for ev in self.engine.events(s):
                await queue.put((i, ev))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(seqs)]
        try:
            for _ in range(len(seqs)):
                while True:
                    i, ev = await queue.get()
                    yield i, ev
                    if isinstance(ev, Finished):
                        break
        finally:
            for t in tasks:
                t.cancel()

    def _cut(self, entry: dict[str, Any], n: int) -> bool:
        cut = self.faults.config.fail_after_tokens
        entry["completion_tokens"] = n
        return cut is not None and n > cut

    async def _stream(self, seqs: list[Sequence], writers: list[ChoiceWriter], entry: dict[str, Any],
                      endpoint: wire.Endpoint, rid: str, model: str, params: GenParams) -> AsyncIterator[bytes]:
        created, n, done = int(time.time()), 0, 0

        def chunk(choices: list[dict[str, Any]], **kw: Any) -> bytes:
            return wire.sse_event(wire.chunk_of(endpoint, rid, model, created, choices, **kw))

        prompt_tokens, completion = len(params.prompt), 0
        kv = None
        try:
            if endpoint == "chat":
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None} for i in range(len(seqs))])
            async for i, ev in self._merged(seqs):
                if isinstance(ev, Finished):
                    completion += ev.completion_tokens
                    kv = kv or self._kv_out(ev)
                    for c in writers[i].finish_pieces(ev.reason, ev.stop_reason):
                        yield chunk([c], kv_transfer_params=kv if c.get("finish_reason") else None)
                    done += 1
                    continue
                n += 1
                if self._cut(entry, n):
                    entry["outcome"] = "broken"
                    raise ConnectionAbortedError("injected fault: stream cut")
                if (c := writers[i].piece(ev.text)) is not None:
                    yield chunk([c])
            if params.include_usage:
                yield chunk([], usage_=wire.usage(prompt_tokens, completion))
            yield wire.done_event()
            entry["outcome"] = "completed"
        finally:
            for s in seqs:
                if not s.finished:  # client went away (or injected cut): free the batch slot
                    self.engine.abort(s)
            if entry["outcome"] == "in_progress":
                entry["outcome"] = "aborted"

    async def _complete(self, request: Request, seqs: list[Sequence], writers: list[ChoiceWriter],
                        entry: dict[str, Any], endpoint: wire.Endpoint, rid: str, model: str) -> Response:
        async def watch_disconnect() -> None:
            # NOTE: a plain (non-streaming) handler is not cancelled when the client leaves.
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            for s in seqs:
                self.engine.abort(s)

        watcher = asyncio.create_task(watch_disconnect())
        choices: list[dict[str, Any] | None] = [None] * len(seqs)
        n, completion, kv = 0, 0, None
        try:
            async for i, ev in self._merged(seqs):
                if not isinstance(ev, Finished):
                    n += 1
                    writers[i].piece(ev.text)
                    if self._cut(entry, n):
                        for s in seqs:
                            self.engine.abort(s)
                        entry["outcome"] = "broken"
                        return error("injected fault: generation failed", 500)
                    continue
                if ev.reason == "abort":
                    entry["outcome"] = "aborted"
                    return Response(status_code=499)
                completion += ev.completion_tokens
                kv = kv or self._kv_out(ev)
                choices[i] = writers[i].whole(ev.reason, ev.stop_reason)
        finally:
            watcher.cancel()
        entry["outcome"] = "completed"
        body = wire.body_of(endpoint, rid, model, choices, wire.usage(len(seqs[0].prompt), completion),
                            kv_transfer_params=kv)
        return JSONResponse(body)
