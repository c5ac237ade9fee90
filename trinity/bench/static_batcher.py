"""The static-batching peer: a dynamic batcher over a batch-search index.

The index is a faiss IVF index on the CPU (:func:`faiss_ivf_like`) or, on a GPU, Trinity's
own IVF index scanned by the torch gather + bmm + topk path (:func:`torch_ivf_like`).
This is how a retrieval service over a batch-search library (faiss, cuVS) is usually
built: requests wait in a queue per *search signature* -- the library takes one ``k``
and one ``nprobe`` per call, so requests with different ``(k, nprobe)`` cannot share a
batch -- and a group is dispatched when it holds ``max_batch`` requests or its oldest
request has waited ``max_wait_ms``.  One executor thread runs the searches (faiss
releases the GIL and parallelises a batch over its OpenMP threads), ready groups in
order of readiness.  It knows nothing of stages or deadlines: a request simply waits
for its group and its turn.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchStats", "StaticBatcher", "batch_searcher", "faiss_ivf_like", "torch_ivf_like"]


@dataclass
class _Group:
    items: deque = field(default_factory=deque)  # (query, callback-or-future, enqueue time)
    full_since: float | None = None  # when it reached max_batch


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    busy_s: float = 0.0  # time inside index.search

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


Searcher = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def batch_searcher(index) -> tuple[int, Searcher]:
    """``(dim, search(queries, k, nprobe) -> (D, I))`` for a faiss index (IVF indexes get
    ``SearchParametersIVF(nprobe=...)`` per call) or a Trinity index."""
    if not hasattr(index, "d"):
        if getattr(index, "kind", "") == "graph":  # nprobe names the itopk, as in the engine
            from trinity.engine.graph_rows import graph_itopk, hop_limit

            def graph_search(q, k, nprobe):
                itopk = graph_itopk(nprobe, k)
                return index.search(q, k, itopk=itopk, max_hops=int(hop_limit(itopk)))
            return int(index.dim), graph_search
        if hasattr(index, "nlist"):
            return int(index.dim), lambda q, k, nprobe: index.search(q, k, nprobe=nprobe)
        return int(index.dim), lambda q, k, nprobe: index.search(q, k)
    import faiss  # local: only the CPU peer needs faiss

    params: dict[int, object] = {}

    def search(q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        p = params.get(nprobe)
        if p is None and hasattr(index, "nprobe"):
            p = params[nprobe] = faiss.SearchParametersIVF(nprobe=nprobe)
        return index.search(q, k, params=p)

    return int(index.d), search


class StaticBatcher:
    """Dynamic batcher over a batch-search index with one queue per ``(k, nprobe)``.

    Args:
        index: a faiss index or a Trinity index (see :func:`batch_searcher`).
        max_batch: a group is dispatched as soon as it holds this many requests.
        max_wait_ms: ... or as soon as its oldest request has waited this long.
        clock: monotonic clock (seconds).

    ``submit`` returns a :class:`Future` resolving to ``(scores, ids)`` rows of shape
    ``(k,)``; ``submit_cb`` calls ``callback(scores, ids)`` from the executor thread
    instead (cheaper, used by the benchmark).
    """

    def __init__(self, index, max_batch: int = 64, max_wait_ms: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, start: bool = True) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.index = index
        self.dim, self._search = batch_searcher(index)
        self.max_batch = int(max_batch)
        self.max_wait_s = max_wait_ms / 1e3
        self.clock = clock
        self.stats = BatchStats()
        self._groups: dict[tuple[int, int], _Group] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # ------------------------------------------------------------------ submission
    def submit(self, query, k: int, nprobe: int) -> Future:
        fut: Future = Future()
        self._enqueue(query, int(k), int(nprobe), fut)
        return fut

    def submit_cb(self, query, k: int, nprobe: int, callback: Callable[[np.ndarray, np.ndarray], None]) -> None:
        self._enqueue(query, int(k), int(nprobe), callback)

    def _enqueue(self, query, k: int, nprobe: int, sink) -> None:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query: expected dim {self.dim}, got {q.shape[0]}")
        if k < 1 or nprobe < 1:
            raise ValueError("k and nprobe must be >= 1")
        now = self.clock()
        with self._cv:
            if self._stop:
                raise RuntimeError("batcher is shut down")
            g = self._groups.get((k, nprobe))
            if g is None:
                g = self._groups[(k, nprobe)] = _Group()
            g.items.append((q, sink, now))
            n = len(g.items)
            if n >= self.max_batch and g.full_since is None:
                g.full_since = now
            # Wake the executor when its next deadline may have moved: a new group timer or a full group.
            if n == 1 or n == self.max_batch:
                self._cv.notify()

    @property
    def pending(self) -> int:
        with self._cv:
            return sum(len(g.items) for g in self._groups.values())

    # ------------------------------------------------------------------ executor
    def _ready_at(self, g: _Group) -> float:
        ready = g.items[0][2] + self.max_wait_s
        return min(ready, g.full_since) if g.full_since is not None else ready

    def _next_batch(self) -> tuple[tuple[int, int], list] | None:
        """Under the lock: wait for the earliest-ready group and take up to max_batch from it."""
        while not self._stop:
            best, best_at = None, None
            for key, g in self._groups.items():
                if g.items:
                    at = self._ready_at(g)
                    if best_at is None or at < best_at:
                        best, best_at = key, at
            if best is None:
                self._cv.wait(0.05)
                continue
            now = self.clock()
            if best_at > now:
                self._cv.wait(best_at - now)
                continue
            g = self._groups[best]
            batch = [g.items.popleft() for _ in range(min(self.max_batch, len(g.items)))]
            g.full_since = now if len(g.items) >= self.max_batch else None
            return best, batch
        return None

    def _loop(self) -> None:
        while True:
            with self._cv:
                nxt = self._next_batch()
            if nxt is None:
                return
            (k, nprobe), batch = nxt
            self.run_batch(k, nprobe, batch)

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """One index call for a group (what a dispatched batch runs)."""
        return self._search(queries, k, nprobe)

    def run_batch(self, k: int, nprobe: int, batch: list) -> None:
        queries = np.stack([item[0] for item in batch])
        t = time.perf_counter()
        try:
            D, I = self.search(queries, k, nprobe)
        except Exception as e:  # noqa: BLE001 - delivered to every caller of the batch
            for _, sink, _ in batch:
                if isinstance(sink, Future):
                    sink.set_exception(e)
                else:
                    sink(None, None)
            return
        self.stats.busy_s += time.perf_counter() - t
        self.stats.batches += 1
        self.stats.requests += len(batch)
        for j, (_, sink, _) in enumerate(batch):
            if isinstance(sink, Future):
                sink.set_result((D[j], I[j]))
            else:
                sink(D[j], I[j])

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="static-batcher", daemon=True)
            self._thread.start()

    def cancel_pending(self) -> int:
        """Drop every queued request (their futures are cancelled); return how many."""
        with self._cv:
            dropped = [item for g in self._groups.values() for item in g.items]
            self._groups.clear()
        for _, sink, _ in dropped:
            if isinstance(sink, Future):
                sink.cancel()
        return len(dropped)

    def shutdown(self, cancel: bool = True) -> None:
        if cancel:
            self.cancel_pending()
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None

    def __enter__(self) -> StaticBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def faiss_ivf_like(ivf, vectors: np.ndarray):
    """A faiss ``IndexIVFFlat`` with the *same* coarse quantizer as Trinity's ``ivf``
    (centroids copied, no training), filled with ``vectors`` -- so at equal ``nprobe`` both
    probe the same lists and return the same ids.  Inner product and L2 are supported."""
    import faiss

    metric = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT,
              "l2": faiss.METRIC_L2}[ivf.metric.name]
    centroids = np.ascontiguousarray(ivf.centroids.cpu().numpy(), dtype=np.float32)
    quantizer = faiss.IndexFlatIP(ivf.dim) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(ivf.dim)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, ivf.dim, ivf.nlist, metric)  # the wrapper keeps quantizer alive
    index.is_trained = True
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if ivf.metric.normalizes:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index.add(x)
    return index


def torch_ivf_like(ivf):
    """Trinity's ``ivf`` scanned by the torch path (gather the probed blocks, ``bmm``,
    ``torch.topk``): the batch-search baseline on a GPU.  A shallow copy, so it shares the
    lists, quantizer and ids with ``ivf`` and returns the same ids at equal ``nprobe``."""
    peer = copy.copy(ivf)
    peer.scan_backend = "torch"
    return peer
