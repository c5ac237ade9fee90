"""Slot ids for request ids: the one allocator behind every per-request array.

A request holds a slot from the moment it joins until it leaves; arrays indexed by slot
(the scheduler's progress table, the runner's persistent batch) grow with
:attr:`Slots.num_slots`, which doubles when the free list runs out.
"""

from __future__ import annotations

import numpy as np


class Slots:
    """A free list of slot ids that grows by doubling; lowest ids are handed out first."""

    def __init__(self, num_slots: int = 64) -> None:
        self.num_slots = num_slots
        self.slot_of: dict[str, int] = {}
        self._free = list(range(num_slots - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.slot_of

    def needed(self, count: int) -> int:
        """The number of slots once ``count`` more are acquired (the current number if they fit)."""
        num = self.num_slots
        while num - len(self.slot_of) < count:
            num *= 2
        return num

    def acquire(self, request_ids: list[str]) -> np.ndarray:
        """A slot for each id, growing first if needed (callers grow their arrays to ``num_slots``)."""
        grown = self.needed(len(request_ids))
        if grown > self.num_slots:
            self._free[:0] = range(grown - 1, self.num_slots - 1, -1)
            self.num_slots = grown
        slots = np.array([self._free.pop() for _ in request_ids], dtype=np.int64)
        self.slot_of.update(zip(request_ids, slots.tolist()))
        return slots

    def release(self, request_ids) -> None:
        """Free the slots of ``request_ids`` (ids without one are ignored)."""
        for rid in request_ids:
            slot = self.slot_of.pop(rid, None)
            if slot is not None:
                self._free.append(slot)
