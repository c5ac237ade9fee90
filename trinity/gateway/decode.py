"""The decode legs of one request: stream from the pinned decode instance, and every
``retrieval_interval`` tokens run a stage=decode search and continue on the same instance.

A decode-stage retrieval is *prefetched*: it starts ``decode_prefetch_tokens`` before its leg
ends, overlapping the last tokens; the stream then stalls at most ``decode_share * tpot_ms``
for it.  Its own deadline is the SLO time of the overlapped tokens plus that allowance.  The
continuation leg's prompt is the previous leg's plus its output plus the passage, so the
instance's prefix cache serves the old context.

Upstream events pass through unchanged (:class:`Chunk`); between legs, the finish and usage
events of a leg that is continued are held back (a finish event's text, if any, is kept).
A non-streaming request without decode-time retrieval is one non-streaming leg whose body
is returned as the upstream produced it (:meth:`DecodeLoop.once`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from trinity.client.pool import PoolError
from trinity.gateway.backends.instances import Chunk, Instance, LegDone, LegRequest
from trinity.gateway.backends.openai import PrefillResult
from trinity.gateway.pipeline import Pipeline
from trinity.gateway.request import continuation_body
from trinity.gateway.retrieval import Passage, search_parts
from trinity.gateway.trace import Prepared, Trace

__all__ = ["DecodeLoop", "answer_tail", "combined_query"]


def answer_tail(parts: list[str], num_tokens: int) -> str:
    """The answer's last ``num_tokens`` streamed tokens (one per event; at most 8 characters each)."""
    return "".join(parts[-num_tokens:])[-8 * num_tokens:].strip()


def combined_query(query: list[float], tail: list[float], tail_weight: float) -> list[float]:
    """``query + tail_weight * tail``, normalised: the decode-stage query vector."""
    s = [a + tail_weight * b for a, b in zip(query, tail)]
    norm = math.sqrt(sum(x * x for x in s)) or 1.0
    return [x / norm for x in s]


@dataclass(frozen=True)
class _LegPlan:
    body: dict[str, Any]
    phase: str
    prefetch_at: float  # tokens into the leg at which the next retrieval starts (inf: none)
    budget_ms: float  # that retrieval's deadline


