"""Per-request orchestration: caches -> RAG -> prefill leg -> decode legs (+ decode-time RAG).

Order for one request (each step bounded by what is left of its SLO share):

1. embed the query once (``embed="local"``) -- the vector serves every pool call;
2. answer-cache lookup; a compatible hit is returned as is (``trinity.cache="hit"``);
3. prompt-cache lookup (passages of a similar earlier prompt), else a stage=prefill
   search whose deadline is ``ttft_ms * prefill_share`` minus the time already spent;
4. augmented prompt -> prefill leg -> decode leg (streamed);
5. every ``retrieval_interval`` tokens: a stage=decode search (prefetched a few tokens
   early; the stream stalls at most ``tpot_ms * decode_share`` for it), then a
   *continuation leg* on the same decode instance (old prompt + text so far + the
   passage) so its prefix cache serves the old context;
6. answer-cache insert, off the critical path.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trinity.serving.gateway_config import GatewayConfig, RequestOptions
from trinity.serving.gateway_deadline import Deadline
from trinity.serving.gateway_errors import GatewayError
from trinity.serving.gateway_metrics import GatewayMetrics
from trinity.serving.gateway_request import ClientRequest, augment, continuation_body
from trinity.serving.gateway_retrieval import Passage, Retriever
from trinity.serving.llm_backend import LegDone, LegRequest
from trinity.serving.llm_openai import OpenAIBackend, PrefillResult
from trinity.serving.pool_client import PoolError

__all__ = ["GatewayError", "Pipeline", "Prepared", "Trace"]

T = TypeVar("T")


@dataclass
class Trace:
    """What happened to one request; returned to the client as the ``trinity`` object."""

    request_id: str
    upstream_id: str = ""  # X-Request-Id of every leg (unique even if clients reuse ids)
    arrival: float = field(default_factory=time.perf_counter)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cache: str = "off"
    prompt_cache: str = "off"
    degraded_reasons: list[str] = field(default_factory=list)
    retrieval: dict[str, Any] | None = None
    decode_retrievals: list[dict[str, Any]] = field(default_factory=list)
    legs: Counter = field(default_factory=Counter)
    kv_transfer: bool | None = None
    instances: dict[str, str] = field(default_factory=dict)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    first_token_at: float | None = None
    deadline: Deadline | None = None

    def __post_init__(self) -> None:
        # NOTE: vLLM pairs a request's prefill and decode legs by this id, so it must be unique;
        # a client-supplied id is kept as its prefix for correlation.
        self.upstream_id = self.upstream_id or f"{self.request_id}-{uuid.uuid4().hex[:8]}"

    def add(self, phase: str, ms: float) -> None:
        self.timings_ms[phase] = round(self.timings_ms.get(phase, 0.0) + ms, 3)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.arrival) * 1e3

    def to_json(self) -> dict[str, Any]:
        out = {
            "request_id": self.request_id, "upstream_request_id": self.upstream_id, "cache": self.cache,
            "prompt_cache": self.prompt_cache,
            "degraded": bool(self.degraded_reasons), "degraded_reasons": self.degraded_reasons,
            "retrieval": self.retrieval, "decode_retrievals": self.decode_retrievals, "legs": dict(self.legs),
            "kv_transfer": self.kv_transfer, "instances": self.instances,
            "timings_ms": {**self.timings_ms, "total": round(self.elapsed_ms(), 3)},
        }
        if self.first_token_at is not None:
            out["timings_ms"]["ttft"] = round((self.first_token_at - self.arrival) * 1e3, 3)
        if self.deadline is not None:
            out["deadline_ms"] = {"first_token": round((self.deadline.first_token - self.arrival) * 1e3, 3),
                                  "end": round((self.deadline.end - self.arrival) * 1e3, 3)}
        return out


@dataclass
class Prepared:
    """Result of steps 1-3: a cached answer, or the (augmented) body to generate from."""

    request: ClientRequest
    opts: RequestOptions
    body: dict[str, Any]
    vector: list[float] | None = None
    cached: dict[str, Any] | None = None
    passages: list[Passage] = field(default_factory=list)


class Pipeline:
    """Stateless orchestration over a backend and a retriever."""

    def __init__(self, cfg: GatewayConfig, backend: OpenAIBackend, retriever: Retriever,
                 metrics: GatewayMetrics) -> None:
        self.cfg, self.backend, self.retriever, self.metrics = cfg, backend, retriever, metrics

    async def _leg(self, trace: Trace, aw: Awaitable[T], leg: str) -> T:
        """``aw`` bounded by the request's deadline (the first token's until it is out)."""
        if trace.deadline is None:
            return await aw
        return await trace.deadline.within(aw, leg, started=trace.first_token_at is not None)

    def _pool_failure(self, opts: RequestOptions, trace: Trace, what: str, exc: PoolError, hard: bool) -> None:
        """Apply the degrade policy; ``hard`` failures raise 503 under ``on_pool_error=fail``."""
        reason = f"{what}: {exc.kind}"
        if hard and opts.on_pool_error == "fail":
            raise GatewayError(503, f"vector pool {exc.kind} during {what}; not answering without retrieval "
                               "(on_pool_error=fail)", retry_after=1)
        trace.degraded_reasons.append(reason)
        self.metrics.degraded.labels(reason).inc()

    def _cache_compatible(self, value: Any, req: ClientRequest, opts: RequestOptions) -> bool:
        """A cached answer only serves requests it would be a valid answer to."""
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            return False
        if value.get("model") != req.model or value.get("endpoint") != req.endpoint:
            return False
        if value.get("collection") != opts.collection:
            return False
        n, want = int(value.get("completion_tokens") or 0), req.max_tokens or math.inf
        return n == want or (value.get("finish_reason") == "stop" and n <= want)

    async def prepare(self, req: ClientRequest, opts: RequestOptions, trace: Trace) -> Prepared:
        """Steps 1-3; may raise :class:`GatewayError` (503) under ``on_pool_error=fail``."""
        rcfg = self.cfg.retrieval
        deadline = trace.arrival + opts.ttft_ms * rcfg.prefill_share / 1e3
        left = lambda: (deadline - time.perf_counter()) * 1e3  # noqa: E731
        prep = Prepared(req, opts, req.upstream_body())
        if not (opts.answer_cache or opts.prompt_cache or opts.collection):
            return prep
        t0 = time.perf_counter()
        try:
            prep.vector = await self.retriever.embed(req.query, left())
        except PoolError as exc:
            trace.add("embed", (time.perf_counter() - t0) * 1e3)
            self._pool_failure(opts, trace, "embed", exc, hard=bool(opts.collection))
            return prep
        trace.add("embed", (time.perf_counter() - t0) * 1e3)
        if opts.answer_cache:
            t0 = time.perf_counter()
            status, value = await self.retriever.lookup("answer", opts, req.query, prep.vector, left())
            trace.add("cache_lookup", (time.perf_counter() - t0) * 1e3)
            if status == "hit" and self._cache_compatible(value, req, opts):
                trace.cache, prep.cached = "hit", value
                return prep
            trace.cache = "miss" if status == "hit" else status
        if not opts.collection:
            return prep
        passages: list[Passage] | None = None
        if opts.prompt_cache:
            t0 = time.perf_counter()
            status, value = await self.retriever.lookup("prompt", opts, req.query, prep.vector, left())
            trace.add("cache_lookup", (time.perf_counter() - t0) * 1e3)
            if isinstance(value, dict) and value.get("collection") == opts.collection and value.get("k") == opts.k:
                passages = [Passage(int(p["id"]), float(p["score"]), str(p["text"])) for p in value["passages"]]
            trace.prompt_cache = "hit" if passages is not None else "error" if status == "error" else "miss"
        if passages is None:
            t0 = time.perf_counter()
            try:
                passages, res = await self.retriever.search("prefill", opts.collection, opts.k, opts.nprobe,
                                                            req.query, prep.vector, left())
            except PoolError as exc:
                trace.add("retrieval", (time.perf_counter() - t0) * 1e3)
                self._pool_failure(opts, trace, "retrieval", exc, hard=True)
                return prep
            trace.add("retrieval", (time.perf_counter() - t0) * 1e3)
            trace.retrieval = {"collection": opts.collection, "k": opts.k, "partial": res.partial,
                               "fraction_scanned": res.fraction_scanned, "pool_timings_ms": res.timings_ms}
            if opts.prompt_cache and not res.partial:
                self.retriever.insert("prompt", opts, req.query, prep.vector, {
                    "collection": opts.collection, "k": opts.k,
                    "passages": [{"id": p.id, "score": p.score, "text": p.text} for p in passages]})
        prep.passages = passages
        if trace.retrieval is None:
            trace.retrieval = {"collection": opts.collection, "k": opts.k, "from_prompt_cache": True}
        trace.retrieval["passage_ids"] = [p.id for p in passages]
        prep.body = augment(req, passages)
        return prep

    async def prefill(self, prep: Prepared, trace: Trace) -> PrefillResult:
        """Step 4a: the prefill leg (raises :class:`~trinity.serving.llm_backend.BackendError`)."""
        result = await self._leg(trace, self.backend.prefill(LegRequest(prep.request.endpoint, prep.body,
                                                                        trace.upstream_id)), "prefill")
        if not result.skipped:
            self.metrics.legs.labels("prefill").inc(result.attempts)
            self.metrics.phase.labels("prefill").observe(result.ms / 1e3)
            trace.legs["prefill"] += result.attempts
            trace.add("prefill", result.ms)
            trace.kv_transfer = result.kv_transfer_params is not None
            trace.instances["prefill"] = result.instance or ""
        return result

    async def _decode_retrieval(self, prep: Prepared, generated: str, after_tokens: int, budget_ms: float,
                                trace: Trace) -> tuple[list[Passage], dict[str, Any]]:
        """One stage=decode search on the query + latest output, within ``budget_ms``."""
        opts, rcfg = prep.opts, self.cfg.retrieval
        t0 = time.perf_counter()
        # NOTE: the query plus the most recent output: what the answer is about *now*. Short on
        # purpose: on CPU, MiniLM costs ~3.5x more for 500 characters than for 30 (measured
        # 44 vs 13 ms on one thread), and this embedding sits inside a TPOT-derived budget.
        text = f"{prep.request.query[:200]} {generated[-200:]}"
        info: dict[str, Any] = {"after_tokens": after_tokens, "deadline_ms": round(budget_ms, 3)}
        try:
            vec = await self.retriever.embed(text, budget_ms)
            passages, res = await self.retriever.search(
                "decode", opts.collection or "", rcfg.decode_k, opts.nprobe, text, vec,
                budget_ms - (time.perf_counter() - t0) * 1e3)
            info.update(passage_ids=[p.id for p in passages], partial=res.partial)
        except PoolError as exc:
            # NOTE: the stream has started, so decode-stage failures always degrade (no 503).
            self._pool_failure(opts, trace, "decode_retrieval", exc, hard=False)
            passages = []
            info["error"] = exc.kind
        info["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return passages, info

    async def _await_retrieval(self, task: asyncio.Task, prep: Prepared, trace: Trace) -> list[Passage]:
        """Wait for a (prefetched) decode-stage retrieval at most one stall allowance."""
        stall_budget = prep.opts.tpot_ms * self.cfg.retrieval.decode_share / 1e3
        if trace.deadline is not None:
            stall_budget = max(min(stall_budget, trace.deadline.left_ms(started=True) / 1e3), 0.0)
        t0 = time.perf_counter()
        done, _ = await asyncio.wait({task}, timeout=stall_budget)
        stall_ms = (time.perf_counter() - t0) * 1e3
        trace.add("decode_retrieval", stall_ms)
        if not done:
            task.cancel()
            self._pool_failure(prep.opts, trace, "decode_retrieval", PoolError("timeout", "stall budget"), hard=False)
            trace.decode_retrievals.append({"error": "timeout", "stall_ms": round(stall_ms, 3)})
            return []
        passages, info = task.result()
        info["stall_ms"] = round(stall_ms, 3)
        trace.decode_retrievals.append(info)
        return passages

    async def generate(self, prep: Prepared, prefill: PrefillResult, trace: Trace) -> AsyncIterator[str]:
        """Steps 4b-5: stream text from the pinned decode instance, across continuation legs.

        NOTE: a decode-stage retrieval is *prefetched*: it starts ``decode_prefetch_tokens``
        before its leg ends, so it overlaps the last tokens; the stream then stalls at most
        ``decode_share * tpot_ms`` for it. Its own deadline is the SLO time of the tokens it
        overlaps plus that stall allowance.
        """
        req, rcfg = prep.request, self.cfg.retrieval
        inst = self.backend.pick_decode()
        trace.instances["decode"] = inst.url
        interval = prep.opts.retrieval_interval if prep.opts.collection else 0
        remaining = req.max_tokens or math.inf
        body, phase, parts = self.backend.first_decode_body(prep.body, prefill), "decode", []
        prefetch: asyncio.Task | None = None
        try:
            while True:
                leg_max = min(interval, remaining) if interval else req.max_tokens
                leg_body = req.with_max_tokens(body, None if leg_max == math.inf else leg_max)
                leg_start = len(parts)
                more = bool(interval) and remaining > leg_max  # a continuation leg will follow
                start_at = max(1, leg_max - rcfg.decode_prefetch_tokens) if more else math.inf
                lead = leg_max - start_at if more else 0  # tokens still to come when it starts
                budget = prep.opts.tpot_ms * (rcfg.decode_share + lead)
                self.metrics.legs.labels(phase).inc()
                trace.legs[phase] += 1
                done: LegDone | None = None
                t0 = time.perf_counter()
                async with aclosing(self.backend.decode(inst, LegRequest(req.endpoint, leg_body, trace.upstream_id),
                                                        phase)) as leg:
                    while True:
                        try:
                            ev = await self._leg(trace, anext(leg), phase)
                        except StopAsyncIteration:
                            break
                        if isinstance(ev, LegDone):
                            done = ev
                            continue
                        parts.append(ev.text)
                        if trace.first_token_at is None:
                            trace.first_token_at = time.perf_counter()
                        if prefetch is None and len(parts) - leg_start >= start_at:
                            prefetch = asyncio.create_task(self._decode_retrieval(
                                prep, "".join(parts), trace.completion_tokens + len(parts) - leg_start, budget,
                                trace))
                        yield ev.text
                trace.add("decode", (time.perf_counter() - t0) * 1e3)
                assert done is not None
                if trace.prompt_tokens is None:
                    trace.prompt_tokens = done.prompt_tokens
                trace.completion_tokens += done.completion_tokens
                remaining -= done.completion_tokens
                trace.finish_reason = done.finish_reason
                if done.finish_reason != "length" or remaining <= 0 or not interval or done.completion_tokens == 0:
                    break
                if prefetch is None:  # the leg ended before the prefetch point
                    prefetch = asyncio.create_task(self._decode_retrieval(
                        prep, "".join(parts), trace.completion_tokens, prep.opts.tpot_ms * rcfg.decode_share, trace))
                passages = await self._await_retrieval(prefetch, prep, trace)
                prefetch = None
                body, phase = continuation_body(req, leg_body, "".join(parts[leg_start:]), passages), "continuation"
        finally:
            if prefetch is not None:
                prefetch.cancel()
        self.metrics.phase.labels("decode").observe(trace.timings_ms.get("decode", 0.0) / 1e3)

    def remember(self, prep: Prepared, trace: Trace, text: str) -> None:
        """Step 6: insert a clean, complete answer into the answer cache (background)."""
        embed_failed = prep.vector is None and self.retriever.batcher is not None
        if not prep.opts.answer_cache or trace.degraded_reasons or trace.cache == "hit" or embed_failed:
            return
        req = prep.request
        self.retriever.insert("answer", prep.opts, req.query, prep.vector, {
            "text": text, "model": req.model, "endpoint": req.endpoint, "collection": prep.opts.collection,
            "finish_reason": trace.finish_reason, "completion_tokens": trace.completion_tokens,
            "max_tokens": req.max_tokens, "created": int(time.time())})
