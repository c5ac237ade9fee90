"""Probe progress of the joined requests of one IVF collection, as rows of arrays.

A loaded iteration has tens of joined IVF requests riding the list window, and each
iteration every one of them is planned, run and updated.  Kept per request (a ``seen``
mask, a counter and a remaining cost on each :class:`SearchRequest`), that bookkeeping
was a few numpy calls per request and iteration.  Here the scheduler keeps it as one
table per collection (the way the runner keeps its persistent batch): a request owns a
row from assignment until it finishes, the window reads every rider's unseen probes with
one gather, and the update of an iteration is one scatter for all riders.
"""

from __future__ import annotations

import numpy as np

from trinity.engine.slots import Slots


class ProgressTable:
    """Rows of ``(probe list ids, probe sizes, seen mask)`` plus per-row counters.

    Padding past a row's probes reads as already seen (list id ``-1``, size ``0``), so
    ``~seen`` alone names the pending probes.
    """

    def __init__(self) -> None:
        self.slots = Slots()
        self._alloc(self.slots.num_slots, 1)

    def _alloc(self, num_rows: int, width: int) -> None:
        old = getattr(self, "seen", None)
        unit_ids = np.full((num_rows, width), -1, dtype=np.int64)
        unit_costs = np.zeros((num_rows, width), dtype=np.int64)
        seen = np.ones((num_rows, width), dtype=bool)
        counters = np.zeros((4, num_rows), dtype=np.int64)
        if old is not None:
            n, w = old.shape
            unit_ids[:n, :w], unit_costs[:n, :w], seen[:n, :w] = self.unit_ids, self.unit_costs, old
            counters[:, :n] = self._counters
        self.unit_ids, self.unit_costs, self.seen, self._counters = unit_ids, unit_costs, seen, counters
        # NOTE: views of one array, so growing keeps them together.
        self.num_done, self.remaining, self.num_vectors, self.num_iterations = counters

    @property
    def row_of(self) -> dict[str, int]:
        return self.slots.slot_of

    @property
    def num_rows(self) -> int:
        return self.seen.shape[0]

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, request_id: str, unit_ids: np.ndarray, unit_costs: np.ndarray, num_scanned: int = 0) -> int:
        """Give a newly assigned request a row, its first ``num_scanned`` probes seen; return the row."""
        row = int(self.slots.acquire([request_id])[0])
        n = len(unit_ids)
        if self.slots.num_slots > self.num_rows or n > self.seen.shape[1]:
            self._alloc(self.slots.num_slots, max(n, self.seen.shape[1]))
        self.unit_ids[row] = -1
        self.unit_costs[row] = 0
        self.seen[row] = True
        self.unit_ids[row, :n] = unit_ids
        self.unit_costs[row, :n] = unit_costs
        self.seen[row, num_scanned:n] = False
        self._counters[:, row] = 0
        self.num_done[row] = num_scanned
        self.remaining[row] = int(unit_costs[num_scanned:].sum())
        return row

    def release(self, request_id: str) -> None:
        """Free ``request_id``'s row (a no-op if it holds none)."""
        self.slots.release((request_id,))

    def apply(self, rows: np.ndarray, ptr: np.ndarray, positions: np.ndarray, completes: np.ndarray,
              vectors: np.ndarray) -> None:
        """One iteration of the riders in ``rows``: row ``rows[i]`` scanned the (unseen)
        ``positions[ptr[i]:ptr[i+1]]``, ``vectors[i]`` pairs, and is complete iff ``completes[i]``."""
        self.mark(rows, ptr, positions)
        self.num_iterations[rows] += 1
        self.num_vectors[rows] += vectors
        assert (self.seen[rows].all(axis=1) == completes).all(), "a rider's completion disagrees with its plan"

    def mark(self, rows: np.ndarray, ptr: np.ndarray, positions: np.ndarray) -> None:
        """Record that row ``rows[i]`` scanned ``positions[ptr[i]:ptr[i+1]]`` (all unseen)."""
        counts = np.diff(ptr)
        flat_rows = np.repeat(rows, counts)
        self.seen[flat_rows, positions] = True
        self.num_done[rows] += counts
        costs = self.unit_costs[flat_rows, positions]
        self.remaining[rows] -= np.bincount(np.repeat(np.arange(rows.size), counts), weights=costs,
                                            minlength=rows.size).astype(np.int64)
