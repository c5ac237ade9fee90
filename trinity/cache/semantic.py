"""Semantic prompt / answer caches on the shared engine, with hard tenant isolation.

A cache maps an embedded key (a prompt) to a JSON value: for ``kind="answer"`` the
finished answer, for ``kind="prompt"`` whatever lets a worker reuse prefill work (a KV
block handle, a prefix id).  A lookup is a hit when the best live entry's similarity is
at least the threshold.

Isolation is structural, not a similarity trick: every (cache, tenant) pair owns its own
:class:`~trinity.index.FlatIndex`, registered with the engine under its own name, and a
lookup for tenant A only ever searches A's index -- B's entries are not in the candidate
set at all, whatever their similarity.  ``max_entries`` is per tenant, so one tenant
cannot evict another's entries either.

Eviction: entries expire ``ttl_s`` after insertion (expired entries never hit and are
removed by :meth:`SemanticCache.sweep`), and inserting into a full tenant evicts its
least recently *used* entry (a hit refreshes recency).  Entries live in memory: a cache
is rebuilt by traffic, and persisting it would put an fsync on every insert.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from trinity.engine import OverloadedError, SearchEngine
from trinity.index import FlatIndex

_NAMES = itertools.count(1)
_LOOKUP_K = 4  # a few candidates, so that expired-but-unswept entries cannot hide a live one


class CacheMetrics:
    """Counters shared by every cache of one server (labelled by cache name)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter("trinity_cache_lookups_total", "Cache lookups by result",
                               ["cache", "result"], registry=registry)
        self.inserts = Counter("trinity_cache_inserts_total", "Cache inserts", ["cache"], registry=registry)
        self.evictions = Counter("trinity_cache_evictions_total", "Cache evictions by reason (ttl, lru)",
                                 ["cache", "reason"], registry=registry)
        self.entries = Gauge("trinity_cache_entries", "Live cache entries", ["cache"], registry=registry)


@dataclass
class _Entry:
    key: str | None
    value: str  # compact JSON text
    created: float  # wall clock, for clients
    expires: float  # monotonic


@dataclass
class _Tenant:
    index: FlatIndex
    engine_name: str
    entries: OrderedDict[int, _Entry] = field(default_factory=OrderedDict)  # LRU first
    by_key: dict[str, int] = field(default_factory=dict)
    next_id: int = 0
    inflight: int = 0
    retired: bool = False


@dataclass(frozen=True)
class LookupResult:
    hit: bool
    similarity: float | None = None
    value: str | None = None  # compact JSON text
    key: str | None = None
    entry_id: int | None = None
    age_s: float | None = None


