"""The gateway's pool-facing half: embedding, semantic caches and deadline-bound RAG search.

Every method takes the time it may use and returns by then. Failures surface as
:class:`~trinity.client.pool.PoolError` (``kind`` timeout / unavailable / ...);
the pipeline turns them into a degraded answer or a 503 according to the policy.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

from trinity.client.pool import PoolClient, PoolError, SearchResult
from trinity.gateway.config import GatewayConfig
from trinity.gateway.metrics import GatewayMetrics
from trinity.gateway.options import RequestOptions

__all__ = ["PARTS", "EmbedBatcher", "Passage", "Retriever", "passage_text", "search_parts"]

log = logging.getLogger(__name__)

PARTS = ("embed", "cache", "search", "network")


@dataclass(frozen=True)
class Passage:
    id: int
    score: float
    text: str


def passage_text(payload: Any, limit: int) -> str:
    """Passage text from a payload: ``{"text": ...}`` or a plain string."""
    if isinstance(payload, dict):
        payload = payload.get("text", payload.get("passage", ""))
    return ("" if payload is None else str(payload))[:limit]


def search_parts(res: SearchResult) -> tuple[float, float]:
    """A search's wall time split into the pool's own time (queue + scan, ``engine_ms``) and the
    rest: HTTP, JSON and the pool's route (``network``)."""
    engine = float(res.timings_ms.get("engine_ms", 0.0))
    return engine, max(res.client_ms - engine, 0.0)


class EmbedBatcher:
    """Micro-batches concurrent embedding requests into one ``encode`` call per lane, in a thread.

    Two lanes, as the pool orders searches: decode-stage texts have their own queue and worker, so
    they never wait for queued prefill texts, and with ``decode_embedder`` (a model of their own)
    not for the prefill batch being encoded either; prefill and background texts share the other
    lane, prefill first. A batch holds one stage
    only and stays small to bound head-of-line blocking (on CPU batching saves little:
    docs/gateway.md); waiters whose deadline passed are dropped before their batch is encoded.
    """

    RANK = {"decode": 0, "prefill": 1, "background": 2}

    def __init__(self, embedder: Any, max_batch: int = 8, decode_embedder: Any = None) -> None:
        self.embedder, self.max_batch = embedder, max_batch
        self._embedders = {"decode": decode_embedder or embedder, "prefill": embedder}
        # NOTE: a local model is one encode at a time: its Rust tokenizer raises "Already borrowed" when
        # two threads use it at once (huggingface/tokenizers#537), so lanes sharing it take turns.
        self._locks = {id(e): asyncio.Lock() for e in self._embedders.values()}
        self._queues: dict[str, asyncio.PriorityQueue[tuple[int, int, str, asyncio.Future]]] = {
            lane: asyncio.PriorityQueue() for lane in self._embedders}
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task] = []

    async def embed(self, text: str, stage: str = "prefill") -> list[float]:
        loop = asyncio.get_running_loop()
        if not self._tasks:
            self._tasks = [loop.create_task(self._run(lane), name=f"embed-{lane}") for lane in self._embedders]
        rank = self.RANK.get(stage, 1)
        fut: asyncio.Future = loop.create_future()
        await self._queues["decode" if rank == 0 else "prefill"].put((rank, next(self._seq), text, fut))
        return await fut

    def _next_batch(self, queue: asyncio.PriorityQueue, first: tuple[int, int, str, asyncio.Future]
                    ) -> list[tuple[str, asyncio.Future]]:
        batch, rest = [first], []
        while not queue.empty() and len(batch) < self.max_batch:
            item = queue.get_nowait()
            (batch if item[0] == first[0] else rest).append(item)
        for item in rest:
            queue.put_nowait(item)
        return [(t, f) for _, _, t, f in batch if not f.done()]  # callers past their deadline are gone

    async def _run(self, lane: str) -> None:
        queue, embedder = self._queues[lane], self._embedders[lane]
        while True:
            live = self._next_batch(queue, await queue.get())
            if not live:
                continue
            try:
                texts = [t for t, _ in live]
                if hasattr(embedder, "aencode"):  # an embedding server (trinity.gateway.embed)
                    vecs = await embedder.aencode(texts)
                else:
                    async with self._locks[id(embedder)]:
                        vecs = await asyncio.to_thread(embedder.encode, texts)
                for (_, fut), vec in zip(live, vecs):
                    if not fut.done():
                        fut.set_result(vec if isinstance(vec, list) else vec.tolist())
            except Exception as exc:  # noqa: BLE001 - hand the failure to every waiter
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for emb in {id(e): e for e in self._embedders.values()}.values():
            if hasattr(emb, "aclose"):
                await emb.aclose()


