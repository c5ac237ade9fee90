"""Shared scans: which IVF lists / flat chunks one iteration reads, and who rides along.

Per-request cursors alone share little: two requests scan the same list in the same
iteration only when both happen to be at it, so a loaded engine reads popular lists again
and again -- and at 200k x 384 the reads, not the arithmetic, bound the scan.  Instead,
each iteration builds a *window* of lists per IVF collection, and every joined request
that still needs a list in the window *rides along* and scans it in the same iteration;
the runner's list-major kernel reads each list once for all its riders.

Lists enter the window two ways:

* *claims*, in priority order (stage, then earliest deadline): a request adds its
  best-first unseen probes, so the most urgent answers stay anytime prefixes.  Under load
  only urgent requests claim (decode-level, tight or nearly spent deadlines);
* *fill*: what budget is left goes to the lists worth most to their riders (the share
  of each rider's remaining lists a list completes), so requests finish and leave.

A list costs ``size * read_weight`` pair-vector equivalents to read plus ``size`` per
rider.  When the budget cannot take every rider of a claimed list, riders are taken in
priority order and claiming stops there.

Flat collections are one shared circular scan (:class:`FlatWindows`): each iteration
reads a window of chunks from the collection's cursor, and every flat request rides along
until it has seen each chunk once.
"""

from __future__ import annotations

import numpy as np

from trinity.engine.collections import Collections, CollectionStats, UnknownCollectionError
from trinity.engine.plan import RideWork, ScanWork
from trinity.engine.progress import ProgressTable
from trinity.engine.request import SearchRequest


