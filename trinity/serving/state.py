"""Process-wide state of one pool server: engine, catalog, caches, embedder, executors.

Handlers run on the event loop and must never block it: anything that takes an index's
``write_lock`` (which the engine holds while scanning), fsyncs, or embeds text goes to
an executor.  Embedding has its own single thread (the model is loaded lazily, once, on
first use; the tokenizer is not thread-safe anyway); store work has a larger pool so
that concurrent writers can share fsyncs (group commit).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import numpy as np
from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from trinity.cache.semantic import CacheMetrics, SemanticCache
from trinity.engine import SchedulerConfig, SearchEngine
from trinity.index import FlatIndex, IVFIndex
from trinity.serving.catalog import Catalog
from trinity.serving.config import ServerConfig
from trinity.serving.errors import Overloaded
from trinity.serving.memory import trim_heap
from trinity.serving.spec import CacheSpec, InvalidRequest, NotFound

T = TypeVar("T")
_HTTP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _StoreCollector:
    """Scrape-time gauges/counters read from the collections (no bookkeeping on writes)."""

    def __init__(self, state: PoolState) -> None:
        self.state = state

    def describe(self):  # NOTE: empty: prometheus_client must not call collect() at registration
        return []

    def collect(self):
        vectors = GaugeMetricFamily("trinity_collection_vectors", "Vectors per collection", labels=["collection"])
        payload = GaugeMetricFamily("trinity_collection_payload_bytes", "Payload JSON bytes", labels=["collection"])
        fsyncs = CounterMetricFamily("trinity_wal_fsyncs", "WAL fsyncs (group commits)", labels=["collection"])
        records = CounterMetricFamily("trinity_wal_synced_records", "WAL records made durable", labels=["collection"])
        for name, coll in list(self.state.catalog.collections.items()):
            vectors.add_metric([name], coll.index.ntotal)
            payload.add_metric([name], coll.payload_bytes)
            fsyncs.add_metric([name], coll.wal.num_fsyncs)
            records.add_metric([name], coll.wal.num_synced_records)
        yield from (vectors, payload, fsyncs, records)


class PoolState:
    """Everything the handlers share; built by ``create_app``, opened in its lifespan."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine = SearchEngine(SchedulerConfig(max_num_waiting=config.max_queue,
                                                   default_deadline_ms=config.default_deadline_ms,
                                                   admission_share=config.admission_share), start=False)
        self.registry = self.engine.metrics.registry
        self.catalog = Catalog(config.data_dir, self.engine, fsync=config.fsync, snapshot_every=config.snapshot_every,
                               snapshot_wal_bytes=config.snapshot_wal_bytes)
        self.caches: dict[str, SemanticCache] = {}
        self.cache_metrics = CacheMetrics(self.registry)
        self.io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="trinity-io")
        self.embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trinity-embed")
        self._embedder = None
        self._embedder_lock = threading.Lock()
        self.inflight = 0
        self.started = time.time()
        self.http_requests = Counter("trinity_http_requests_total", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=self.registry)
        self.http_latency = Histogram("trinity_http_request_seconds", "HTTP handling time by route",
                                      ["method", "route"], buckets=_HTTP_BUCKETS, registry=self.registry)
        self.http_disconnects = Counter("trinity_http_disconnects_total", "Requests whose client left before the "
                                        "answer (their searches are aborted)", registry=self.registry)
        self.registry.register(_StoreCollector(self))

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        self.engine.start()
        self._warm_up()
        self.catalog.open()
        for name, spec in self.catalog.cache_specs.items():
            self.caches[name] = self.new_cache(spec)

    def _warm_up(self) -> None:
        """Run one flat and one IVF search through the engine so that the first client
        request does not pay for loading the compiled scan kernels (~1 s)."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 8)).astype(np.float32)
        flat, ivf = FlatIndex(8), IVFIndex(8, 2)
        flat.add(x, np.arange(64))
        ivf.train(x)
        ivf.add(x, np.arange(64))
        for name, index in (("__warmup_flat", flat), ("__warmup_ivf", ivf)):
            self.engine.add_collection(name, index)
            try:
                self.engine.search_sync(name, x[0], 4)
            finally:
                self.engine.drop_collection(name)

    def new_cache(self, spec: CacheSpec) -> SemanticCache:
        cache = SemanticCache(spec.name, self.engine, dim=spec.dim, kind=spec.kind, threshold=spec.threshold,
                              ttl_s=spec.ttl_s, max_entries=spec.max_entries, metric=spec.metric,
                              metrics=self.cache_metrics)
        cache.spec = spec  # the wire-level definition (embedder, ...) travels with the cache
        return cache

    def close(self) -> None:
        """Snapshot everything, then stop the engine and the executors."""
        self.catalog.close()
        self.engine.shutdown(drain=True, timeout_s=5.0)
        self.io.shutdown(wait=True)
        self.embed_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ helpers
    async def run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    def cache(self, name: str) -> SemanticCache:
        cache = self.caches.get(name)
        if cache is None:
            raise NotFound("name", f"unknown cache {name!r}")
        return cache

    @property
    def embedder_loaded(self) -> bool:
        return self._embedder is not None and self._embedder._model is not None

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._embedder_lock:
            if self._embedder is None:
                from trinity.data.embed import Embedder  # NOTE: lazy: sentence-transformers is heavy

                embedder = Embedder(device=self.config.embed_device)
                out = embedder.encode(texts, batch_size=64)  # loads the model
                trim_heap()  # NOTE: loading the weights leaves freed copies behind
                self._embedder = embedder
                return out
        return self._embedder.encode(texts, batch_size=64)

    async def embed(self, texts: list[str], embedder: str | None, field: str) -> np.ndarray:
        """Embed ``texts`` off the event loop with the named embedder."""
        if embedder is None:
            raise InvalidRequest(field, "this collection has no embedder; send vectors instead of texts")
        return await asyncio.get_running_loop().run_in_executor(self.embed_pool, self._encode, texts)

    # ------------------------------------------------------------------ admission
    def admit(self) -> None:
        """Count one search in flight at the HTTP layer, or answer 429."""
        if self.inflight >= self.config.max_inflight:
            raise Overloaded(f"overloaded: {self.inflight} searches in flight (max_inflight="
                             f"{self.config.max_inflight})", self.config.retry_after_s)
        self.inflight += 1

    def done(self) -> None:
        self.inflight -= 1


def as_vectors(rows: list[list[float]], dim: int, field: str, single: bool = False) -> np.ndarray:
    """Rows as a float32 ``(n, dim)`` array; the error names the first bad row
    (``field.i``, or just ``field`` for a ``single`` vector)."""
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise InvalidRequest(field if single else f"{field}.{i}",
                                 f"wrong dimension {len(row)}, the dimension is {dim}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.asarray(rows, dtype=np.float32)
    return check_finite(arr, field, single)


def check_finite(arr: np.ndarray, field: str, single: bool = False) -> np.ndarray:
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
        raise InvalidRequest(field if single else f"{field}.{bad}",
                             "values must be finite float32 numbers (no NaN, inf or |x| > 3.4e38)")
    return arr


def when_all_done(futures: list[Future], callback: Callable[[], None]) -> None:
    """Call ``callback`` once every future is done (immediately if there are none)."""
    remaining = [len(futures)]
    lock = threading.Lock()

    def _one(_f: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            callback()

    if not futures:
        callback()
    for f in futures:
        f.add_done_callback(_one)
