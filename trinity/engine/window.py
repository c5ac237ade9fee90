"""Shared scans: which units (IVF lists, flat chunks) one iteration reads, and who rides along.

Each iteration opens one window over the units of every collection with candidates; every
candidate that still needs a unit in the window rides along, and the runner reads each unit
once for all its riders (at 200k x 384 the reads, not the arithmetic, bound the scan).
Units enter the window:

* by *claims*, in priority order: a request adds its unseen units best first, so the most
  urgent answers stay anytime prefixes;
* by *fill*: the budget left goes first to more riders of units already read, then to the
  units worth most to their riders (the share of each rider's remaining units a unit
  completes), so requests finish and leave.

A unit costs ``size * read_weight`` pair equivalents to read plus ``size`` per rider.
A claim takes the claimer's units with every rider when its collection *shares* -- flat
collections (every flat request needs every chunk) and IVF at light load -- and with the
riders ahead of it in priority order only otherwise: under load a later urgent claim is not
crowded out by an earlier claim's riders, and the fill adds riders by what completes
requests.  Once a claimer cannot take all its units, claiming in its collection stops.  The
units of claims that complete a *head* request (whose answer cannot wait for the rest of
the iteration) form the head sub-plan, run first with all their riders.

The pairs (rider, unit) are gathered from the progress tables and split into head and rest
with one compiled call per collection (``pairs``, ``split``); claims and fill are one
compiled call, whatever the number of requests.  These kernels keep the GIL: the loop
thread gives it up only in the scan, long enough to pay for getting it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from trinity.engine.plan import RideWork
from trinity.engine.progress import ProgressTable


@dataclass(frozen=True, eq=False)
class Riders:
    """One collection's candidates for an iteration, in priority order."""

    collection: str
    unit_sizes: np.ndarray  # int64 vectors per unit of the collection
    table: ProgressTable
    request_ids: tuple[str, ...]
    slots: np.ndarray  # int64 per rider
    ranks: np.ndarray  # int64 per rider: its place in the iteration's priority order
    share: bool  # claims take every rider of their units (else the riders ahead only)


@dataclass(frozen=True)
class Claims:
    """Per rank of the iteration's priority order: how it may claim (ranks without riders: -1)."""

    window: np.ndarray  # int64 index of its Riders group, -1 for none
    eligible: np.ndarray  # bool: may claim after the first claim (urgent, or not under load)
    head: np.ndarray  # bool: a claim that completes it goes in the head


class Window:
    """The units one iteration reads, over the riders of every collection."""

    def __init__(self, groups: list[Riders], read_weight: float) -> None:
        self.groups, self.read_weight = groups, read_weight
        parts, offset = [], 0
        for g in groups:  # (rider, position, unit id, rank, window unit) per unseen unit, rider by rider
            parts.append(pairs(g.table.seen, g.table.unit_ids, g.slots, g.ranks, offset))
            offset += g.unit_sizes.size
        self.parts = parts
        self.bounds = np.cumsum([0] + [p[0].size for p in parts])
        self.pair_rank = np.concatenate([p[3] for p in parts] or [np.zeros(0, np.int64)])
        self.pair_unit = np.concatenate([p[4] for p in parts] or [np.zeros(0, np.int64)])
        self.sizes = np.concatenate([g.unit_sizes for g in groups] or [np.zeros(0, np.int64)]).astype(np.int64)
        self.unit_window = np.repeat(np.arange(len(groups)), [g.unit_sizes.size for g in groups])
        self.take = np.zeros(self.pair_unit.size, dtype=bool)
        self.chosen = np.zeros(self.sizes.size, dtype=bool)
        self.head = np.zeros(self.sizes.size, dtype=bool)
        self.cut = np.zeros(len(groups), dtype=bool)

    def plan(self, claims: Claims, budget: float) -> tuple[float, bool]:
        """Claims in priority order, then the fill; return ``(charge, forced)``: forced when
        the iteration's first claim went past the budget (the progress guarantee)."""
        share = np.array([g.share for g in self.groups], dtype=bool)
        planned, forced = _plan(self.pair_rank, self.pair_unit, self.sizes, self.unit_window, share, claims.window,
                                claims.eligible, claims.head, float(budget), float(self.read_weight),
                                self.take, self.chosen, self.head, self.cut)
        return planned, forced

    @property
    def exhausted(self) -> bool:
        """A claim or fill did not fit: the budget bound this iteration."""
        return bool(self.cut.any())

    def work(self) -> tuple[list[RideWork], list[RideWork]]:
        """Each collection's positions taken as ``(head, rest)`` CSRs (riders in priority
        order); a rider completes in the last part that holds its positions."""
        parts: tuple[list[RideWork], list[RideWork]] = ([], [])
        for g, (rid, pos, lid, *_), lo, hi in zip(self.groups, self.parts, self.bounds[:-1], self.bounds[1:]):
            for out, (some, ptr, positions, unit_ids, completes, ranks, rows) in zip(parts, split(
                    rid, pos, lid, g.ranks, g.slots, self.take[lo:hi], self.head[self.pair_unit[lo:hi]],
                    len(g.request_ids))):
                if some.size:
                    out.append(RideWork(g.collection, tuple(map(g.request_ids.__getitem__, some.tolist())), ptr,
                                        positions, unit_ids, completes, ranks, rows))
        return parts


