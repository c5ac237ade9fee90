"""The probes one scan call reads: a CSR of (query row, list, block range) pairs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trinity.index.blocks import BlockedLists


@dataclass(frozen=True)
class ProbeChunk:
    """A CSR set of probes: the pairs of query row ``i`` are ``query_ptr[i]:query_ptr[i+1]``.

    Each pair names a list and, optionally, a half-open range of that list's blocks
    (``block_start``/``block_end``; ``None`` means the whole list), which lets a caller
    cut one big list across several scan calls.
    """

    query_ptr: np.ndarray
    list_ids: np.ndarray
    block_start: np.ndarray | None = None
    block_end: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.query_ptr.ndim != 1 or self.query_ptr.size < 1 or self.query_ptr[-1] != self.list_ids.size:
            raise ValueError("ProbeChunk: query_ptr must be a CSR pointer ending at len(list_ids)")
        if (self.block_start is None) != (self.block_end is None):
            raise ValueError("ProbeChunk: give both block_start and block_end, or neither")

    @classmethod
    def from_probes(cls, probes: np.ndarray) -> ProbeChunk:
        """Build from a dense ``(nq, nprobe)`` assignment, ``-1`` entries skipped."""
        probes = np.asarray(probes)
        mask = probes >= 0
        ptr = np.zeros(probes.shape[0] + 1, dtype=np.int64)
        np.cumsum(mask.sum(axis=1), out=ptr[1:])
        return cls(ptr, probes[mask].astype(np.int64))

    @property
    def num_queries(self) -> int:
        return self.query_ptr.size - 1

    @property
    def num_pairs(self) -> int:
        return self.list_ids.size

    def block_ranges(self, lists: BlockedLists) -> tuple[np.ndarray, np.ndarray]:
        """Per-pair ``[start, end)`` block ranges clipped to the lists' current sizes."""
        nb = lists.num_list_blocks(self.list_ids)
        if self.block_start is None:
            return np.zeros_like(nb), nb
        return np.minimum(self.block_start, nb), np.minimum(self.block_end, nb)

    def num_vectors(self, lists: BlockedLists) -> int:
        """Vectors this chunk scans (the scan budget unit)."""
        start, end = self.block_ranges(lists)
        lens = lists.list_len[self.list_ids]
        last = np.minimum(end * lists.block_size, lens)
        return int(np.maximum(last - start * lists.block_size, 0).sum())
