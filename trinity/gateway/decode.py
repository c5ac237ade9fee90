"""The decode legs of one request: stream from the pinned decode instance, and every
``retrieval_interval`` tokens run a stage=decode search and continue on the same instance.

A decode-stage retrieval is *prefetched*: it starts ``decode_prefetch_tokens`` before its leg
ends, overlapping the last tokens; the stream then stalls at most ``decode_share * tpot_ms``
for it.  Its own deadline is the SLO time of the overlapped tokens plus that allowance.  The
continuation leg's prompt is the previous leg's plus its output plus the passage, so the
instance's prefix cache serves the old context.
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
from trinity.gateway.backends.instances import Instance, LegDone, LegRequest
from trinity.gateway.backends.openai import PrefillResult
from trinity.gateway.pipeline import Pipeline
from trinity.gateway.request import continuation_body
from trinity.gateway.retrieval import Passage
from trinity.gateway.trace import Prepared, Trace

__all__ = ["DecodeLoop"]


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
        self.body = pipeline.backend.first_decode_body(prep.body, prefill)
        self.interval = prep.opts.retrieval_interval if prep.opts.collection else 0
        self.remaining = prep.request.max_tokens or math.inf
        self.parts: list[str] = []
        self.prefetch: asyncio.Task | None = None
        self._last: LegDone | None = None

    async def run(self) -> AsyncIterator[str]:
        inst = self.pipe.backend.pick_decode()
        self.trace.instances["decode"] = inst.url
        phase = "decode"
        try:
            while True:
                plan = self._plan(phase)
                leg_start = len(self.parts)
                async for text in self._leg(inst, plan, leg_start):
                    yield text
                if not self._continues():
                    break
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

    async def _leg(self, inst: Instance, plan: _LegPlan, leg_start: int) -> AsyncIterator[str]:
        trace, backend = self.trace, self.pipe.backend
        self.pipe.metrics.legs.labels(plan.phase).inc()
        trace.legs[plan.phase] += 1
        done: LegDone | None = None
        t0 = time.perf_counter()
        leg = LegRequest(self.prep.request.endpoint, plan.body, trace.upstream_id)
        async with aclosing(backend.decode(inst, leg, plan.phase)) as events:
            while True:
                try:
                    ev = await self.pipe.leg(trace, anext(events), plan.phase)
                except StopAsyncIteration:
                    break
                if isinstance(ev, LegDone):
                    done = ev
                    continue
                self.parts.append(ev.text)
                if trace.first_token_at is None:
                    trace.first_token_at = time.perf_counter()
                if self.prefetch is None and len(self.parts) - leg_start >= plan.prefetch_at:
                    after = trace.completion_tokens + len(self.parts) - leg_start
                    self.prefetch = asyncio.create_task(self._search("".join(self.parts), after, plan.budget_ms))
                yield ev.text
        trace.add("decode", (time.perf_counter() - t0) * 1e3)
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
            self.prefetch = asyncio.create_task(self._search("".join(self.parts), self.trace.completion_tokens, budget))
        passages = await self._await(self.prefetch)
        self.prefetch = None
        return passages

    async def _search(self, generated: str, after_tokens: int, budget_ms: float) -> tuple[list[Passage], dict]:
        """One stage=decode search on the query + latest output, within ``budget_ms``."""
        opts, retriever = self.prep.opts, self.pipe.retriever
        t0 = time.perf_counter()
        # NOTE: short on purpose: this embedding sits inside a TPOT-derived budget (docs/gateway.md).
        text = f"{self.prep.request.query[:200]} {generated[-200:]}"
        info: dict[str, Any] = {"after_tokens": after_tokens, "deadline_ms": round(budget_ms, 3)}
        try:
            vec = await retriever.embed(text, budget_ms)
            passages, res = await retriever.search("decode", opts.collection or "", self.rcfg.decode_k, opts.nprobe,
                                                   text, vec, budget_ms - (time.perf_counter() - t0) * 1e3)
            info.update(passage_ids=[p.id for p in passages], partial=res.partial)
        except PoolError as exc:
            # NOTE: the stream has started, so decode-stage failures always degrade (no 503).
            self.pipe.pool_failure(opts, self.trace, "decode_retrieval", exc, hard=False)
            passages = []
            info["error"] = exc.kind
        info["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return passages, info

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
