"""Compiled gathers of the window: its (rider, unit) pairs from a progress table, and its parts."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
def split(rid, take, pair_part, num_riders, num_parts):
    """Taken pairs grouped by part (rider by rider within one); riders' counts per part, and
    whether the part completes them (the last part holding their positions, all taken)."""
    counts = np.zeros((num_parts, num_riders), np.int64)
    last = np.full(num_riders, -1, np.int64)
    left = np.zeros(num_riders, np.int64)
    part_ptr = np.zeros(num_parts + 1, np.int64)
    for p in range(rid.size):
        left[rid[p]] += 1
        if take[p]:
            counts[pair_part[p], rid[p]] += 1
            left[rid[p]] -= 1
            last[rid[p]] = max(last[rid[p]], pair_part[p])
            part_ptr[pair_part[p] + 1] += 1
    part_ptr = np.cumsum(part_ptr)
    cursor = part_ptr[:-1].copy()
    order = np.empty(part_ptr[-1], np.int64)
    for p in range(rid.size):
        if take[p]:
            order[cursor[pair_part[p]]] = p
            cursor[pair_part[p]] += 1
    completes = np.zeros((num_parts, num_riders), np.bool_)
    for r in range(num_riders):
        if left[r] == 0 and last[r] >= 0:
            completes[last[r], r] = True
    return order, part_ptr, counts, completes
