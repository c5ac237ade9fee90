"""Per-request progress as slot arrays, one table per collection.

A request holds a slot from admission until it finishes: its probed lists (IVF, best
first) or chunks (flat), their sizes, which it has scanned, and its counters.  The
slot is also its row in the runner's persistent batch, so plan, scan and update address
requests by slot with whole-array operations.  Padding past a slot's units reads as
already seen (unit id ``-1``, size ``0``), so ``~seen`` alone names the pending units.
"""

from __future__ import annotations

import numba
import numpy as np


class ProgressTable:
    """Slots of ``(unit ids, unit sizes, seen mask)`` plus per-slot counters."""

    def __init__(self, num_slots: int = 64, generation: int = 0, name: str = "", tid: int = 0) -> None:
        self.generation = generation  # of the collection this table's requests were admitted to
        self.name, self.tid = name, tid  # its collection, and its id in the scheduler's request slots
        self.slot_of: dict[str, int] = {}
        self._free = list(range(num_slots - 1, -1, -1))
        self._alloc(num_slots, 1)

    def _alloc(self, num_slots: int, width: int) -> None:
        old = getattr(self, "seen", None)
        unit_ids = np.full((num_slots, width), -1, dtype=np.int64)
        unit_costs = np.zeros((num_slots, width), dtype=np.int64)
        seen = np.ones((num_slots, width), dtype=bool)
        counters = np.zeros((5, num_slots), dtype=np.int64)
        if old is not None:
            n, w = old.shape
            unit_ids[:n, :w], unit_costs[:n, :w], seen[:n, :w] = self.unit_ids, self.unit_costs, old
            counters[:, :n] = self._counters
            self._free[:0] = range(num_slots - 1, n - 1, -1)
        self.unit_ids, self.unit_costs, self.seen, self._counters = unit_ids, unit_costs, seen, counters
        # views, growing together; ``last_iteration``: the iteration that counted last (head and rest count once)
        self.num_done, self.remaining, self.num_vectors, self.num_iterations, self.last_iteration = counters

    @property
    def num_slots(self) -> int:
        return self.seen.shape[0]

    def __len__(self) -> int:
        return len(self.slot_of)

    def add(self, request_ids: list[str], unit_ids: np.ndarray, unit_costs: np.ndarray) -> np.ndarray:
        """Give newly admitted requests a slot each holding their units (none seen): row ``i`` of
        ``unit_ids`` (``-1`` padded at the end) and ``unit_costs`` (``0`` there); return the slots."""
        n, width = unit_ids.shape
        while len(self._free) < n or width > self.seen.shape[1]:
            self._alloc(self.num_slots * (1 + (len(self._free) < n)), max(width, self.seen.shape[1]))
        slots = np.array(self._free[:-n - 1:-1] if n else [], dtype=np.int64)
        del self._free[len(self._free) - n:]
        self.slot_of.update(zip(request_ids, slots.tolist()))
        self.unit_ids[slots] = -1
        self.unit_costs[slots] = 0
        self.seen[slots] = True
        self.unit_ids[slots, :width] = unit_ids
        self.unit_costs[slots, :width] = unit_costs
        self.seen[slots, :width] = unit_ids < 0
        self._counters[:, slots] = 0
        self.remaining[slots] = unit_costs.sum(axis=1)
        return slots

    def release(self, request_id: str) -> None:
        """Free ``request_id``'s slot (a no-op if it holds none)."""
        slot = self.slot_of.pop(request_id, None)
        if slot is not None:
            self._free.append(slot)

    def apply(self, slots: np.ndarray, ptr: np.ndarray, positions: np.ndarray, completes: np.ndarray,
              vectors: np.ndarray, iteration: int = -1) -> None:
        """One part of an iteration: ``slots[i]`` scanned the (unseen) ``positions[ptr[i]:ptr[i+1]]``,
        ``vectors[i]`` pairs, and is complete iff ``completes[i]``."""
        agree = _apply(self.seen, self.unit_costs, self._counters, slots, ptr, positions, completes, vectors, iteration)
        assert agree, "a rider's completion disagrees with its plan"

    def skip_missing(self, slots: np.ndarray, num_units: int) -> bool:
        """Mark units at or past ``num_units`` as seen (a flat collection shrank below them);
        whether there were any."""
        gone = self.unit_ids[slots] >= num_units
        if not gone.any():
            return False
        self.seen[slots] |= gone
        self.num_done[slots] = (self.seen[slots] & (self.unit_ids[slots] >= 0)).sum(axis=1)
        self.remaining[slots] = np.where(self.seen[slots], 0, self.unit_costs[slots]).sum(axis=1)
        return True


@numba.njit(cache=True)
def _apply(seen, unit_costs, counters, slots, ptr, positions, completes, vectors, iteration):
    agree = True
    for i in range(slots.size):
        s = slots[i]
        for j in range(ptr[i], ptr[i + 1]):
            seen[s, positions[j]] = True
            counters[1, s] -= unit_costs[s, positions[j]]
        counters[0, s] += ptr[i + 1] - ptr[i]
        counters[2, s] += vectors[i]
        counters[3, s] += counters[4, s] != iteration
        counters[4, s] = iteration
        agree &= seen[s].all() == completes[i]
    return agree


def compile_progress() -> None:
    one = np.zeros(1, np.int64)
    _apply(np.ones((1, 1), bool), np.zeros((1, 1), np.int64), np.zeros((5, 1), np.int64), one, np.zeros(2, np.int64),
           np.zeros(0, np.int64), np.ones(1, bool), one, 0)