@numba.njit(cache=True)
def pairs(seen, unit_ids, rows, ranks, offset):
    """Per unseen unit of ``rows``, rider by rider: (rider, position, unit id, rank, window unit)."""
    num_pairs = 0
    for r in rows:
        num_pairs += seen.shape[1] - seen[r].sum()
    rid, pos, lid = np.empty(num_pairs, np.int64), np.empty(num_pairs, np.int64), np.empty(num_pairs, np.int64)
    rank, unit = np.empty(num_pairs, np.int64), np.empty(num_pairs, np.int64)
    p = 0
    for i in range(rows.size):
        r = rows[i]
        for j in range(seen.shape[1]):
            if not seen[r, j]:
                rid[p], pos[p], lid[p], rank[p], unit[p] = i, j, unit_ids[r, j], ranks[i], unit_ids[r, j] + offset
                p += 1
    return rid, pos, lid, rank, unit


@numba.njit(cache=True)
def split(rid, pos, lid, ranks, rows, take, in_head, num_riders):
    """The taken pairs as two CSRs, the head's and the rest's: per part its riders (ascending),
    their pointer, positions, unit ids, ranks and rows, and whether the part completes them
    (the last part holding their positions, all of them taken)."""
    counts = np.zeros((2, num_riders), np.int64)
    left = np.zeros(num_riders, np.int64)
    for p in range(rid.size):
        left[rid[p]] += 1
        if take[p]:
            counts[1 - in_head[p], rid[p]] += 1
            left[rid[p]] -= 1
    out = []
    for part in range(2):
        some = np.flatnonzero(counts[part])
        ptr = np.zeros(some.size + 1, np.int64)
        ptr[1:] = np.cumsum(counts[part][some])
        completes = np.empty(some.size, np.bool_)
        for i in range(some.size):
            r = some[i]
            completes[i] = left[r] == 0 and (part == 1 or counts[1, r] == 0)
        sel = np.empty(ptr[-1], np.int64)
        n = 0
        for p in range(rid.size):
            if take[p] and in_head[p] == (part == 0):
                sel[n] = p
                n += 1
        out.append((some, ptr, pos[sel], lid[sel], completes, ranks[some], rows[some]))
    return out[0], out[1]


