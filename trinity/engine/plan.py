"""The contract between scheduler and runner: one frozen plan per iteration.

The runner keeps per-request device state (prepared query, running top-k, IVF probes) in
a persistent batch; the plan tells it which requests join (with everything needed to
build that state), what each request scans now, and which requests leave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NewRequest:
    """A request joining the running batch."""

    request_id: str
    collection: str
    query: np.ndarray  # (dim,) float32, as submitted
    k: int
    slot: int  # its row in the runner's persistent batch of this collection
    itopk: int = 0  # graph collections: its itopk buffer (its hop limit follows from it and the width)
    search_width: int = 1  # graph collections: nodes a hop expands


@dataclass(frozen=True)
class Expiry:
    """A request whose deadline came: the runner returns its best-so-far top-k."""

    request_id: str
    collection: str
    slot: int


@dataclass(frozen=True)
class ScanWork:
    """One request's work in one plan: positions in its unit list (tests, digests)."""

    request_id: str
    collection: str
    units: tuple[int, ...] = ()
    returns_result: bool = False  # these are its last unseen units: its top-k comes back


@dataclass(frozen=True, eq=False)
class RideWork:
    """The IVF requests of one collection that scan this iteration's list window, as one
    CSR: rider ``i`` (``request_ids[i]``) scans positions ``units[ptr[i]:ptr[i + 1]]``
    (ascending) of its best-first probe list.  Each list is read once for all its riders."""

    collection: str
    request_ids: tuple[str, ...]  # riders with work, in priority order
    ptr: np.ndarray  # int64 (len(request_ids) + 1,)
    units: np.ndarray  # int64 positions, rider by rider
    unit_ids: np.ndarray  # int64 the list (IVF) or chunk (flat) id at each of those positions
    completes: np.ndarray  # bool per rider: these are its last unseen positions
    ranks: np.ndarray  # int64 per rider: its place in the iteration's priority order
    slots: np.ndarray  # int64 per rider: its slot, which is also its row in the runner's persistent batch

    def items(self) -> list[tuple[int, ScanWork]]:
        """``(rank, ScanWork)`` per rider: the same work, one item per request (tests, digests)."""
        units, bounds = self.units.tolist(), self.ptr.tolist()
        return [(rank, ScanWork(rid, self.collection, tuple(units[bounds[i]:bounds[i + 1]]), done))
                for i, (rid, done, rank) in enumerate(zip(self.request_ids, self.completes.tolist(),
                                                          self.ranks.tolist()))]

    def subset(self, keep: np.ndarray) -> RideWork:
        """The riders where ``keep`` holds."""
        counts = np.diff(self.ptr)
        ptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(counts[keep], out=ptr[1:])
        pairs = np.repeat(keep, counts)
        return RideWork(self.collection, tuple(r for r, k in zip(self.request_ids, keep.tolist()) if k), ptr,
                        self.units[pairs], self.unit_ids[pairs], self.completes[keep], self.ranks[keep],
                        self.slots[keep])


@dataclass(frozen=True)
class IterationPlan:
    iteration: int
    new_requests: tuple[NewRequest, ...] = ()  # join before anything scans
    finish_partial: tuple[Expiry, ...] = ()  # deadline reached: return best-so-far
    budget_vectors: int = 0
    planned_vectors: int = 0  # cost charged against the budget (pair vectors + weighted reads)
    forced: bool = False  # one list was planned past the budget (the progress guarantee)
    rides: tuple[RideWork, ...] = ()  # every request with work, one item per collection
    head: IterationPlan | None = None  # run and updated first: its results leave before this plan scans
    is_head: bool = False  # this is a head: its cost is observed with the rest of the iteration

    @property
    def is_empty(self) -> bool:
        return not (self.new_requests or self.rides or self.finish_partial)

    @property
    def parts(self) -> tuple[IterationPlan, ...]:
        """What the engine runs, in order: the head (if any), then this plan."""
        return (self,) if self.head is None else (self.head, self)

    @property
    def num_items(self) -> int:
        """Requests with work in this plan (each rider counts)."""
        return sum(len(r.request_ids) for r in self.rides)

    def items(self) -> list[ScanWork]:
        """The iteration's work (head first) as one :class:`ScanWork` per request and part,
        in priority order (tests, digests)."""
        ranked = [item for part in self.parts for ride in part.rides for item in ride.items()]
        return [w for _, w in sorted(ranked, key=lambda item: item[0])]


@dataclass
class RunnerOutput:
    """What the runner reports back after executing a plan."""

    results: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # id -> (scores, ids)
    vectors_scanned: dict[str, np.ndarray] = field(default_factory=dict)  # collection -> (query, vector) pairs per rider
    vectors_read: int = 0  # distinct vectors read (a list shared by several requests counts once)
    errors: dict[str, str] = field(default_factory=dict)  # id -> message (e.g. collection dropped)
    converged: dict[str, np.ndarray] = field(default_factory=dict)  # collection -> bool per rider: done before its last planned unit (graph)
    duration_s: float = 0.0

    @property
    def num_vectors_scanned(self) -> int:
        """(query, vector) pairs scanned by the whole plan."""
        return sum(int(v.sum()) for v in self.vectors_scanned.values())
