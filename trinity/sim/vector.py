"""The simulated vector engine's seam: an index shell, its collections and a cost-model runner.

The real :class:`~trinity.engine.SearchEngine` and its scheduler plan every iteration; the
:class:`CostRunner` executes a plan on list sizes alone (no vectors): it assigns probes,
counts the (query, vector) pairs and distinct vectors each plan scans, reports exactly what
the real runner reports, and advances a virtual clock by the profile's cost model.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from trinity.engine import CollectionStats, Collections, IterationPlan, RunnerOutput, UnknownCollectionError
from trinity.engine.runner import ride_volume
from trinity.sim.profiles import SearchCost

COLLECTION = "corpus"
Assign = Callable[[str, int], np.ndarray]  # (request id, nprobe) -> probed list ids, best first


class ShellIndex:
    """An IVF index's shape without its vectors: list sizes, dim, default nprobe."""

    def __init__(self, list_len: np.ndarray, dim: int = 8, nprobe: int = 32, kind: str = "ivf") -> None:
        self.kind, self.list_len = kind, np.asarray(list_len, dtype=np.int64)
        self.nlist, self.dim, self.nprobe = int(self.list_len.size), dim, nprobe
        self.lists = SimpleNamespace(list_len=self.list_len, version=0)
        self.metric = SimpleNamespace(sentinel=float("-inf"))

    @classmethod
    def synthetic(cls, num_vectors: int, nlist: int, seed: int = 0, cv: float = 0.7, nprobe: int = 32) -> ShellIndex:
        """Lognormal list sizes (k-means lists are uneven) summing to ``num_vectors``."""
        rng = np.random.default_rng([seed, nlist])
        sigma = np.sqrt(np.log1p(cv * cv))
        w = rng.lognormal(-sigma * sigma / 2, sigma, nlist)
        sizes = np.floor(w / w.sum() * num_vectors).astype(np.int64)
        sizes[: num_vectors - int(sizes.sum())] += 1
        return cls(sizes, nprobe=nprobe)

    @classmethod
    def flat(cls, num_vectors: int, chunk: int = 16_384) -> ShellIndex:
        """A flat index: its chunks play the lists (the engine's circular flat scan)."""
        sizes = np.full(-(-num_vectors // chunk), chunk, dtype=np.int64)
        sizes[-1] = num_vectors - chunk * (sizes.size - 1)
        return cls(sizes, nprobe=0, kind="flat")


class SimCollections(Collections):
    """:class:`~trinity.engine.Collections` that also serves :class:`ShellIndex` es, whose
    probes come from ``assign`` (by request id) instead of a coarse quantizer."""

    index_types = (*Collections.index_types, ShellIndex)

    def __init__(self, assign: Assign | None = None) -> None:
        super().__init__()
        self._assign = assign

    def describe(self, index) -> CollectionStats:
        if not isinstance(index, ShellIndex):
            return super().describe(index)
        return CollectionStats(index.kind, index.nlist, index.nprobe, index.list_len.copy())

    def assign(self, name: str, queries: np.ndarray, nprobes: np.ndarray, request_ids: list[str]) -> np.ndarray:
        index = self.get(name)
        if not isinstance(index, ShellIndex):
            return super().assign(name, queries, nprobes, request_ids)
        if index.kind == "flat":
            return np.broadcast_to(np.arange(index.nlist, dtype=np.int64), (len(request_ids), index.nlist))
        out = np.full((len(request_ids), int(nprobes.max())), -1, dtype=np.int64)
        for row, (rid, n) in enumerate(zip(request_ids, nprobes.tolist())):
            lists = np.asarray(self._assign(rid, n), dtype=np.int64)
            out[row, :lists.size] = lists
        return out


def size_biased_assign(list_len: np.ndarray, seed: int) -> Assign:
    """Probes drawn without replacement, populous lists more often (queries follow the data)."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(list_len.astype(np.float64))
    cdf /= cdf[-1]

    def assign(request_id: str, nprobe: int) -> np.ndarray:
        nprobe = min(nprobe, list_len.size)
        picked = np.empty(0, dtype=np.int64)
        while picked.size < nprobe:
            draw = np.searchsorted(cdf, rng.random(2 * nprobe + 4), side="right")
            both = np.concatenate([picked, draw])
            _, first = np.unique(both, return_index=True)
            picked = both[np.sort(first)]
        return picked[:nprobe]

    return assign


class CostRunner:
    """Runs plans on list sizes; the clock (a one-element list) advances by the modelled time.

    ``stretch()`` scales the device part of an iteration (a co-located GPU shared with an
    LLM engine); ``device_s`` accumulates that device time.
    """

    def __init__(self, collections: Collections, cost: SearchCost, clock: list[float],
                 stretch: Callable[[], float] = lambda: 1.0) -> None:
        self.collections, self.cost, self.clock, self.stretch = collections, cost, clock, stretch
        self.ks: dict[str, int] = {}  # request id -> k, from joining to its result
        self.num_iterations, self.busy_s, self.device_s = 0, 0.0, 0.0
        self._empty: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        self.ks.clear()

    def _result(self, rid: str) -> tuple[np.ndarray, np.ndarray]:
        k = self.ks.pop(rid, 1)
        if k not in self._empty:
            self._empty[k] = (np.zeros(k, dtype=np.float32), np.full(k, -1, dtype=np.int64))
        return self._empty[k]

    def run(self, plan: IterationPlan) -> RunnerOutput:
        out = RunnerOutput()
        for r in plan.new_requests:
            if r.collection in self.collections:
                self.ks[r.request_id] = r.k
            else:
                out.errors[r.request_id] = f"unknown collection {r.collection!r}"
        for ride in plan.rides:
            try:
                list_len = self.collections.get(ride.collection).list_len
            except UnknownCollectionError as e:
                out.errors.update((rid, str(e)) for rid in ride.request_ids)
                out.vectors_scanned[ride.collection] = np.zeros(len(ride.request_ids), dtype=np.int64)
                continue
            scanned, num_read = ride_volume(ride.ptr, ride.unit_ids, list_len)
            out.vectors_scanned[ride.collection] = scanned
            out.vectors_read += int(num_read)
            for i in np.flatnonzero(ride.completes).tolist():
                out.results[ride.request_ids[i]] = self._result(ride.request_ids[i])
        for e in plan.finish_partial:
            out.results[e.request_id] = self._result(e.request_id)
        c, stretch = self.cost, self.stretch()
        device = c.device_seconds(out.num_vectors_scanned, out.vectors_read)
        out.duration_s = c.seconds(out.num_vectors_scanned, out.vectors_read, plan.num_items + len(plan.new_requests))
        out.duration_s += device * (stretch - 1.0) - c.fixed_s * plan.is_head  # the iteration's fixed cost, once
        self.clock[0] += out.duration_s
        self.num_iterations += not plan.is_head
        self.busy_s += out.duration_s
        self.device_s += device * stretch
        return out
