"""Shared scans: which units (IVF lists, flat chunks) one iteration reads, and who rides along.

Each iteration opens a *window* per collection; every candidate request that still needs a
unit in the window rides along, and the runner reads each unit once for all its riders
(at 200k x 384 the reads, not the arithmetic, bound the scan).  Units enter the window:

* by *claims*, in priority order: a request adds its unseen units best first, so the most
  urgent answers stay anytime prefixes;
* by *fill*: the budget left goes first to more riders of units already read, then to the
  units worth most to their riders (the share of each rider's remaining units a unit
  completes), so requests finish and leave.

A unit costs ``size * read_weight`` pair equivalents to read plus ``size`` per rider.
A claim takes the claimer's units with every rider when the window *shares* -- flat
windows (every flat request needs every chunk) and IVF windows at light load -- and with
the riders ahead of it in priority order only otherwise: under load a later urgent claim
is not crowded out by an earlier claim's riders, and the fill adds riders by what
completes requests.  Once a claimer cannot take all its units, claiming stops.  The units
of claims that complete a *head* request (whose answer cannot wait for the rest of the
iteration) form the head sub-plan, run first with all their riders.
"""

from __future__ import annotations

import numpy as np

from trinity.engine.plan import RideWork
from trinity.engine.progress import ProgressTable
from trinity.engine.request import SearchRequest