class SemanticCache:
    """One named cache.  ``insert``/``sweep``/``drop`` block (call them from threads);
    ``lookup`` is a coroutine (the search goes through the engine)."""

    def __init__(self, name: str, engine: SearchEngine, *, dim: int, kind: str = "answer", threshold: float = 0.9,
                 ttl_s: float = 3600.0, max_entries: int = 10_000, metric: str = "cosine", max_tenants: int = 4096,
                 metrics: CacheMetrics | None = None, clock=time.monotonic) -> None:
        if kind not in ("prompt", "answer"):
            raise ValueError("kind: expected 'prompt' or 'answer'")
        if ttl_s <= 0 or max_entries < 1 or max_tenants < 1:
            raise ValueError("ttl_s, max_entries and max_tenants must be positive")
        self.name, self.engine, self.dim, self.kind, self.metric = name, engine, dim, kind, metric
        self.threshold, self.ttl_s, self.max_entries, self.max_tenants = threshold, ttl_s, max_entries, max_tenants
        self.metrics = metrics or CacheMetrics(CollectorRegistry())
        self.clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._expiry: list[tuple[float, str, int]] = []  # heap; stale items are skipped
        self._lock = threading.Lock()  # guards entry maps and the expiry heap
        self.hits = self.misses = self.inserts = 0
        self.evictions = {"ttl": 0, "lru": 0}
        self.closed = False

    # ------------------------------------------------------------------ tenants
    def _tenant(self, tenant: str, create: bool) -> _Tenant | None:
        t = self._tenants.get(tenant)
        if t is None and create:
            if len(self._tenants) >= self.max_tenants:
                raise OverflowError(f"cache {self.name!r} already holds max_tenants={self.max_tenants} tenants")
            index = FlatIndex(self.dim, self.metric)
            t = _Tenant(index, f"__cache__/{self.name}/{tenant}#{next(_NAMES)}")
            self.engine.add_collection(t.engine_name, index)
            self._tenants[tenant] = t
        return t

    def _release(self, t: _Tenant) -> None:
        with self._lock:
            t.inflight -= 1
            drop = t.retired and t.inflight == 0
        if drop:
            self.engine.drop_collection(t.engine_name)

    # ------------------------------------------------------------------ lookup
    async def lookup(self, tenant: str, vector: np.ndarray, *, threshold: float | None = None,
                     stage: str = "prefill", deadline_ms: float | None = None) -> LookupResult:
        """Best live entry of ``tenant`` if its similarity reaches the threshold."""
        threshold = self.threshold if threshold is None else threshold
        with self._lock:
            t = None if self.closed else self._tenant(tenant, create=False)
            if t is None or not t.entries:
                return self._miss()
            t.inflight += 1
        try:
            res = await self.engine.search(t.engine_name, vector, min(_LOOKUP_K, len(t.entries)),
                                           stage=stage, deadline_ms=deadline_ms)
        finally:
            self._release(t)
        if res.status.value == "rejected" and res.message.startswith("overloaded"):
            raise OverloadedError(res.message)
        now = self.clock()
        best = None
        with self._lock:
            for vid, score in zip(res.ids.tolist(), res.scores.tolist()):
                entry = t.entries.get(vid)
                if entry is None or entry.expires <= now:
                    continue  # padding, removed meanwhile, or expired and not swept yet
                if score < threshold:
                    best = score  # best first: nothing further down can pass
                    break
                t.entries.move_to_end(vid)  # LRU: a hit makes the entry most recently used
                self.hits += 1
                self.metrics.lookups.labels(self.name, "hit").inc()
                return LookupResult(True, float(score), entry.value, entry.key, vid, time.time() - entry.created)
        miss = self._miss()
        return miss if best is None else LookupResult(False, float(best))

    def _miss(self) -> LookupResult:
        self.misses += 1
        self.metrics.lookups.labels(self.name, "miss").inc()
        return LookupResult(False)

    # ------------------------------------------------------------------ insert / evict
    def insert(self, tenant: str, vector: np.ndarray, value: str, *, key: str | None = None,
               ttl_s: float | None = None) -> int:
        """Store ``value`` under ``vector`` for ``tenant``; returns the entry id.

        The same ``key`` text inserted twice replaces the earlier entry.
        """
        vec = np.asarray(vector, dtype=np.float32).reshape(1, self.dim)
        with self._lock:
            if self.closed:
                raise KeyError(self.name)
            t = self._tenant(tenant, create=True)
        # NOTE: lock order is index.write_lock -> self._lock everywhere: the engine holds
        # write_lock while scanning, and the event loop (lookups) only ever takes _lock,
        # so it never waits behind a scan.
        with t.index.write_lock, self._lock:
            if t.retired:
                raise KeyError(tenant)  # dropped concurrently
            old = t.by_key.get(key) if key is not None else None
            if old is not None:
                self._remove(t, old)
            while len(t.entries) >= self.max_entries:
                self._remove(t, next(iter(t.entries)))
                self._evicted("lru")
            vid = t.next_id
            t.next_id += 1
            t.index.add(vec, np.array([vid], dtype=np.int64))
            expires = self.clock() + (self.ttl_s if ttl_s is None else ttl_s)
            t.entries[vid] = _Entry(key, value, time.time(), expires)
            if key is not None:
                t.by_key[key] = vid
            heapq.heappush(self._expiry, (expires, tenant, vid))
            self.inserts += 1
            self.metrics.inserts.labels(self.name).inc()
            self.metrics.entries.labels(self.name).inc()
            return vid

    def _remove(self, t: _Tenant, vid: int) -> None:
        entry = t.entries.pop(vid, None)
        if entry is None:
            return
        if entry.key is not None and t.by_key.get(entry.key) == vid:
            del t.by_key[entry.key]
        t.index.remove([vid])
        self.metrics.entries.labels(self.name).dec()

    def _evicted(self, reason: str) -> None:
        self.evictions[reason] += 1
        self.metrics.evictions.labels(self.name, reason).inc()

    def sweep(self) -> int:
        """Remove every expired entry; returns how many."""
        now = self.clock()
        with self._lock:
            due: list[tuple[float, str, int]] = []
            while self._expiry and self._expiry[0][0] <= now:
                due.append(heapq.heappop(self._expiry))
        by_tenant: dict[str, list[tuple[float, int]]] = {}
        for expires, tenant, vid in due:
            by_tenant.setdefault(tenant, []).append((expires, vid))
        removed = 0
        for tenant, items in by_tenant.items():
            t = self._tenants.get(tenant)
            if t is None:
                continue
            with t.index.write_lock, self._lock:
                for expires, vid in items:
                    entry = t.entries.get(vid)
                    if entry is None or entry.expires != expires:
                        continue  # already gone (LRU, replaced, tenant dropped)
                    self._remove(t, vid)
                    self._evicted("ttl")
                    removed += 1
        return removed

    # ------------------------------------------------------------------ admin
    def drop_tenant(self, tenant: str) -> int:
        """Forget every entry of ``tenant``; returns how many there were."""
        with self._lock:
            t = self._tenants.pop(tenant, None)
            if t is None:
                return 0
            n = len(t.entries)
            self.metrics.entries.labels(self.name).dec(n)
            t.retired = True
            drop = t.inflight == 0
        if drop:
            self.engine.drop_collection(t.engine_name)
        return n

    def close(self) -> None:
        """Drop every tenant (the cache is being deleted)."""
        with self._lock:
            self.closed = True
            tenants = list(self._tenants)
        for tenant in tenants:
            self.drop_tenant(tenant)
        self.metrics.entries.labels(self.name).set(0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            entries = sum(len(t.entries) for t in self._tenants.values())
            memory = sum(t.index.memory_bytes()["total"] + sum(len(e.value) + len(e.key or "") for e in
                         t.entries.values()) for t in self._tenants.values())
            return {"tenants": len(self._tenants), "entries": entries, "hits": self.hits, "misses": self.misses,
                    "inserts": self.inserts, "evictions": dict(self.evictions), "memory_bytes": memory}