@numba.njit(cache=True)
def _plan(pair_rank, pair_unit, sizes, unit_window, share, rank_window, eligible, heads, budget, read_weight,
          take, chosen, head, cut):
    num_ranks, num_units, num_pairs = rank_window.size, sizes.size, pair_unit.size
    left = np.zeros(num_ranks, np.int64)
    start = np.zeros(num_ranks, np.int64)
    demand = np.zeros(num_units, np.int64)
    for p in range(num_pairs - 1, -1, -1):  # a rank's pairs are contiguous, positions ascending
        left[pair_rank[p]] += 1
        start[pair_rank[p]] = p
        demand[pair_unit[p]] += 1
    unit_ptr = np.zeros(num_units + 1, np.int64)
    unit_ptr[1:] = np.cumsum(demand)
    by_unit = np.empty(num_pairs, np.int64)  # per unit, its riders in priority order
    rank_in_unit = np.empty(num_pairs, np.int64)
    cursor = unit_ptr[:-1].copy()
    for p in range(num_pairs):
        u = pair_unit[p]
        by_unit[cursor[u]] = p
        rank_in_unit[p] = cursor[u] - unit_ptr[u]
        cursor[u] += 1
    worth = np.zeros(num_units)
    rank_ptr = np.zeros(num_ranks + 1, np.int64)
    rank_ptr[1:] = np.cumsum(left)
    by_rank = np.empty(num_pairs, np.int64)  # per rank, its pairs by unit
    cursor = rank_ptr[:-1].copy()
    for i in range(num_pairs):
        p = by_unit[i]
        r = pair_rank[p]
        worth[pair_unit[p]] += 1.0 / max(left[r], 1)
        by_rank[cursor[r]] = p
        cursor[r] += 1

    todo = np.empty(num_pairs, np.int64)
    planned, budget_left, forced = 0.0, budget, False
    for r in range(num_ranks):
        w = rank_window[r]
        if w < 0 or budget_left <= 0:
            continue
        first = planned == 0
        if not first and (cut[w] or not eligible[r]):
            continue
        s, e = start[r], start[r] + left[r]
        num_todo = 0
        for p in range(s, e):
            if not take[p]:
                todo[num_todo] = p
                num_todo += 1
        cum, n, charge = 0.0, 0, 0.0
        for i in range(num_todo):
            p, u = todo[i], pair_unit[todo[i]]
            riders = 1 if chosen[u] else (demand[u] if share[w] else rank_in_unit[p] + 1)
            cum += sizes[u] * (read_weight * (not chosen[u]) + riders)
            if cum > budget_left:
                break
            n, charge = n + 1, cum
        cut[w] |= n < num_todo
        if n == 0 and not (first and num_todo):
            continue
        if n == 0:  # forced: its next unit, this request alone
            u = pair_unit[todo[0]]
            charge = sizes[u] * (read_weight * (not chosen[u]) + 1.0)
            take[todo[0]], chosen[u] = True, True
        for i in range(n):
            p, u = todo[i], pair_unit[todo[i]]
            if not chosen[u]:
                for j in range(unit_ptr[u], unit_ptr[u] + (demand[u] if share[w] else rank_in_unit[p] + 1)):
                    take[by_unit[j]] = True
                chosen[u] = True
            take[p] = True
        if heads[r] and take[s:e].all():
            for p in range(s, e):
                head[pair_unit[p]] = True
        forced |= first and charge > budget_left
        planned, budget_left = planned + charge, budget_left - charge

    for w in range(share.size):
        cum, stopped = 0.0, False
        for r in range(num_ranks):
            if rank_window[r] != w:
                continue
            for j in range(rank_ptr[r], rank_ptr[r + 1]):
                p = by_rank[j]
                if take[p] or not chosen[pair_unit[p]] or stopped:
                    continue
                if cum + sizes[pair_unit[p]] > budget_left:
                    stopped = cut[w] = True
                else:
                    take[p], cum = True, cum + sizes[pair_unit[p]]
        charge = cum + _fill_new(w, budget_left - cum, sizes, unit_window, demand, worth, unit_ptr, by_unit,
                                 read_weight, take, chosen, cut)
        planned, budget_left = planned + charge, budget_left - charge
    return planned, forced


@numba.njit(cache=True)
def _fill_new(w, budget_left, sizes, unit_window, demand, worth, unit_ptr, by_unit, read_weight, take, chosen, cut):
    """Read the units worth most to their riders while they fit; return the charge."""
    open_ = np.flatnonzero((unit_window == w) & (demand > 0) & ~chosen)
    if open_.size == 0 or budget_left <= 0:
        return 0.0
    order = open_[np.argsort(-worth[open_], kind="mergesort")]
    cum, charge = 0.0, 0.0
    for u in order:
        cum += sizes[u] * (read_weight + demand[u])
        if cum > budget_left:
            cut[w] = True
            break
        charge = cum
        chosen[u] = True
        for j in range(unit_ptr[u], unit_ptr[u + 1]):
            take[by_unit[j]] = True
    return charge


def compile_window() -> None:
    """Compile the planner ahead of the first iteration (as :func:`trinity.index.warmup.warmup`)."""
    one = np.zeros(1, np.int64)
    pairs(np.zeros((1, 1), bool), np.zeros((1, 1), np.int64), one, one, 0)
    split(one, one, one, one, one, np.ones(1, bool), np.ones(1, bool), 1)
    _plan(one, one, np.ones(1, np.int64), one, np.ones(1, bool), one, np.ones(1, bool), np.ones(1, bool), 1.0, 1.0,
          np.zeros(1, bool), np.zeros(1, bool), np.zeros(1, bool), np.zeros(1, bool))
