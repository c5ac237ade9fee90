"""Process-wide state of one pool server: engine, catalog, caches, embedder, executors.

Handlers never block the event loop: work that takes an index's ``write_lock``, fsyncs or
embeds text runs in an executor (one thread for the embedder, a larger pool for the store so
that concurrent writers share fsyncs).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import numpy as np

from trinity.cache.semantic import CacheMetrics, SemanticCache
from trinity.engine import SearchEngine, freeze_heap
from trinity.errors import ErrorCode, InvalidArgument, NotFound, Overloaded
from trinity.index import FlatIndex, IVFIndex
from trinity.pool.config import PoolConfig
from trinity.pool.memory import trim_heap
from trinity.pool.metrics import HttpMetrics, StoreCollector
from trinity.pool.storage.catalog import Catalog
from trinity.pool.storage.spec import CacheSpec

__all__ = ["PoolState"]

T = TypeVar("T")


class PoolState:
    """Everything the handlers share; built by ``create_app``, opened in its lifespan."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.engine = SearchEngine(config.scheduler, start=False)
        self.registry = self.engine.metrics.registry
        self.catalog = Catalog(config.data_dir, self.engine, fsync=config.fsync, snapshot_every=config.snapshot_every,
                               snapshot_wal_bytes=config.snapshot_wal_bytes)
        self.caches: dict[str, SemanticCache] = {}
        self.cache_metrics = CacheMetrics(self.registry)
        self.http = HttpMetrics(self.registry)
        self.registry.register(StoreCollector(lambda: self.catalog.collections))
        self.io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="trinity-io")
        self.embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trinity-embed")
        self._embedder = None
        self._embedder_lock = threading.Lock()
        self.inflight = 0
        self.started = time.time()

    def open(self) -> None:
        self.engine.start()
        self._warm_up()
        self.catalog.open()
        for name, spec in self.catalog.cache_specs.items():
            self.caches[name] = self.new_cache(spec)
        freeze_heap()  # the loaded collections too: no full collection walks them while serving

    def _warm_up(self) -> None:
        """One flat and one IVF search, so that no client request pays for loading the scan kernels."""
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
        cache.spec = spec  # NOTE: the wire-level definition (embedder, ...) travels with the cache
        return cache

    def close(self) -> None:
        """Snapshot everything, then stop the engine and the executors."""
        self.catalog.close()
        self.engine.shutdown(drain=True, timeout_s=5.0)
        self.io.shutdown(wait=True)
        self.embed_pool.shutdown(wait=False, cancel_futures=True)

    async def run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    def cache(self, name: str) -> SemanticCache:
        cache = self.caches.get(name)
        if cache is None:
            raise NotFound(f"unknown cache {name!r}", "name", code=ErrorCode.UNKNOWN_CACHE)
        return cache

    @property
    def embedder_loaded(self) -> bool:
        return self._embedder is not None and self._embedder._model is not None

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._embedder_lock:
            if self._embedder is None:
                from trinity.data.embed import Embedder  # NOTE: lazy: sentence-transformers is heavy

                embedder = Embedder(device=self.config.embed_device)
                out = embedder.encode(texts, batch_size=64)
                trim_heap()  # NOTE: loading the weights leaves freed copies behind
                self._embedder = embedder
                return out
        return self._embedder.encode(texts, batch_size=64)

    async def embed(self, texts: list[str], embedder: str | None, field: str) -> np.ndarray:
        """Embed ``texts`` off the event loop with the named embedder."""
        if embedder is None:
            raise InvalidArgument("this collection has no embedder; send vectors instead of texts", field)
        return await asyncio.get_running_loop().run_in_executor(self.embed_pool, self._encode, texts)

    def admit(self) -> None:
        """Count one search in flight at the HTTP layer, or refuse it (429)."""
        if self.inflight >= self.config.max_inflight:
            raise Overloaded(f"overloaded: {self.inflight} searches in flight (max_inflight="
                             f"{self.config.max_inflight})")
        self.inflight += 1

    def done(self) -> None:
        self.inflight -= 1
