"""The contract between scheduler and runner: one frozen plan per iteration.

The runner keeps per-request device state (prepared query, running top-k, IVF probes)
keyed by request id; the plan tells it which requests join (with everything needed to
build that state), which units each request scans now, and which requests leave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NewRequest:
    """A request joining the running batch; the runner prepares and (IVF) assigns it."""

    request_id: str
    collection: str
    query: np.ndarray
    k: int
    num_probes: int  # IVF probes to assign (ignored for flat)


@dataclass(frozen=True)
class ScanWork:
    """Units one request scans this iteration.

    ``units`` are positions in the request's unit list: for IVF its best-first probe
    list, for flat the collection's chunks (position = chunk id).  They need not be
    contiguous: a joined IVF request scans every still-unseen probe whose list is in this
    iteration's window, so one read of a list serves every request probing it.

    An IVF *newcomer* (its probes are unknown until the runner assigns it) instead gets
    ``max_vectors``: scan the longest best-first prefix of its probes within that cap --
    ``0`` means join only (assign now, ride along from the next iteration).

    ``early`` work (a decode-level or tight-deadline newcomer) has its lists scanned first
    in the iteration, with every rider of those lists, and a result it completes is
    handed back before the rest of the scan (``SearchRunner.run``'s ``on_early``).
    """

    request_id: str
    collection: str
    units: tuple[int, ...] = ()
    max_vectors: int | None = None  # IVF newcomer: scan the longest best-first prefix within this cap
    allow_overshoot: bool = False  # newcomer: scan >= 1 unit even past the cap (progress guarantee)
    returns_result: bool = False  # return the top-k if this work completes the request
    early: bool = False  # its lists go first in the scan; its result leaves before the rest


@dataclass(frozen=True, eq=False)
class RideWork:
    """The joined requests of one IVF collection that ride this iteration's list window,
    as one CSR: rider ``i`` (``request_ids[i]``) scans the positions
    ``units[ptr[i]:ptr[i + 1]]`` (ascending) of its best-first probe list.

    NOTE: one item per collection, not a :class:`ScanWork` per rider: the riders'
    progress lives in arrays (:class:`~trinity.engine.progress.ProgressTable`), and
    planning, running and updating them stays a fixed number of array operations per
    collection and iteration, however many riders a loaded iteration carries.
    """

    collection: str
    request_ids: tuple[str, ...]  # riders with work, in priority order
    ptr: np.ndarray  # int64 (len(request_ids) + 1,)
    units: np.ndarray  # int64 positions, rider by rider
    completes: np.ndarray  # bool per rider: these are its last unseen positions
    ranks: np.ndarray  # int64 per rider: its place in the iteration's priority order

    def items(self) -> list[tuple[int, ScanWork]]:
        """``(rank, ScanWork)`` per rider: the same work, one item per request (tests, digests)."""
        units = self.units.tolist()
        bounds = self.ptr.tolist()
        return [(rank, ScanWork(rid, self.collection, tuple(units[bounds[i]:bounds[i + 1]]), returns_result=done))
                for i, (rid, done, rank) in enumerate(zip(self.request_ids, self.completes.tolist(),
                                                          self.ranks.tolist()))]

    def subset(self, keep: np.ndarray) -> RideWork:
        """The riders where ``keep`` holds."""
        counts = np.diff(self.ptr)
        ptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(counts[keep], out=ptr[1:])
        return RideWork(self.collection, tuple(r for r, k in zip(self.request_ids, keep.tolist()) if k), ptr,
                        self.units[np.repeat(keep, counts)], self.completes[keep], self.ranks[keep])


def prefix_end(unit_costs: np.ndarray, max_vectors: int, allow_overshoot: bool) -> int:
    """Units of a newcomer's capped best-first prefix: the longest one within
    ``max_vectors`` -- at least one unit with ``allow_overshoot``; none for ``0`` (join only)."""
    return int(prefix_ends(np.asarray(unit_costs)[None, :], np.array([len(unit_costs)]), np.array([max_vectors]),
                           np.array([allow_overshoot]))[0])


def prefix_ends(unit_costs: np.ndarray, num_units: np.ndarray, max_vectors: np.ndarray,
                allow_overshoot: np.ndarray) -> np.ndarray:
    """:func:`prefix_end` of many newcomers at once: row ``i`` of ``unit_costs`` holds the
    costs of its ``num_units[i]`` units (columns past them are ignored)."""
    valid = np.arange(unit_costs.shape[1])[None, :] < num_units[:, None]
    # NOTE: costs are >= 0, so the running sum is non-decreasing and the units whose sum
    # fits form a prefix: counting them is the searchsorted of the scalar form.
    fits = ((np.cumsum(unit_costs, axis=1) <= max_vectors[:, None]) & valid).sum(axis=1)
    ends = np.where(allow_overshoot, np.maximum(fits, 1), fits)
    return np.where(max_vectors == 0, 0, np.minimum(ends, num_units))


@dataclass(frozen=True)
class IterationPlan:
    iteration: int
    new_requests: tuple[NewRequest, ...] = ()
    work: tuple[ScanWork, ...] = ()  # newcomers and flat requests, in priority order
    finish_partial: tuple[str, ...] = ()  # deadline reached: return best-so-far, then free
    free: tuple[str, ...] = ()  # aborted / rejected: drop state, no result
    budget_vectors: int = 0
    planned_vectors: int = 0  # cost charged against the budget (pair vectors + weighted reads)
    forced: bool = False  # one unit was planned past the budget (the progress guarantee)
    rides: tuple[RideWork, ...] = ()  # joined IVF requests, one item per collection
    work_ranks: tuple[int, ...] = ()  # each ``work`` item's place in the priority order

    @property
    def is_empty(self) -> bool:
        return not (self.new_requests or self.work or self.rides or self.finish_partial or self.free)

    @property
    def num_items(self) -> int:
        """Requests with work this iteration (each rider counts)."""
        return len(self.work) + sum(len(r.request_ids) for r in self.rides)

    def items(self) -> list[ScanWork]:
        """Every request's work as one :class:`ScanWork` each, in priority order.

        NOTE: for tests and digests; the runner reads ``work`` and ``rides`` directly.
        """
        ranked = list(zip(self.work_ranks or range(len(self.work)), self.work))
        for ride in self.rides:
            ranked += ride.items()
        return [w for _, w in sorted(ranked, key=lambda item: item[0])]


@dataclass
class RunnerOutput:
    """What the runner reports back after executing a plan."""

    results: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # id -> (scores, ids)
    unit_costs: dict[str, np.ndarray] = field(default_factory=dict)  # new IVF requests: list sizes of probes
    unit_ids: dict[str, np.ndarray] = field(default_factory=dict)  # new IVF requests: probed list ids, best first
    units_end: dict[str, int] = field(default_factory=dict)  # IVF newcomers: probes scanned (a prefix)
    vectors_scanned: dict[str, int] = field(default_factory=dict)  # per request of ``work`` (query x vector pairs)
    ride_vectors_scanned: dict[str, np.ndarray] = field(default_factory=dict)  # collection -> per rider
    vectors_read: int = 0  # distinct vectors read (a list shared by several requests counts once)
    errors: dict[str, str] = field(default_factory=dict)  # id -> message (e.g. collection dropped)
    duration_s: float = 0.0

    @property
    def num_vectors_scanned(self) -> int:
        """(query, vector) pairs scanned by the whole iteration."""
        return sum(self.vectors_scanned.values()) + sum(int(v.sum()) for v in self.ride_vectors_scanned.values())
