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
from trinity.engine.plan import prefix_end
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
    """:class:`~trinity.engine.Collections` that also serves :class:`ShellIndex` es.

    NOTE: the engine's registry accepts only real indexes; the simulator registers shells
    through this subclass instead of changing the engine.
    """

    def add(self, name: str, index) -> None:
        if not isinstance(index, ShellIndex):
            return super().add(name, index)
        with self._lock:
            self._indexes[name] = index
            self._generation[name] = self._generation.get(name, 0) + 1

    def stats(self, name: str) -> CollectionStats:
        index = self.get(name)
        if not isinstance(index, ShellIndex):
            return super().stats(name)
        cached = self._stats.get(name)
        if cached is None:
            sizes = index.list_len.astype(np.float64)
            unit_sizes = index.list_len.copy()
            unit_sizes.setflags(write=False)
            if index.kind == "flat":
                stats = CollectionStats("flat", index.nlist, 0, float(sizes.max()), int(sizes.max()))
            else:
                stats = CollectionStats("ivf", index.nlist, index.nprobe, max(float((sizes * sizes).sum() / sizes.sum()),
                                        1.0), int(sizes.max()), unit_sizes)
            cached = self._stats[name] = (0, stats)
        return cached[1]


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

    def __init__(self, collections: Collections, cost: SearchCost, clock: list[float], assign: Assign,
                 stretch: Callable[[], float] = lambda: 1.0) -> None:
        self.collections, self.cost, self.clock, self.assign, self.stretch = collections, cost, clock, assign, stretch
        self.probes: dict[str, tuple[np.ndarray, int]] = {}  # request id -> (probed lists, k)
        self.num_iterations, self.busy_s, self.device_s = 0, 0.0, 0.0
        self._empty: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        self.probes.clear()

    def _result(self, rid: str) -> tuple[np.ndarray, np.ndarray]:
        k = self.probes.pop(rid)[1]
        if k not in self._empty:
            self._empty[k] = (np.zeros(k, dtype=np.float32), np.full(k, -1, dtype=np.int64))
        return self._empty[k]

    def run(self, plan: IterationPlan, on_early=None) -> RunnerOutput:
        out = RunnerOutput()
        for rid in plan.free:
            self.probes.pop(rid, None)
        list_len = self._join(plan, out)
        read: list[np.ndarray] = []
        early_lists: list[np.ndarray] = []
        early_pairs, done = 0, []
        for w in plan.work:
            if w.request_id not in self.probes:
                out.errors[w.request_id] = "runner holds no state for this request"
                continue
            lists = self.probes[w.request_id][0]
            if w.max_vectors is None:
                lists = lists[list(w.units)]
                if w.returns_result:
                    done.append(w.request_id)
            else:
                end = prefix_end(list_len[lists], w.max_vectors, w.allow_overshoot)
                out.units_end[w.request_id] = end
                lists = lists[:end]
                if w.returns_result and end == len(self.probes[w.request_id][0]):
                    done.append(w.request_id)
                    if w.early:
                        early_lists.append(lists)
                        early_pairs += int(list_len[lists].sum())
            out.vectors_scanned[w.request_id] = int(list_len[lists].sum())
            read.append(lists)
        for ride in plan.rides:
            lists = np.concatenate([self.probes[rid][0] for rid in ride.request_ids])
            offsets = np.repeat(np.cumsum([0] + [len(self.probes[r][0]) for r in ride.request_ids[:-1]]),
                                np.diff(ride.ptr))
            scanned = lists[offsets + ride.units]
            out.ride_vectors_scanned[ride.collection] = np.add.reduceat(
                np.r_[list_len[scanned], 0], ride.ptr[:-1]) * (np.diff(ride.ptr) > 0)
            read.append(scanned)
            done += [rid for rid, last in zip(ride.request_ids, ride.completes.tolist()) if last]
        if read:
            distinct = np.zeros(list_len.size, dtype=bool)
            distinct[np.concatenate(read)] = True
            out.vectors_read = int(list_len[distinct].sum())
        self._advance(plan, out, done, early_lists, early_pairs, on_early)
        for rid in plan.finish_partial:
            if rid in self.probes:
                out.results[rid] = self._result(rid)
        return out

    def _join(self, plan: IterationPlan, out: RunnerOutput) -> np.ndarray:
        list_len = None
        for r in plan.new_requests:
            try:
                index = self.collections.get(r.collection)
            except UnknownCollectionError as e:
                out.errors[r.request_id] = str(e)
                continue
            list_len = index.list_len
            if index.kind == "flat":  # NOTE: units are chunk ids; nothing to assign
                self.probes[r.request_id] = (np.arange(index.nlist), r.k)
                continue
            lists = np.asarray(self.assign(r.request_id, r.num_probes), dtype=np.int64)
            self.probes[r.request_id] = (lists, r.k)
            out.unit_ids[r.request_id] = lists
            out.unit_costs[r.request_id] = list_len[lists]
        return list_len if list_len is not None else self.collections.get(COLLECTION).list_len

    def _advance(self, plan: IterationPlan, out: RunnerOutput, done: list[str], early_lists: list[np.ndarray],
                 early_pairs: int, on_early) -> None:
        c, stretch = self.cost, self.stretch()
        items = plan.num_items + len(plan.new_requests)
        device = c.device_seconds(out.num_vectors_scanned, out.vectors_read)
        out.duration_s = c.seconds(out.num_vectors_scanned, out.vectors_read, items)
        if stretch != 1.0:
            out.duration_s += device * (stretch - 1.0)
        start = self.clock[0]
        if on_early is not None and early_lists and len(early_lists) < items:
            lists = np.unique(np.concatenate(early_lists))
            reads = int(self.collections.get(COLLECTION).list_len[lists].sum())
            self.clock[0] = start + c.fixed_s + items * c.per_item_s + c.device_seconds(early_pairs, reads) * stretch
            early = {rid: self._result(rid) for rid in done if rid in self.probes and plan_is_early(plan, rid)}
            out.results.update(early)
            on_early(early)
        for rid in done:
            if rid not in out.results:
                out.results[rid] = self._result(rid)
        self.clock[0] = start + out.duration_s
        self.num_iterations += 1
        self.busy_s += out.duration_s
        self.device_s += device * stretch


def plan_is_early(plan: IterationPlan, rid: str) -> bool:
    return any(w.request_id == rid and w.early for w in plan.work)
