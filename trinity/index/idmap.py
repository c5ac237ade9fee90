"""An int64 -> int64 hash map in two numpy arrays: each index's id -> slot table.

NOTE: a Python ``dict`` of 200k ids costs ~21 MiB (entries plus boxed ints) that no
``memory_bytes`` figure sees; open addressing over two int64 arrays at <= 1/2 load costs
~6 MiB, and batched numba lookups avoid a Python loop per id.  Ids are >= 0 (``-1`` is
FAISS's padding id), so negative keys mark empty and deleted buckets.
"""

from __future__ import annotations

import numba
import numpy as np

_EMPTY, _DELETED = -1, -2
_MIN_CAPACITY = 64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(inline="always")
def _home(key, shift):  # pragma: no cover - compiled
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(shift))


@numba.njit(inline="always")
def _find(keys, shift, key):  # pragma: no cover - compiled
    """The bucket holding ``key``, or -1."""
    mask = keys.size - 1
    j = _home(key, shift)
    while keys[j] != _EMPTY:
        if keys[j] == key:
            return j
        j = (j + 1) & mask
    return -1


@numba.njit(cache=True, nogil=True)
def _get(keys, vals, shift, ks, out):  # pragma: no cover - compiled
    for i in range(ks.size):
        j = _find(keys, shift, ks[i])
        out[i] = vals[j] if j >= 0 else -1


@numba.njit(cache=True, nogil=True)
def _put(keys, vals, shift, ks, vs):  # pragma: no cover - compiled
    """Insert or overwrite; return (new keys, buckets that were deleted and got reused)."""
    mask = keys.size - 1
    added = 0
    reused = 0
    for i in range(ks.size):
        j = _home(ks[i], shift)
        free = -1
        while keys[j] != _EMPTY:
            if keys[j] == ks[i]:
                break
            if keys[j] == _DELETED and free < 0:
                free = j
            j = (j + 1) & mask
        if keys[j] == ks[i]:
            vals[j] = vs[i]
            continue
        if free >= 0:
            j = free
            reused += 1
        keys[j] = ks[i]
        vals[j] = vs[i]
        added += 1
    return added, reused


@numba.njit(cache=True, nogil=True)
def _pop(keys, vals, shift, ks, out):  # pragma: no cover - compiled
    removed = 0
    for i in range(ks.size):
        j = _find(keys, shift, ks[i])
        out[i] = -1
        if j >= 0:
            out[i] = vals[j]
            keys[j] = _DELETED
            removed += 1
    return removed


class IdMap:
    """``id -> slot`` for non-negative int64 ids; batched, ``-1`` for missing ids."""

    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        self._alloc(max(_MIN_CAPACITY, 1 << int(max(capacity - 1, 1)).bit_length()))
        self._size = 0

    def _alloc(self, capacity: int) -> None:
        self._keys = np.full(capacity, _EMPTY, dtype=np.int64)
        self._vals = np.empty(capacity, dtype=np.int64)
        self._shift = 64 - (capacity.bit_length() - 1)
        self._deleted = 0

    def __len__(self) -> int:
        return self._size

    def get(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids`` (``-1`` where absent)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty(ids.size, dtype=np.int64)
        _get(self._keys, self._vals, self._shift, ids, out)
        return out

    def __contains__(self, vid: int) -> bool:
        return bool(self.get(np.array([vid]))[0] >= 0)

    def put(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Insert or overwrite ``ids -> slots``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if (self._size + self._deleted + ids.size) * 2 > self._keys.size:
            self._rehash(self._size + ids.size)
        added, reused = _put(self._keys, self._vals, self._shift, ids, np.ascontiguousarray(slots, dtype=np.int64))
        self._size += added
        self._deleted -= reused

    def pop(self, ids: np.ndarray) -> np.ndarray:
        """Remove ``ids``; return their slots (``-1`` where absent)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty(ids.size, dtype=np.int64)
        removed = _pop(self._keys, self._vals, self._shift, ids, out)
        self._size -= removed
        self._deleted += removed
        return out

    def keys(self) -> np.ndarray:
        return self._keys[self._keys >= 0].copy()

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        live = self._keys >= 0
        return self._keys[live].copy(), self._vals[live].copy()

    def nbytes(self) -> int:
        return self._keys.nbytes + self._vals.nbytes

    def _rehash(self, need: int) -> None:
        keys, vals = self.items()
        self._alloc(max(_MIN_CAPACITY, 1 << int(2 * need).bit_length()))
        self._size = 0
        if keys.size:
            added, _ = _put(self._keys, self._vals, self._shift, keys, vals)
            self._size = added