class DecodeLoop:
    """Steps 4b-5 for one request; iterate :meth:`run` for the text pieces."""

    def __init__(self, pipeline: Pipeline, prep: Prepared, prefill: PrefillResult, trace: Trace) -> None:
        self.pipe, self.prep, self.trace = pipeline, prep, trace
        self.rcfg = pipeline.cfg.retrieval
        self.prefill = prefill
        self.body = pipeline.backend.first_decode_body(prep.body, prefill)
        opts = prep.request.body.get("stream_options")
        if prep.request.stream and isinstance(opts, dict) and set(opts) - {"include_usage"}:
            self.body["stream_options"] = opts  # NOTE: e.g. continuous_usage_stats; include_usage is always on upstream
        self.interval = prep.opts.retrieval_interval if prep.opts.collection and prep.request.continuable else 0
        self.remaining = prep.request.max_tokens or math.inf
        self.parts: list[str] = []
        self.prefetch: asyncio.Task | None = None
        self._last: LegDone | None = None

    @property
    def single_leg(self) -> bool:
        return not self.interval

    def _instance(self) -> Instance:
        inst = self.prefill.decode or self.pipe.backend.pick_decode()
        self.trace.instances["decode"] = inst.url
        return inst

    async def once(self) -> dict[str, Any]:
        """The one non-streaming decode leg; returns the upstream body unchanged."""
        trace, req = self.trace, self.prep.request
        inst = self._instance()
        self.pipe.metrics.legs.labels("decode").inc()
        trace.legs["decode"] += 1
        t0 = time.perf_counter()
        body = {k: v for k, v in self.body.items() if k != "stream_options"}
        leg = LegRequest(req.endpoint, {**body, "stream": False}, self.prefill.request_id or trace.upstream_id)
        body = await self.pipe.leg(trace, self.pipe.backend.decode_json(inst, leg), "decode")
        trace.first_token_at = time.perf_counter()
        trace.add("decode", (trace.first_token_at - t0) * 1e3)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        choices = body.get("choices") if isinstance(body.get("choices"), list) else []
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        msg = first.get("message") if isinstance(first.get("message"), dict) else first
        self.parts.append(msg.get("content" if req.endpoint == "chat" else "text") or "")
        self._account(LegDone(first.get("finish_reason"), usage.get("prompt_tokens"),
                              int(usage.get("completion_tokens") or 0)))
        self.pipe.metrics.phase.labels("decode").observe(trace.timings_ms.get("decode", 0.0) / 1e3)
        return body

    async def run(self) -> AsyncIterator[Chunk]:
        inst = self._instance()
        phase = "decode"
        try:
            while True:
                plan = self._plan(phase)
                leg_start, held = len(self.parts), []
                async for ch in self._leg(inst, plan, leg_start, held):
                    yield ch
                if not self._continues():
                    for ch in held:
                        yield ch
                    break
                for ch in held:
                    if ch.text:  # NOTE: the leg's last piece may ride on its finish event
                        yield Chunk({**ch.obj, "choices": [{**c, "finish_reason": None} for c in ch.obj["choices"]]},
                                    ch.text, None)
                passages = await self._retrieval(leg_start)
                leg_text = "".join(self.parts[leg_start:])
                self.body, phase = continuation_body(self.prep.request, plan.body, leg_text, passages), "continuation"
        finally:
            if self.prefetch is not None:
                self.prefetch.cancel()
        self.pipe.metrics.phase.labels("decode").observe(self.trace.timings_ms.get("decode", 0.0) / 1e3)

    def _plan(self, phase: str) -> _LegPlan:
        req = self.prep.request
        leg_max = min(self.interval, self.remaining) if self.interval else req.max_tokens
        body = req.with_max_tokens(self.body, None if leg_max == math.inf else leg_max)
        more = bool(self.interval) and self.remaining > leg_max  # NOTE: a continuation leg will follow
        prefetch_at = max(1, leg_max - self.rcfg.decode_prefetch_tokens) if more else math.inf
        lead = leg_max - prefetch_at if more else 0
        return _LegPlan(body, phase, prefetch_at, self.prep.opts.tpot_ms * (self.rcfg.decode_share + lead))

    async def _leg(self, inst: Instance, plan: _LegPlan, leg_start: int, held: list[Chunk]) -> AsyncIterator[Chunk]:
        trace, backend = self.trace, self.pipe.backend
        self.pipe.metrics.legs.labels(plan.phase).inc()
        trace.legs[plan.phase] += 1
        done: LegDone | None = None
        t0 = time.perf_counter()
        rid = self.prefill.request_id if plan.phase == "decode" and self.prefill.request_id else trace.upstream_id
        leg = LegRequest(self.prep.request.endpoint, plan.body, rid)
        async with aclosing(backend.decode(inst, leg, plan.phase)) as events:
            while True:
                try:
                    ev = await self.pipe.leg(trace, anext(events), plan.phase)
                except StopAsyncIteration:
                    break
                if isinstance(ev, LegDone):
                    done = ev
                    continue
                if ev.text:
                    self.parts.append(ev.text)
                if ev.finish_reason is not None or ev.usage_only:
                    held.append(ev)
                    continue
                if not ev.substantive and plan.phase == "continuation":
                    continue  # NOTE: a continuation leg's opening role event
                if trace.first_token_at is None and ev.substantive:
                    trace.first_token_at = time.perf_counter()
                if self.prefetch is None and len(self.parts) - leg_start >= plan.prefetch_at:
                    after = trace.completion_tokens + len(self.parts) - leg_start
                    self.prefetch = asyncio.create_task(self._search(self._tail(), after, plan.budget_ms))
                yield ev
        trace.add("decode", (time.perf_counter() - t0) * 1e3)
        if trace.first_token_at is None:
            trace.first_token_at = time.perf_counter()
        assert done is not None
        self._account(done)

    def _account(self, done: LegDone) -> None:
        trace = self.trace
        if trace.prompt_tokens is None:
            trace.prompt_tokens = done.prompt_tokens
        trace.completion_tokens += done.completion_tokens
        self.remaining -= done.completion_tokens
        trace.finish_reason = done.finish_reason
        self._last = done

    def _continues(self) -> bool:
        done = self._last
        assert done is not None
        return (done.finish_reason == "length" and self.remaining > 0 and bool(self.interval)
                and done.completion_tokens > 0)

    async def _retrieval(self, leg_start: int) -> list[Passage]:
        if self.prefetch is None:  # NOTE: the leg ended before the prefetch point
            budget = self.prep.opts.tpot_ms * self.rcfg.decode_share
            self.prefetch = asyncio.create_task(self._search(self._tail(), self.trace.completion_tokens, budget))
        passages = await self._await(self.prefetch)
        self.prefetch = None
        return passages

    def _tail(self) -> str:
        return answer_tail(self.parts, self.rcfg.decode_tail_tokens)

    async def _search(self, tail: str, after_tokens: int, budget_ms: float) -> tuple[list[Passage], dict]:
        """One stage=decode search on the query + the answer's tail, within ``budget_ms``.

        No cache lookup: the answer is still being written and the query's passages are in the prompt."""
        opts, retriever = self.prep.opts, self.pipe.retriever
        t0 = time.perf_counter()
        text = f"{self.prep.request.query[:200]} {tail}"
        info: dict[str, Any] = {"after_tokens": after_tokens, "deadline_ms": round(budget_ms, 3)}
        try:
            vec = await self._query_vector(text, tail, budget_ms)
            embed_ms = (time.perf_counter() - t0) * 1e3
            passages, res = await retriever.search("decode", opts.collection or "", self.rcfg.decode_k, opts.nprobe,
                                                   text, vec, budget_ms - embed_ms)
            search_ms, network_ms = search_parts(res)
            info.update(passage_ids=[p.id for p in passages], partial=res.partial, **retriever.observe(
                "decode", (time.perf_counter() - t0) * 1e3, embed=embed_ms, search=search_ms, network=network_ms))
        except PoolError as exc:
            # NOTE: the stream has started, so decode-stage failures always degrade (no 503).
            self.pipe.pool_failure(opts, self.trace, "decode_retrieval", exc, hard=False)
            passages = []
            info.update(error=exc.kind, ms=round((time.perf_counter() - t0) * 1e3, 3))
        return passages, info

    async def _query_vector(self, text: str, tail: str, budget_ms: float) -> list[float] | None:
        """The decode-stage query: by default the request's (already computed) query vector plus the
        answer tail's embedding times ``decode_tail_weight``, normalised, so only the short tail is
        embedded (docs/gateway.md)."""
        q = self.prep.vector
        if self.rcfg.decode_query == "text" or q is None:
            return await self.pipe.retriever.embed(text, budget_ms, "decode")
        t = await self.pipe.retriever.embed(tail, budget_ms, "decode")
        if t is None:
            return None
        return combined_query(q, t, self.rcfg.decode_tail_weight)

    async def _await(self, task: asyncio.Task) -> list[Passage]:
        """Wait for a (prefetched) decode-stage retrieval at most one stall allowance."""
        trace = self.trace
        stall_budget = self.prep.opts.tpot_ms * self.rcfg.decode_share / 1e3
        if trace.deadline is not None:
            stall_budget = max(min(stall_budget, trace.deadline.left_ms(started=True) / 1e3), 0.0)
        t0 = time.perf_counter()
        done, _ = await asyncio.wait({task}, timeout=stall_budget)
        stall_ms = (time.perf_counter() - t0) * 1e3
        trace.add("decode_retrieval", stall_ms)
        if not done:
            task.cancel()
            self.pipe.pool_failure(self.prep.opts, trace, "decode_retrieval", PoolError("timeout", "stall budget"),
                                   hard=False)
            trace.decode_retrievals.append({"error": "timeout", "stall_ms": round(stall_ms, 3)})
            return []
        passages, info = task.result()
        info["stall_ms"] = round(stall_ms, 3)
        trace.decode_retrievals.append(info)
        return passages
