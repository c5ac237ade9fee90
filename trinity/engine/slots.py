"""Per-request scalars as slot arrays: what ordering, admission and expiry read every iteration.

A request holds one slot from admission to its finish.  The policy reads whole columns
(level, deadline, arrival, joined, ...) with a constant number of array calls per
iteration, and the Python object is touched only when the request arrives, joins, changes
status or finishes.  Priority is ``(aged level, deadline, arrival, admission order)``:
a request's *level* is its stage, or decode level when its deadline window is at most
``urgent_deadline_s``; it is promoted one level per ``aging_s`` of age (bounded
starvation); a request without a deadline sorts by a virtual one, when it would age into
the top level, so that once aged it does not starve behind every deadline-bearing request.
FIFO mode orders by ``(arrival, admission order)``.
"""

from __future__ import annotations

import numpy as np

from trinity.engine.request import RequestStatus, SearchRequest

_COLUMNS = {"level": np.int64, "stage": np.int64, "deadline": np.float64, "vdeadline": np.float64,
            "arrival": np.float64, "seq": np.int64, "table": np.int64, "row": np.int64,
            "active": bool, "joined": bool, "running": bool}


class RequestSlots:
    """Slots of every active request; ``reqs[slot]`` is its Python object."""

    def __init__(self, aging_s: float, urgent_deadline_s: float, stage_aware: bool = True, capacity: int = 256) -> None:
        self.aging_s, self.urgent_deadline_s, self.stage_aware = aging_s, urgent_deadline_s, stage_aware
        self.reqs: list[SearchRequest | None] = []
        self.ids: list[str] = []  # request ids by slot
        self._free: list[int] = []
        self.num_active = self.num_joined = 0
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        n = len(self.reqs)
        for name, dtype in _COLUMNS.items():
            col = np.zeros(capacity, dtype=dtype)
            if n:
                col[:n] = getattr(self, name)
            setattr(self, name, col)
        self.reqs.extend([None] * (capacity - n))
        self.ids.extend([""] * (capacity - n))
        self._free[:0] = range(capacity - 1, n - 1, -1)  # new slots are handed out lowest first

    def add(self, req: SearchRequest, seq: int, table: int, row: int) -> int:
        """Take a slot for an admitted request (waiting, row ``row`` of progress table ``table``)."""
        if not self._free:
            self._grow(2 * len(self.reqs))
        s = self._free.pop()
        deadline = np.inf if req.deadline is None else req.deadline
        window = deadline - req.arrival_time
        self.level[s] = 0 if window <= self.urgent_deadline_s else int(req.stage)
        self.stage[s], self.deadline[s], self.arrival[s], self.seq[s] = int(req.stage), deadline, req.arrival_time, seq
        self.vdeadline[s] = req.arrival_time + self.aging_s * (int(req.stage) + 1) if req.deadline is None else deadline
        self.table[s], self.row[s] = table, row
        self.active[s], self.joined[s], self.running[s] = True, False, False
        self.reqs[s], self.ids[s] = req, req.request_id
        self.num_active += 1
        return s

    def release(self, slot: int) -> None:
        self.num_joined -= bool(self.joined[slot])
        self.active[slot] = self.joined[slot] = self.running[slot] = False
        self.reqs[slot] = None
        self._free.append(slot)
        self.num_active -= 1

    def aged(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Each request's level after aging (FIFO mode: 0)."""
        if not self.stage_aware:
            return np.zeros(slots.size, dtype=np.int64)
        steps = ((now - self.arrival[slots]) / self.aging_s).astype(np.int64)
        return np.maximum(self.level[slots] - steps, 0)

    def sort(self, slots: np.ndarray, now: float) -> np.ndarray:
        """``slots`` in priority order."""
        if not self.stage_aware:
            return slots[np.lexsort((self.seq[slots], self.arrival[slots]))]
        return slots[np.lexsort((self.seq[slots], self.arrival[slots], self.vdeadline[slots], self.aged(slots, now)))]

    def order(self, now: float, max_num_waiting: int) -> np.ndarray:
        """The joined requests and the ``max_num_waiting`` first waiting ones, in priority order."""
        waiting = self.waiting()
        if waiting.size > max_num_waiting:
            waiting = self._head(waiting, now, max_num_waiting)
        return self.sort(np.concatenate((np.flatnonzero(self.joined), waiting)), now)  # joined: active too

    def _head(self, waiting: np.ndarray, now: float, n: int) -> np.ndarray:
        """The ``n`` first of ``waiting``: a partition on a coarse key, then an exact sort of its front."""
        coarse = self.arrival[waiting] if not self.stage_aware else (
            self.aged(waiting, now) * 1e9 + (self.vdeadline[waiting] - now))
        cut = np.partition(coarse, n - 1)[n - 1]
        return self.sort(waiting[coarse <= cut], now)[:n]

    def waiting(self) -> np.ndarray:
        live = np.flatnonzero(self.active)
        return live[~self.joined[live]]

    def set_status(self, slots: np.ndarray, status: RequestStatus) -> None:
        for s in slots.tolist():
            self.reqs[s].status = status