class ListWindow:
    """The window of one collection for one iteration; riders in priority order."""

    def __init__(self, collection: str, unit_sizes: np.ndarray, riders: list[SearchRequest], ranks: list[int],
                 table: ProgressTable, read_weight: float, share: bool = True) -> None:
        self.collection, self.riders, self.sizes, self.read_weight = collection, riders, unit_sizes, read_weight
        self.ranks = np.asarray(ranks, dtype=np.int64)
        self.index = {r.request_id: i for i, r in enumerate(riders)}
        self.slots = np.fromiter((r.slot for r in riders), dtype=np.int64, count=len(riders))
        nunits = unit_sizes.size
        rid, pos = np.nonzero(~table.seen[self.slots])  # rider by rider, positions ascending
        lid = table.unit_ids[self.slots[rid], pos]
        self.left = np.bincount(rid, minlength=len(riders))
        self._rider_ptr = np.zeros(len(riders) + 1, dtype=np.int64)
        np.cumsum(self.left, out=self._rider_ptr[1:])
        # A stable sort by unit keeps each unit's riders in priority order (radix sort on int16).
        order = np.argsort(lid.astype(np.int16) if nunits <= np.iinfo(np.int16).max else lid, kind="stable")
        self._rider_pairs = np.empty_like(order)  # per rider (a CSR by _rider_ptr): its pairs, best first
        self._rider_pairs[order] = np.arange(order.size)
        self.pair_rider, self.pair_unit, self.pair_pos = rid[order], lid[order], pos[order]
        self.demand = np.bincount(self.pair_unit, minlength=nunits)
        self.unit_ptr = np.zeros(nunits + 1, dtype=np.int64)
        np.cumsum(self.demand, out=self.unit_ptr[1:])
        per_pair = 1.0 / np.maximum(self.left, 1).astype(np.float64)
        self.worth = np.bincount(self.pair_unit, weights=per_pair[self.pair_rider], minlength=nunits)
        self.take = np.zeros(self.pair_unit.size, dtype=bool)
        self.chosen = np.zeros(nunits, dtype=bool)
        self.head = np.zeros(nunits, dtype=bool)
        self.cut = False  # a claim did not fit: the budget bound this iteration
        self.share = share  # claims take every rider of their units (else the riders ahead only)

    def claim(self, req: SearchRequest, budget_left: float, force: bool, head: bool = False) -> float | None:
        """Take ``req``'s unseen units, best first, while they fit; return the charge, or
        ``None`` if ``req`` gets nothing this iteration.

        A unit read for an earlier claim costs ``req`` its scan; a new one its read too, with
        every rider when the window shares, with the riders ahead of ``req`` otherwise.
        With ``force`` (the iteration's first claim: the progress guarantee) ``req``'s next
        unit is scanned even past the budget.  With ``head``, a claim that completes ``req``
        puts its units in the head sub-plan.
        """
        me = self.index[req.request_id]
        mine = self._rider_pairs[self._rider_ptr[me]:self._rider_ptr[me + 1]]
        todo = mine[~self.take[mine]]
        units = self.pair_unit[todo]
        read = ~self.chosen[units]
        riders = np.where(read, self.demand[units] if self.share else todo - self.unit_ptr[units] + 1, 1)
        cum = np.cumsum(self.sizes[units] * (self.read_weight * read + riders))
        n = int(np.searchsorted(cum, budget_left, side="right"))
        self.cut |= n < todo.size
        if n == 0 and not (force and todo.size):
            return 0.0 if self.take[mine].any() else None
        fresh = read[:n]
        if n == 0:  # forced: its next unit, this request alone
            n, fresh, cum = 1, np.zeros(1, dtype=bool), self.sizes[units[:1]] * (self.read_weight * read[:1] + 1.0)
        self.take[_ranges(self.unit_ptr[units[:n][fresh]], riders[:n][fresh])] = True
        self.take[todo[:n]] = True
        self.chosen[units[:n]] = True
        charge = float(cum[n - 1])
        if head and self.take[mine].all():
            self.head[self.pair_unit[mine]] = True
        return charge

    def fill(self, budget_left: float) -> float:
        """Spend what is left: first on more riders of units already read (in priority order),
        then on the units worth most to their riders; return the charge."""
        pairs = np.flatnonzero(~self.take & self.chosen[self.pair_unit])
        pairs = pairs[np.argsort(self.pair_rider[pairs], kind="stable")]
        cum = np.cumsum(self.sizes[self.pair_unit[pairs]])
        n = int(np.searchsorted(cum, budget_left, side="right"))
        self.take[pairs[:n]] = True
        charge = float(cum[n - 1]) if n else 0.0
        self.cut |= n < pairs.size
        return charge + self._fill_new(budget_left - charge)

    def _fill_new(self, budget_left: float) -> float:
        open_ = np.flatnonzero((self.demand > 0) & ~self.chosen)
        if open_.size == 0 or budget_left <= 0:
            return 0.0
        order = open_[np.argsort(-self.worth[open_], kind="stable")]
        cum = np.cumsum(self.sizes[order] * (self.read_weight + self.demand[order]))
        n = int(np.searchsorted(cum, budget_left, side="right"))
        self.cut |= n < order.size
        self._choose(order[:n])
        return float(cum[n - 1]) if n else 0.0

    def _choose(self, units: np.ndarray) -> None:
        """Read ``units`` this iteration, for every rider that needs them."""
        if units.size:
            mask = np.zeros(self.chosen.size, dtype=bool)
            mask[units] = True
            self.take |= mask[self.pair_unit]
            self.chosen[units] = True

    def work(self) -> tuple[RideWork | None, RideWork | None]:
        """The riders' positions taken this iteration as ``(head, rest)`` CSRs (riders in
        priority order); a rider completes in the last part that holds its positions."""
        in_head = self.take & self.head[self.pair_unit]
        in_rest = self.take & ~in_head
        num_head = np.bincount(self.pair_rider[in_head], minlength=len(self.riders))
        num_rest = np.bincount(self.pair_rider[in_rest], minlength=len(self.riders))
        done = num_head + num_rest == self.left
        return (self._ride(in_head, num_head, done & (num_rest == 0)), self._ride(in_rest, num_rest, done))

    def _ride(self, sel: np.ndarray, counts: np.ndarray, done: np.ndarray) -> RideWork | None:
        sel = np.flatnonzero(sel)
        if sel.size == 0:
            return None
        riders, units = self.pair_rider[sel], self.pair_pos[sel]
        order = np.lexsort((units, riders))  # by rider, positions ascending
        sel = sel[order]
        some = np.flatnonzero(counts)
        ptr = np.zeros(some.size + 1, dtype=np.int64)
        np.cumsum(counts[some], out=ptr[1:])
        return RideWork(self.collection, tuple(self.riders[i].request_id for i in some.tolist()), ptr,
                        self.pair_pos[sel], self.pair_unit[sel], done[some], self.ranks[some], self.slots[some])


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + c)`` for each ``(s, c)``."""
    offsets = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return np.arange(int(counts.sum())) + offsets
