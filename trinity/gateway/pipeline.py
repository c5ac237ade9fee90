"""Per-request orchestration before and after the decode legs: caches and RAG, the prefill leg,
and the answer-cache insert (the decode legs are :mod:`trinity.gateway.decode`).

1. embed the query once (``embed="local"``): the vector serves every pool call;
2. answer-cache lookup; a compatible hit is returned as is;
3. prompt-cache lookup, else a stage=prefill search within ``ttft_ms * prefill_share`` minus
   the time already spent;
4. augmented prompt -> prefill leg (then the decode legs);
5. answer-cache insert, off the critical path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from trinity.client.pool import PoolError
from trinity.errors import Unavailable
from trinity.gateway.backends.instances import LegRequest
from trinity.gateway.backends.openai import OpenAIBackend, PrefillResult
from trinity.gateway.config import GatewayConfig
from trinity.gateway.metrics import GatewayMetrics
from trinity.gateway.options import RequestOptions
from trinity.gateway.request import ClientRequest, augment
from trinity.gateway.retrieval import Passage, Retriever, search_parts
from trinity.gateway.trace import Prepared, Trace

__all__ = ["Pipeline"]

T = TypeVar("T")
Budget = Callable[[], float]


class Pipeline:
    """Stateless orchestration over a backend and a retriever."""

    def __init__(self, cfg: GatewayConfig, backend: OpenAIBackend, retriever: Retriever,
                 metrics: GatewayMetrics) -> None:
        self.cfg, self.backend, self.retriever, self.metrics = cfg, backend, retriever, metrics

    async def leg(self, trace: Trace, aw: Awaitable[T], leg: str) -> T:
        """``aw`` bounded by the request's deadline (the first token's until it is out)."""
        if trace.deadline is None:
            return await aw
        return await trace.deadline.within(aw, leg, started=trace.first_token_at is not None)

    def pool_failure(self, opts: RequestOptions, trace: Trace, what: str, exc: PoolError, hard: bool) -> None:
        """Apply the degrade policy; ``hard`` failures answer 503 under ``on_pool_error=fail``."""
        reason = f"{what}: {exc.kind}"
        if hard and opts.on_pool_error == "fail":
            raise Unavailable(f"vector pool {exc.kind} during {what}; not answering without retrieval "
                              "(on_pool_error=fail)", retry_after_s=1)
        trace.degraded_reasons.append(reason)
        self.metrics.degraded.labels(reason).inc()

    @staticmethod
    def _cache_compatible(value: Any, req: ClientRequest, opts: RequestOptions) -> bool:
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
        """Steps 1-3; raises :class:`~trinity.errors.Unavailable` (503) under ``on_pool_error=fail``."""
        deadline = trace.arrival + opts.ttft_ms * self.cfg.retrieval.prefill_share / 1e3
        left: Budget = lambda: (deadline - time.perf_counter()) * 1e3  # noqa: E731
        prep = Prepared(req, opts, req.upstream_body())
        if not (opts.answer_cache or opts.prompt_cache or opts.collection):
            return prep
        t0 = time.perf_counter()
        if not await self._embed(prep, trace, left):
            return prep
        if opts.answer_cache and req.cacheable and await self._answer_hit(prep, trace, left):
            return prep
        if not opts.collection:
            return prep
        passages = await self._passages(prep, trace, left)
        if passages is None:
            return prep
        prep.passages = passages
        if trace.retrieval is None:
            trace.retrieval = {"collection": opts.collection, "k": opts.k, "from_prompt_cache": True}
        tm, r = trace.timings_ms, trace.retrieval
        trace.retrieval.update(self.retriever.observe(
            "prefill", (time.perf_counter() - t0) * 1e3, embed=tm.get("embed", 0.0), cache=tm.get("cache_lookup", 0.0),
            search=r.get("search_ms", 0.0), network=r.get("network_ms", 0.0)), passage_ids=[p.id for p in passages])
        prep.body = augment(req, passages)
        return prep

    async def _embed(self, prep: Prepared, trace: Trace, left: Budget) -> bool:
        t0 = time.perf_counter()
        try:
            prep.vector = await self.retriever.embed(prep.request.query, left())
            return True
        except PoolError as exc:
            self.pool_failure(prep.opts, trace, "embed", exc, hard=bool(prep.opts.collection))
            return False
        finally:
            trace.add("embed", (time.perf_counter() - t0) * 1e3)

    async def _answer_hit(self, prep: Prepared, trace: Trace, left: Budget) -> bool:
        t0 = time.perf_counter()
        status, value = await self.retriever.lookup("answer", prep.opts, prep.request.query, prep.vector, left())
        trace.add("cache_lookup", (time.perf_counter() - t0) * 1e3)
        if status == "hit" and self._cache_compatible(value, prep.request, prep.opts):
            trace.cache, prep.cached = "hit", value
            return True
        trace.cache = "miss" if status == "hit" else status
        return False

    async def _cached_passages(self, prep: Prepared, trace: Trace, left: Budget) -> list[Passage] | None:
        opts, t0 = prep.opts, time.perf_counter()
        status, value = await self.retriever.lookup("prompt", opts, prep.request.query, prep.vector, left())
        trace.add("cache_lookup", (time.perf_counter() - t0) * 1e3)
        passages = None
        if isinstance(value, dict) and value.get("collection") == opts.collection and value.get("k") == opts.k:
            passages = [Passage(int(p["id"]), float(p["score"]), str(p["text"])) for p in value["passages"]]
        trace.prompt_cache = "hit" if passages is not None else "error" if status == "error" else "miss"
        return passages

    async def _passages(self, prep: Prepared, trace: Trace, left: Budget) -> list[Passage] | None:
        """Passages from the prompt cache, else from a prefill-stage search (``None``: degraded)."""
        opts, req = prep.opts, prep.request
        if opts.prompt_cache and (passages := await self._cached_passages(prep, trace, left)) is not None:
            return passages
        t0 = time.perf_counter()
        try:
            passages, res = await self.retriever.search("prefill", opts.collection, opts.k, opts.nprobe, req.query,
                                                        prep.vector, left())
        except PoolError as exc:
            self.pool_failure(opts, trace, "retrieval", exc, hard=True)
            return None
        finally:
            trace.add("retrieval", (time.perf_counter() - t0) * 1e3)
        search_ms, network_ms = search_parts(res)
        trace.retrieval = {"collection": opts.collection, "k": opts.k, "partial": res.partial,
                           "fraction_scanned": res.fraction_scanned, "pool_timings_ms": res.timings_ms,
                           "search_ms": search_ms, "network_ms": network_ms}
        if opts.prompt_cache and not res.partial:
            self.retriever.insert("prompt", opts, req.query, prep.vector, {
                "collection": opts.collection, "k": opts.k,
                "passages": [{"id": p.id, "score": p.score, "text": p.text} for p in passages]})
        return passages

    async def prefill(self, prep: Prepared, trace: Trace) -> PrefillResult:
        """Step 4: the prefill leg (raises :class:`~trinity.gateway.backends.instances.BackendError`).

        The decode instance is chosen first: P2P NCCL names both instances in the request id.
        """
        leg = LegRequest(prep.request.endpoint, prep.body, trace.upstream_id)
        result = await self.leg(trace, self.backend.prefill(leg, self.backend.pick_decode()), "prefill")
        if not result.skipped:
            self.metrics.legs.labels("prefill").inc(result.attempts)
            trace.legs["prefill"] += result.attempts
            trace.kv_transfer = result.kv_transfer_params is not None or not result.kv_expected
            trace.instances["prefill"] = result.instance or ""
            if result.request_id:
                trace.kv_request_id = result.request_id
            if result.pending is None:
                self.metrics.phase.labels("prefill").observe(result.ms / 1e3)
                trace.add("prefill", result.ms)
            else:
                result.pending.add_done_callback(lambda t: self._concurrent_prefill(t, trace))
        return result

    def _concurrent_prefill(self, task: Any, trace: Trace) -> None:
        if not task.cancelled() and task.exception() is None:
            self.metrics.phase.labels("prefill").observe(task.result() / 1e3)
            trace.add("prefill", task.result())

    def remember(self, prep: Prepared, trace: Trace, text: str) -> None:
        """Step 5: insert a clean, complete answer into the answer cache (background)."""
        embed_failed = prep.vector is None and self.retriever.batcher is not None
        if not prep.opts.answer_cache or trace.degraded_reasons or trace.cache == "hit" or embed_failed \
                or not prep.request.cacheable or trace.finish_reason not in ("stop", "length"):
            return
        req = prep.request
        self.retriever.insert("answer", prep.opts, req.query, prep.vector, {
            "text": text, "model": req.model, "endpoint": req.endpoint, "collection": prep.opts.collection,
            "finish_reason": trace.finish_reason, "completion_tokens": trace.completion_tokens,
            "prompt_tokens": trace.prompt_tokens, "max_tokens": req.max_tokens, "created": int(time.time())})
