"""Admission by sojourn time: a stage takes new work only while its requests finish in time.

A fixed bound on queued requests says nothing about how long they take: the same count
is harmless for a cheap collection and seconds of backlog for an expensive one.  This
follows CoDel's reading of a queue instead.  Per stage it keeps the smallest *sojourn*
(arrival to answer) among the requests answered in the last ``interval_s``: a burst
passes through and leaves that minimum small; a standing backlog -- waiting requests,
or a running set so large that each one's share of the scan budget stretches it --
raises it.  A request is refused at once (:class:`OverloadedError`) when that minimum
exceeds ``target_share`` of its deadline window, or when the oldest request of the
stage still unanswered has already used that share of its own (either at least one
interval): it would most likely come back late or partial.  The second reading reacts at once, the first only once
answers come back.  A stage with nothing outstanding admits.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Callable

from trinity.engine.request import Stage
from trinity.errors import ErrorCode, TrinityError


class OverloadedError(TrinityError):
    """The engine refused a request at admission; ``retry_after_s`` hints when to retry."""

    code = ErrorCode.OVERLOADED

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class SojournAdmission:
    """Per stage: the windowed minimum sojourn of answered requests and the oldest request
    still unanswered.  ``admit`` from any thread, ``observe`` from the engine loop."""

    def __init__(self, target_share: float, interval_s: float, clock: Callable[[], float]) -> None:
        self.target_share, self.interval_s, self.clock = target_share, interval_s, clock
        now = clock()
        self._lock = threading.Lock()
        self._start = [now] * len(Stage)  # the current window of each stage
        self._low = [math.inf] * len(Stage)  # its smallest sojourn so far
        self._last_low = [0.0] * len(Stage)  # the smallest sojourn of the last complete window
        self._waiting: list[deque[tuple[float, float | None]]] = [deque() for _ in Stage]  # (arrival, window)
        self._answered: list[Counter[float]] = [Counter() for _ in Stage]  # arrivals answered out of order

    def _threshold(self, window_s: float) -> float:
        # NOTE: never below an interval: a short window is judged by whether requests make it,
        # not by scheduling jitter (and the queries of one batch must not judge each other).
        return max(self.target_share * window_s, self.interval_s)

    def _oldest(self, stage: Stage) -> tuple[float, float | None] | None:
        q, answered = self._waiting[stage], self._answered[stage]
        while q and answered[q[0][0]]:
            answered[q[0][0]] -= 1
            q.popleft()
        return q[0] if q else None

    def delay_s(self, stage: Stage, now: float) -> float:
        """The sojourn a new request of ``stage`` should expect (0 with nothing outstanding)."""
        with self._lock:
            oldest = self._oldest(stage)
            return 0.0 if oldest is None else max(self._last_low[stage], now - oldest[0])

    def admit(self, stage: Stage, window_s: float | None, arrival: float) -> None:
        """Count the request in, or raise :class:`OverloadedError`."""
        with self._lock:
            oldest = self._oldest(stage)
            if oldest is not None:
                age = arrival - oldest[0]
                stuck = oldest[1] is not None and age > self._threshold(oldest[1])
                slow = window_s is not None and self._last_low[stage] > self._threshold(window_s)
                if stuck or slow:
                    delay = max(self._last_low[stage], age)
                    raise OverloadedError(
                        f"overloaded: {stage.name.lower()} requests take {delay * 1e3:.0f} ms or more, over "
                        f"{self.target_share:g} of their deadline", retry_after_s=max(1.0, delay))
            self._waiting[stage].append((arrival, window_s))

    def observe(self, stage: Stage, arrival: float, answered_at: float | None, now: float) -> None:
        """The request of ``stage`` that arrived at ``arrival`` finished: answered at
        ``answered_at``, or ``None`` without an answer (rejected, aborted, failed: says
        nothing of the sojourn)."""
        with self._lock:
            self._answered[stage][arrival] += 1
            if self._oldest(stage) is None:  # nothing outstanding: no standing queue is left (CoDel)
                self._start[stage], self._low[stage], self._last_low[stage] = now, math.inf, 0.0
                return
            if answered_at is None:
                return
            if now - self._start[stage] >= self.interval_s:
                self._last_low[stage] = self._low[stage] if self._low[stage] < math.inf else answered_at - arrival
                self._start[stage], self._low[stage] = now, math.inf
            self._low[stage] = min(self._low[stage], answered_at - arrival)