class ListWindow:
    """The window of one IVF collection for one iteration.

    Args:
        collection: the collection's name.
        list_sizes: vectors per list (the scheduler's metadata copy).
        riders: joined, active requests on this collection, in priority order; their
            progress is in ``table``.
        ranks: each rider's place in the iteration's priority order.
        table: the collection's :class:`~trinity.engine.progress.ProgressTable`.
        read_weight: cost of reading one vector, in units of scanning one (query, vector)
            pair (fitted from iteration times).
    """

    def __init__(self, collection: str, list_sizes: np.ndarray, riders: list[SearchRequest], ranks: list[int],
                 table: ProgressTable, read_weight: float) -> None:
        self.collection = collection
        self.riders = riders
        self.ranks = np.asarray(ranks, dtype=np.int64)
        self.sizes = list_sizes
        self.read_weight = read_weight
        self.index = {r.request_id: i for i, r in enumerate(riders)}
        nlist = list_sizes.size
        # Every pending (rider, list, position), grouped by list, riders in priority order.
        # NOTE: one gather of the riders' table rows, not a numpy call or three per rider.
        rows = np.fromiter((r.progress_row for r in riders), dtype=np.int64, count=len(riders))
        rid, pos = np.nonzero(~table.seen[rows])  # rider by rider, positions ascending
        lid = table.unit_ids[rows[rid], pos]
        left = np.bincount(rid, minlength=len(riders))
        self.left = left
        self._rider_ptr = np.zeros(len(riders) + 1, dtype=np.int64)
        np.cumsum(left, out=self._rider_ptr[1:])
        self._rider_lists = lid  # per rider (a CSR by _rider_ptr), best first
        if lid.size and lid.max() >= nlist:  # a re-created collection may have fewer lists
            keep = lid < nlist
            lid, rid, pos = lid[keep], rid[keep], pos[keep]
        # Pairs come rider by rider (priority order): a stable sort by list alone keeps each
        # list's riders in priority order (a radix sort on int16 ids).
        order = np.argsort(lid.astype(np.int16) if nlist <= np.iinfo(np.int16).max else lid, kind="stable")
        self.pair_rider, self.pair_list, self.pair_pos = rid[order], lid[order], pos[order]
        self.demand = np.bincount(self.pair_list, minlength=nlist)
        self.list_ptr = np.zeros(nlist + 1, dtype=np.int64)
        np.cumsum(self.demand, out=self.list_ptr[1:])
        # NOTE: a list's worth to the fill is the share of their remaining work it completes
        # for its riders (sum of 1 / lists left): lists that finish requests go first, which
        # keeps requests' time in the running set -- and so throughput -- up.
        per_pair = 1.0 / np.maximum(left, 1).astype(np.float64)
        self.worth = np.bincount(self.pair_list, weights=per_pair[self.pair_rider], minlength=nlist)
        self.take = np.zeros(self.pair_list.size, dtype=bool)
        self.chosen = np.zeros(nlist, dtype=bool)
        self.cut = False  # a claim did not fit: the budget bound this iteration

    def claim(self, req: SearchRequest, budget_left: float, force: bool) -> float | None:
        """Add ``req``'s unseen lists, best first, with their riders, while they fit.

        Returns the charge, or ``None`` if ``req`` gets nothing this iteration.  With
        ``force`` (the iteration's first item: the progress guarantee) ``req``'s next
        list is scanned by ``req`` even past the budget.
        """
        me = self.index[req.request_id]
        pending = self._rider_lists[self._rider_ptr[me]:self._rider_ptr[me + 1]]
        pending = pending[pending < self.chosen.size]
        new = pending[~self.chosen[pending]]
        if new.size == 0:
            return 0.0 if pending.size else None
        full = self.sizes[new] * (self.read_weight + self.demand[new])
        cum = np.cumsum(full)
        n = int(np.searchsorted(cum, budget_left, side="right"))
        self._choose(new[:n])
        charge = float(cum[n - 1]) if n else 0.0
        if n == new.size:
            return charge
        self.cut = True
        lst = int(new[n])  # the first list that does not fit with every rider: take some
        size, lo = float(self.sizes[lst]), int(self.list_ptr[lst])
        m = int((budget_left - charge - size * self.read_weight) // size) if size else 0
        m = min(max(m, 0), int(self.demand[lst]))
        if m == 0 and not (force and n == 0):
            return charge if n else (0.0 if self.chosen[pending].any() else None)
        self.chosen[lst] = True
        if m:
            self.take[lo:lo + m] = True
        else:  # forced: this request alone
            self.take[lo + int(np.flatnonzero(self.pair_rider[lo:self.list_ptr[lst + 1]] == me)[0])] = True
            m = 1
        return charge + size * (self.read_weight + m)

    def fill(self, budget_left: float) -> float:
        """Spend what is left on the lists worth most to their riders; return the charge."""
        open_ = np.flatnonzero((self.demand > 0) & ~self.chosen)
        if open_.size == 0 or budget_left <= 0:
            return 0.0
        order = open_[np.argsort(-self.worth[open_], kind="stable")]
        cum = np.cumsum(self.sizes[order] * (self.read_weight + self.demand[order]))
        n = int(np.searchsorted(cum, budget_left, side="right"))
        self.cut |= n < order.size
        self._choose(order[:n])
        return float(cum[n - 1]) if n else 0.0

    def _choose(self, lists: np.ndarray) -> None:
        """Read ``lists`` this iteration, for every rider that needs them."""
        if lists.size:
            mask = np.zeros(self.chosen.size, dtype=bool)
            mask[lists] = True
            self.take |= mask[self.pair_list]  # one pass, not a slice per list
            self.chosen[lists] = True

    def work(self) -> RideWork | None:
        """The riders' positions taken this iteration, as one CSR (riders in priority order)."""
        sel = np.flatnonzero(self.take)
        if sel.size == 0:
            return None
        riders, units = self.pair_rider[sel], self.pair_pos[sel]
        order = np.lexsort((units, riders))  # by rider, positions ascending
        counts = np.bincount(riders, minlength=len(self.riders))
        some = np.flatnonzero(counts)
        ptr = np.zeros(some.size + 1, dtype=np.int64)
        np.cumsum(counts[some], out=ptr[1:])
        return RideWork(self.collection, tuple(self.riders[i].request_id for i in some.tolist()), ptr,
                        units[order], counts[some] == self.left[some], self.ranks[some])


def open_list_windows(candidates: list[SearchRequest], collections: Collections, tables: dict[str, ProgressTable],
                      read_weight: float) -> tuple[dict[str, ListWindow], list[tuple[SearchRequest, str]]]:
    """One :class:`ListWindow` per IVF collection with joined candidates (``candidates``
    in priority order); the joined requests of a collection that is gone come back with
    the reason, for the scheduler to fail."""
    riders: dict[str, tuple[list[SearchRequest], list[int]]] = {}
    for i, req in enumerate(candidates):
        if req.assigned:
            reqs, ranks = riders.setdefault(req.collection, ([], []))
            reqs.append(req)
            ranks.append(i)
    windows, failed = {}, []
    for name, (reqs, ranks) in riders.items():
        try:
            stats = collections.stats(name)
        except UnknownCollectionError as e:
            failed += [(req, str(e)) for req in reqs]
            continue
        if stats.unit_sizes is not None:
            windows[name] = ListWindow(name, stats.unit_sizes, reqs, ranks, tables[name], read_weight)
    return windows, failed


class FlatWindows:
    """The shared circular scan of every flat collection: a cursor per collection, and
    the window of chunks the current iteration reads (opened by its first rider)."""

    def __init__(self) -> None:
        self.cursor: dict[str, int] = {}
        self.windows: dict[str, tuple[int, ...]] = {}

    def begin(self) -> None:
        """A new iteration: no window is open yet."""
        self.windows = {}

    def advance(self) -> None:
        """The iteration ran: each cursor moves past its window."""
        for col, window in self.windows.items():
            self.cursor[col] = window[-1] + 1

    def plan(self, req: SearchRequest, stats: CollectionStats, budget_left: float,
             first: bool) -> tuple[ScanWork, float] | None:
        """``req``'s unseen chunks of its collection's window that fit, with their cost."""
        seen = req.seen
        if stats.num_units < seen.size:  # the collection shrank: those chunks no longer exist
            req.mark_seen(np.arange(stats.num_units, seen.size))
        window = self.windows.get(req.collection)
        if window is None and stats.num_units:
            n = stats.num_units
            cursor = self.cursor.get(req.collection, 0) % n
            # NOTE: the window opens at the first rider's next unseen chunk, so the most
            # urgent flat request always makes progress (a preempted rider may have seen
            # the chunks right after the shared cursor already).
            unseen = np.flatnonzero(~seen[:n])
            if unseen.size:
                after = unseen[unseen >= cursor]
                cursor = int(after[0]) if after.size else int(unseen[0])
            width = int(min(max(1, budget_left // stats.unit_cost), n))
            window = tuple((cursor + i) % n for i in range(width))
            self.windows[req.collection] = window
        chunks = tuple(c for c in window or () if c < seen.size and not seen[c])
        fits = int(budget_left // stats.unit_cost) if stats.unit_cost else len(chunks)
        if len(chunks) > fits:
            if not first and fits == 0:
                return None
            chunks = chunks[: max(fits, 1)]
        left = int(seen.size - seen.sum())
        if not chunks and left:
            return None  # waits for the shared cursor to come round to its unseen chunks
        cost = int(len(chunks) * stats.unit_cost)
        return ScanWork(req.request_id, req.collection, units=chunks, returns_result=len(chunks) == left), cost
