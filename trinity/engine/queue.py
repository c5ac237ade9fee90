"""The waiting queue: admitted requests that have not joined the running set yet.

Priority is ``(aged stage, deadline, arrival)`` when stage-aware (``arrival`` in FIFO
mode), ties broken by admission order.  A waiting request's key changes only when it
crosses an aging boundary, so the queue keeps its order across iterations instead of the
scheduler re-sorting every waiting request each time: arrivals, joins, finishes and
boundary crossings cost O(log n) (plus a list memmove), and a deadline heap finds the
requests that expire.  The scheduler reads only the head.
"""

from __future__ import annotations

import bisect
import heapq

from trinity.engine.request import SearchRequest

Key = tuple[float, ...]


def level(req: SearchRequest, urgent_deadline_s: float) -> int:
    """The request's stage, where a deadline window of at most ``urgent_deadline_s`` counts as decode."""
    if req.deadline is not None and req.deadline - req.arrival_time <= urgent_deadline_s:
        return 0
    return int(req.stage)


def priority_key(req: SearchRequest, now: float, stage_aware: bool, aging_s: float,
                 urgent_deadline_s: float = 0.0) -> Key:
    """``(aged stage, deadline, arrival)`` -- or ``(arrival,)`` in FIFO mode; lower first.

    A waiting request is promoted one stage per ``aging_s`` seconds of waiting (bounded
    starvation), and one whose deadline window is at most ``urgent_deadline_s`` ranks with
    decode-stage work from the start.  NOTE: a request without a deadline gets a virtual
    one (when it would age into the top stage); otherwise, once aged, it would still sort
    after every deadline-bearing request of that stage and starve under a steady decode
    stream.
    """
    if not stage_aware:
        return (req.arrival_time,)
    aged = max(0, level(req, urgent_deadline_s) - int((now - req.arrival_time) / aging_s))
    deadline = req.deadline
    if deadline is None:
        deadline = req.arrival_time + aging_s * (int(req.stage) + 1)
    return (aged, deadline, req.arrival_time)


class WaitQueue:
    """Waiting requests in priority order, maintained incrementally."""

    def __init__(self, stage_aware: bool, aging_s: float, urgent_deadline_s: float = 0.0) -> None:
        self.stage_aware, self.aging_s, self.urgent_deadline_s = stage_aware, aging_s, urgent_deadline_s
        self._order: list[tuple[Key, int]] = []  # sorted (key, admission seq)
        self._entry: dict[str, tuple[Key, int]] = {}  # request id -> its entry in _order
        self._by_seq: dict[int, SearchRequest] = {}
        # NOTE: both heaps delete lazily: an item whose request left (or was re-keyed)
        # no longer matches ``_entry`` and is skipped when popped.
        self._aging: list[tuple[float, int, str]] = []  # (next aging boundary, seq, id)
        self._deadlines: list[tuple[float, int, str]] = []  # (deadline, seq, id)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._entry

    def key(self, req: SearchRequest, now: float) -> Key:
        return priority_key(req, now, self.stage_aware, self.aging_s, self.urgent_deadline_s)

    def push(self, req: SearchRequest, seq: int, now: float) -> None:
        """Queue ``req`` (``seq``: its admission order, the final tie-break)."""
        self._insert(req, seq, now)
        if req.deadline is not None:
            heapq.heappush(self._deadlines, (req.deadline, seq, req.request_id))
        if len(self._deadlines) > 2 * len(self._entry) + 1024:
            # NOTE: requests that joined leave their item behind until its deadline passes;
            # with long deadlines (seconds) at thousands of req/s that is most of the heap.
            self._deadlines = [(self._by_seq[s].deadline, s, rid) for rid, (_, s) in self._entry.items()
                               if self._by_seq[s].deadline is not None]
            heapq.heapify(self._deadlines)

    def remove(self, request_id: str) -> None:
        """Drop a request that joined or finished (no-op if it is not waiting)."""
        entry = self._entry.pop(request_id, None)
        if entry is not None:
            del self._order[bisect.bisect_left(self._order, entry)]
            del self._by_seq[entry[1]]

    def refresh(self, now: float) -> None:
        """Re-key the requests that crossed an aging boundary by ``now``."""
        while self._aging and self._aging[0][0] <= now:
            _, seq, rid = heapq.heappop(self._aging)
            entry = self._entry.get(rid)
            if entry is None or entry[1] != seq:
                continue
            req = self._by_seq[seq]
            self.remove(rid)
            self._insert(req, seq, now)

    def expiring(self, until: float, horizon=None) -> list[SearchRequest]:
        """Waiting requests whose deadline is at or before ``until`` -- or, where ``horizon``
        gives a request its own, earlier bound, at or before that (each returned once)."""
        out, keep = [], []
        while self._deadlines and self._deadlines[0][0] <= until:
            item = heapq.heappop(self._deadlines)
            entry = self._entry.get(item[2])
            if entry is None or entry[1] != item[1]:
                continue
            req = self._by_seq[item[1]]
            if horizon is None or req.deadline <= horizon(req):
                out.append(req)
            else:
                keep.append(item)
        for item in keep:
            heapq.heappush(self._deadlines, item)
        return out

    def head(self, n: int) -> list[tuple[tuple[Key, int], SearchRequest]]:
        """The ``n`` first ``((key, seq), request)`` in priority order."""
        return [(entry, self._by_seq[entry[1]]) for entry in self._order[:n]]

    def _insert(self, req: SearchRequest, seq: int, now: float) -> None:
        key = self.key(req, now)
        entry = (key, seq)
        bisect.insort(self._order, entry)
        self._entry[req.request_id] = entry
        self._by_seq[seq] = req
        if self.stage_aware and key[0] > 0:
            crossed = int(req.stage) - int(key[0])
            # NOTE: never a boundary at or before ``now`` (float rounding at the boundary
            # itself would otherwise re-key the request to the same key for ever).
            boundary = max(req.arrival_time + (crossed + 1) * self.aging_s, now + 1e-6)
            heapq.heappush(self._aging, (boundary, seq, req.request_id))
