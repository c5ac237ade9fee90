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