class Retriever:
    """Embedding + caches + search against one pool, with metrics."""

    def __init__(self, cfg: GatewayConfig, pool: PoolClient, metrics: GatewayMetrics, embedder: Any = None,
                 decode_embedder: Any = None) -> None:
        self.cfg, self.pool, self.metrics = cfg, pool, metrics
        self.batcher = EmbedBatcher(embedder, decode_embedder=decode_embedder) if embedder is not None else None
        self._background: set[asyncio.Task] = set()

    async def embed(self, text: str, budget_ms: float, stage: str = "prefill") -> list[float] | None:
        """Embed within ``budget_ms``, locally or on the embedding server (``None`` with ``embed="pool"``)."""
        if self.batcher is None:
            return None
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(max(budget_ms, 0.0) / 1e3):
                return await self.batcher.embed(text, stage)
        except TimeoutError:
            raise PoolError("timeout", f"embedding took over {budget_ms:.1f} ms") from None
        finally:
            self.metrics.phase.labels("embed").observe(time.perf_counter() - t0)

    async def lookup(self, cache_kind: str, opts: RequestOptions, text: str, vec: list[float] | None,
                     budget_ms: float) -> tuple[str, Any]:
        """``("hit", value)``, ``("miss", None)`` or ``("error", None)`` for ``text`` in a cache."""
        name = self.cfg.cache.answer_cache if cache_kind == "answer" else self.cfg.cache.prompt_cache
        assert name
        budget = min(budget_ms, self.cfg.cache.lookup_deadline_ms)
        t0 = time.perf_counter()
        try:
            if budget < 1.0:
                raise PoolError("timeout", "no time left for a cache lookup")
            res = await self.pool.cache_lookup(name, tenant=opts.tenant, vector=vec, text=None if vec else text,
                                               deadline_ms=budget)
        except PoolError as exc:
            # NOTE: a failed lookup is a miss, never an error: the cache is an optimisation.
            self.metrics.cache_lookups.labels(name, f"error_{exc.kind}").inc()
            return "error", None
        finally:
            self.metrics.phase.labels("cache_lookup").observe(time.perf_counter() - t0)
        self.metrics.cache_lookups.labels(name, "hit" if res.hit else "miss").inc()
        return ("hit", res.value) if res.hit else ("miss", None)

    def insert(self, cache_kind: str, opts: RequestOptions, text: str, vec: list[float] | None, value: Any) -> None:
        """Fire-and-forget insert (off the request's critical path)."""
        name = self.cfg.cache.answer_cache if cache_kind == "answer" else self.cfg.cache.prompt_cache
        if not name:
            return

        async def run() -> None:
            try:
                await self.pool.cache_insert(name, tenant=opts.tenant, value=value, vector=vec, text=text)
                self.metrics.cache_inserts.labels(name, "ok").inc()
            except PoolError as exc:
                self.metrics.cache_inserts.labels(name, f"error_{exc.kind}").inc()
                log.debug("cache insert into %s failed: %s", name, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def search(self, stage: str, collection: str, k: int, nprobe: int | None, text: str,
                     vec: list[float] | None, budget_ms: float) -> tuple[list[Passage], SearchResult]:
        """Deadline-bound search; raises :class:`PoolError` (counted) on any failure."""
        t0 = time.perf_counter()
        try:
            if budget_ms < self.cfg.retrieval.min_deadline_ms:
                self.metrics.retrievals.labels(stage, "skipped").inc()
                raise PoolError("timeout", f"only {budget_ms:.1f} ms left for the {stage} retrieval")
            try:
                res = await self.pool.search(collection, vector=vec, text=None if vec else text, k=k, nprobe=nprobe,
                                             stage=stage, deadline_ms=budget_ms)
            except PoolError as exc:
                self.metrics.retrievals.labels(stage, exc.kind).inc()
                raise
        finally:
            self.metrics.phase.labels(f"retrieval_{stage}").observe(time.perf_counter() - t0)
        self.metrics.retrievals.labels(stage, "partial" if res.partial else "ok").inc()
        limit = self.cfg.retrieval.max_passage_chars
        return [Passage(h.id, h.score, passage_text(h.payload, limit)) for h in res.hits], res

    def observe(self, stage: str, total_ms: float, **parts_ms: float) -> dict[str, float]:
        """Record one retrieval that returned passages: its total (first step to passages in hand)
        and its parts (a part that did not run is 0); returns them for the ``trinity`` object."""
        out = {f"{p}_ms": round(parts_ms.get(p, 0.0), 3) for p in PARTS}
        for p in PARTS:
            self.metrics.retrieval_part.labels(stage, p).observe(out[f"{p}_ms"] / 1e3)
        self.metrics.retrieval.labels(stage).observe(total_ms / 1e3)
        return {**out, "ms": round(total_ms, 3)}

    async def ensure_caches(self, retry_s: float = 1.0) -> None:
        """Create the configured caches if missing, retrying until the pool answers.

        NOTE: the gateway may start before the pool (``trinity up`` starts everything at
        once); until the caches exist, lookups are misses and inserts fail (counted).
        """
        c = self.cfg.cache
        todo = [(kind, name) for kind, name in (("answer", c.answer_cache), ("prompt", c.prompt_cache)) if name]
        warned = False
        while todo:
            kind, name = todo[0]
            try:
                await self.pool.create_cache(name, kind=kind, threshold=c.threshold, ttl_s=c.ttl_s,
                                             max_entries=c.max_entries)
                todo.pop(0)
            except PoolError as exc:
                if exc.kind not in ("unavailable", "timeout", "overloaded"):
                    log.error("cannot create cache %s in the pool: %s", name, exc)
                    todo.pop(0)
                    continue
                if not warned:
                    log.warning("pool not reachable yet (%s); retrying cache creation every %.0f s", exc, retry_s)
                    warned = True
                await asyncio.sleep(retry_s)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.batcher:
            await self.batcher.aclose()
