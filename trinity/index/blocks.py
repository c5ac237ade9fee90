"""Inverted lists stored in fixed-size blocks, like a paged KV cache.

All vectors live in one pool of blocks ``[num_blocks, block_size, dim]``; each list owns
an ordered row of block ids in a *block table*.  A list grows by taking a free block, so
appending never moves a list's existing vectors, and a scan can be cut into bounded
chunks of blocks.  Lists stay dense: removing a vector moves the list's last vector into
the hole and frees the last block once it is empty, so there are no tombstones to skip.

Host-side metadata (block table, list lengths, free blocks) is numpy; the pool tensors
live on the index device.  The pool itself grows geometrically when it runs out of
blocks (amortised, like a ``std::vector``), which is the only time vectors are copied.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from trinity.index.inputs import canonical_device

#: Pool growth factor when it runs out of free blocks.  NOTE: kept small so that an
#: index grown online stays within the storage budget (1.15x raw vector bytes); the copy
#: cost stays amortised O(1) per vector.
_POOL_GROWTH = 1.0625
_MIN_POOL_GROWTH_BLOCKS = 16


class BlockedLists:
    """``num_lists`` growable lists of vectors in a shared pool of fixed-size blocks."""

    def __init__(self, num_lists: int, dim: int, block_size: int, *, dtype: torch.dtype,
                 device: torch.device, with_aux: bool) -> None:
        if num_lists < 1 or block_size < 1:
            raise ValueError("num_lists and block_size must be >= 1")
        self.num_lists, self.dim, self.block_size = num_lists, dim, block_size
        self.device, self.dtype = canonical_device(device), dtype
        self.vectors = torch.zeros((0, block_size, dim), dtype=dtype, device=self.device)
        self.aux = torch.zeros((0, block_size), dtype=torch.float32, device=self.device) if with_aux else None
        self.slot_ids = torch.full((0, block_size), -1, dtype=torch.int64, device=self.device)
        self.block_table = np.full((num_lists, 1), -1, dtype=np.int32)
        self.list_len = np.zeros(num_lists, dtype=np.int64)
        self.block_owner = np.zeros(0, dtype=np.int32)  # list owning each pool block (-1 = free)
        self._free: list[int] = []  # min-heap: the lowest free block is handed out first
        self.version = 0  # bumped on every mutation; device mirrors key on it
        self._mirror: tuple[int, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def num_blocks(self) -> int:
        return self.vectors.shape[0]

    @property
    def ntotal(self) -> int:
        return int(self.list_len.sum())

    def num_list_blocks(self, lists: np.ndarray | None = None) -> np.ndarray:
        lens = self.list_len if lists is None else self.list_len[lists]
        return (lens + self.block_size - 1) // self.block_size

    def device_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Block table and list lengths as tensors on the pool device (cached per version)."""
        if self._mirror is None or self._mirror[0] != self.version:
            bt = torch.from_numpy(self.block_table).to(self.device)
            ll = torch.from_numpy(self.list_len).to(self.device)
            self._mirror = (self.version, bt, ll)
        return self._mirror[1], self._mirror[2]

    # ------------------------------------------------------------------ mutation
    def append(self, lists: np.ndarray, vectors: torch.Tensor, aux: torch.Tensor | None,
               ids: np.ndarray) -> np.ndarray:
        """Append ``vectors`` (with ``ids``) to ``lists``; return their global slots."""
        n = lists.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(lists, kind="stable")
        sorted_lists = lists[order]
        uniq, starts, counts = np.unique(sorted_lists, return_index=True, return_counts=True)
        rank = np.arange(n) - np.repeat(starts, counts)
        old_len = self.list_len[uniq]
        old_nb = (old_len + self.block_size - 1) // self.block_size
        new_nb = (old_len + counts + self.block_size - 1) // self.block_size
        self._reserve(int((new_nb - old_nb).sum()), int(new_nb.max()))
        for lst, a, b in zip(uniq.tolist(), old_nb.tolist(), new_nb.tolist()):
            for col in range(a, b):
                blk = heapq.heappop(self._free)
                self.block_table[lst, col] = blk
                self.block_owner[blk] = lst
        pos = np.repeat(old_len, counts) + rank
        blocks = self.block_table[sorted_lists, pos // self.block_size].astype(np.int64)
        slots_sorted = blocks * self.block_size + pos % self.block_size
        self.list_len[uniq] += counts
        slots = np.empty(n, dtype=np.int64)
        slots[order] = slots_sorted
        self._write(slots, vectors, aux, ids)
        self.version += 1
        return slots

    def remove_slots(self, slots: np.ndarray) -> dict[int, int]:
        """Remove the vectors at ``slots``; return ``{moved_id: new_slot}`` for vectors
        that were moved into the holes (so the caller can fix its id map)."""
        moved: dict[int, int] = {}
        ids_np = self.slot_ids.view(-1)
        # NOTE: process holes from the highest position down so that a hole is never the
        # source of a later move within the same list.
        for slot in sorted(slots.tolist(), key=self._position, reverse=True):
            blk, off = divmod(slot, self.block_size)
            lst = int(self.block_owner[blk])
            last_pos = int(self.list_len[lst]) - 1
            last_blk = int(self.block_table[lst, last_pos // self.block_size])
            last = last_blk * self.block_size + last_pos % self.block_size
            if last != slot:
                self.vectors.view(-1, self.dim)[slot] = self.vectors.view(-1, self.dim)[last]
                if self.aux is not None:
                    self.aux.view(-1)[slot] = self.aux.view(-1)[last]
                ids_np[slot] = ids_np[last]
                moved[int(ids_np[slot])] = slot
            ids_np[last] = -1
            self.list_len[lst] = last_pos
            if last_pos % self.block_size == 0:  # the last block became empty
                self.block_table[lst, last_pos // self.block_size] = -1
                self.block_owner[last_blk] = -1
                heapq.heappush(self._free, last_blk)
        self.version += 1
        return moved

    # ------------------------------------------------------------------ internals
    def _position(self, slot: int) -> int:
        blk, off = divmod(slot, self.block_size)
        row = self.block_table[self.block_owner[blk]]
        return int(np.nonzero(row == blk)[0][0]) * self.block_size + off

    def _write(self, slots: np.ndarray, vectors: torch.Tensor, aux: torch.Tensor | None, ids: np.ndarray) -> None:
        idx = torch.from_numpy(slots).to(self.device)
        self.vectors.view(-1, self.dim).index_copy_(0, idx, vectors.to(self.dtype))
        if self.aux is not None:
            self.aux.view(-1).index_copy_(0, idx, aux.float())
        self.slot_ids.view(-1).index_copy_(0, idx, torch.from_numpy(ids).to(self.device))

    def _reserve(self, num_new_blocks: int, max_blocks_per_list: int) -> None:
        if max_blocks_per_list > self.block_table.shape[1]:
            cols = max(max_blocks_per_list, 2 * self.block_table.shape[1])
            grown = np.full((self.num_lists, cols), -1, dtype=np.int32)
            grown[:, : self.block_table.shape[1]] = self.block_table
            self.block_table = grown
        missing = num_new_blocks - len(self._free)
        if missing <= 0:
            return
        old = self.num_blocks
        grow = max(missing, _MIN_POOL_GROWTH_BLOCKS, int(old * (_POOL_GROWTH - 1.0))) if old else missing
        self.vectors = _grow(self.vectors, grow, 0)
        self.slot_ids = _grow(self.slot_ids, grow, -1)
        if self.aux is not None:
            self.aux = _grow(self.aux, grow, 0)
        self.block_owner = np.concatenate([self.block_owner, np.full(grow, -1, dtype=np.int32)])
        # NOTE: new blocks are above every free one, so the heap stays valid; a list that only
        # grows (nothing freed) gets ascending, contiguous blocks across any number of growths.
        self._free.extend(range(old, old + grow))

    # ------------------------------------------------------------------ accounting / io
    def memory_bytes(self) -> dict[str, int]:
        """Bytes held, split by purpose (capacity, not just used slots)."""
        el = self.vectors.element_size()
        used_slots = self.ntotal
        cap_slots = self.num_blocks * self.block_size
        out = {
            "vectors_used": used_slots * self.dim * el,
            "vectors_free_slots": (cap_slots - used_slots) * self.dim * el,
            "ids": self.slot_ids.numel() * 8,
            "aux": 0 if self.aux is None else self.aux.numel() * 4,
            "block_table": self.block_table.nbytes + self.list_len.nbytes + self.block_owner.nbytes,
        }
        out["total"] = sum(out.values())
        return out

    def state_arrays(self) -> dict[str, torch.Tensor]:
        """Compact arrays for persistence (no free blocks), as CPU tensors."""
        used = np.nonzero(self.block_owner >= 0)[0]
        remap = np.full(self.num_blocks, -1, dtype=np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        table = np.full_like(self.block_table, -1)
        if self.num_blocks:
            table = np.where(self.block_table >= 0, remap[np.maximum(self.block_table, 0)], -1).astype(np.int32)
        idx = torch.from_numpy(used).to(self.device)
        out = {
            "vectors": self.vectors.index_select(0, idx).cpu(),
            "slot_ids": self.slot_ids.index_select(0, idx).cpu(),
            "block_table": torch.from_numpy(table),
            "list_len": torch.from_numpy(self.list_len.copy()),
        }
        if self.aux is not None:
            out["aux"] = self.aux.index_select(0, idx).cpu()
        return out

    def load_state(self, arrays: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_arrays` (shapes are validated by the caller)."""
        self.vectors = arrays["vectors"].to(self.device, self.dtype).contiguous()
        self.slot_ids = arrays["slot_ids"].to(self.device).contiguous()
        if self.aux is not None:
            self.aux = arrays["aux"].to(self.device).contiguous()
        self.block_table = arrays["block_table"].numpy().astype(np.int32).copy()
        self.list_len = arrays["list_len"].numpy().astype(np.int64).copy()
        self.block_owner = np.full(self.num_blocks, -1, dtype=np.int32)
        rows, cols = np.nonzero(self.block_table >= 0)
        self.block_owner[self.block_table[rows, cols]] = rows
        self._free = []
        self.version += 1


def _grow(t: torch.Tensor, extra: int, fill: float) -> torch.Tensor:
    pad = torch.full((extra, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=0)
