"""Seeded open-loop workloads of retrieval request classes (reused by the engine bench and
the cluster simulator).

A :class:`RequestClass` is one kind of retrieval a PD-disaggregated serving stack issues
(decode-time lookups, prefill RAG, cache lookups) with its ``k``, ``nprobe``, stage and
deadline.  :func:`poisson_schedule` draws a seeded Poisson arrival stream mixing the
classes by weight; :class:`OpenLoopDriver` replays it in real time from one thread,
never waiting for results, and records *scheduled* arrival, actual submission and
completion times so latency includes any generator lag (no coordinated omission).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CLASSES", "DEFAULT_TTFT_SLO_MS", "DEFAULT_RAG_SHARE", "OpenLoopDriver", "RequestClass",
    "RunRecord", "Schedule", "Status", "default_classes", "parse_class", "poisson_schedule",
]

#: Default TTFT SLO of a prefill request and the share of it retrieval may use.
DEFAULT_TTFT_SLO_MS = 500.0
DEFAULT_RAG_SHARE = 0.3


@dataclass(frozen=True)
class RequestClass:
    """One kind of retrieval request.

    Attributes:
        name: label used in tables (``decode``, ``rag``, ``cache``...).
        stage: engine stage, ``decode`` | ``prefill`` | ``background``.
        k: results wanted.
        nprobe: IVF lists probed.
        deadline_ms: latency budget from arrival; a result after it is a miss.
        weight: share of the stream (weights are normalised).
    """

    name: str
    stage: str
    k: int
    nprobe: int
    deadline_ms: float
    weight: float

    def __post_init__(self) -> None:
        if self.stage not in ("decode", "prefill", "background"):
            raise ValueError(f"class {self.name!r}: stage must be decode, prefill or background")
        if self.k < 1 or self.nprobe < 1:
            raise ValueError(f"class {self.name!r}: k and nprobe must be >= 1")
        if not (self.deadline_ms > 0 and math.isfinite(self.deadline_ms)):
            raise ValueError(f"class {self.name!r}: deadline_ms must be a positive number")
        if not self.weight >= 0:
            raise ValueError(f"class {self.name!r}: weight must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_classes(ttft_slo_ms: float = DEFAULT_TTFT_SLO_MS, rag_share: float = DEFAULT_RAG_SHARE,
                    decode_deadline_ms: float = 20.0, cache_deadline_ms: float = 20.0) -> tuple[RequestClass, ...]:
    """The issue's mix: 50% decode (k=4, nprobe 8, 20 ms), 30% prefill RAG (k=32, nprobe
    128, ``rag_share`` of the TTFT SLO -- 150 ms by default), 20% cache (k=1, nprobe 4, 20 ms)."""
    return (
        RequestClass("decode", "decode", 4, 8, decode_deadline_ms, 0.5),
        RequestClass("rag", "prefill", 32, 128, ttft_slo_ms * rag_share, 0.3),
        RequestClass("cache", "prefill", 1, 4, cache_deadline_ms, 0.2),
    )


DEFAULT_CLASSES = default_classes()


def parse_class(spec: str) -> RequestClass:
    """Parse ``name:stage:k:nprobe:deadline_ms:weight`` (e.g. ``rag:prefill:32:128:150:0.3``)."""
    parts = spec.split(":")
    if len(parts) != 6:
        raise ValueError(f"class spec {spec!r}: expected name:stage:k:nprobe:deadline_ms:weight")
    name, stage, k, nprobe, deadline, weight = parts
    try:
        return RequestClass(name, stage.lower(), int(k), int(nprobe), float(deadline), float(weight))
    except ValueError as e:
        raise ValueError(f"class spec {spec!r}: {e}") from None


@dataclass(frozen=True)
class Schedule:
    """A precomputed open-loop stream: arrival offsets (s, ascending), class and query per request."""

    rate: float
    duration_s: float
    times: np.ndarray  # (n,) float64 seconds from stream start
    cls: np.ndarray  # (n,) int index into classes
    query: np.ndarray  # (n,) int index into the query pool
    classes: tuple[RequestClass, ...]

    def __len__(self) -> int:
        return int(self.times.size)


def poisson_schedule(rate: float, duration_s: float, classes: Sequence[RequestClass], num_queries: int,
                     seed: int = 0) -> Schedule:
    """Poisson arrivals at ``rate`` req/s over ``duration_s``; classes drawn by weight and
    queries uniformly from ``num_queries`` (all seeded)."""
    if rate <= 0 or duration_s <= 0 or num_queries < 1 or not classes:
        raise ValueError("poisson_schedule: need rate > 0, duration_s > 0, num_queries >= 1 and classes")
    w = np.array([c.weight for c in classes], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("poisson_schedule: class weights sum to zero")
    rng = np.random.default_rng([seed, int(rate * 1000)])
    n_max = int(rate * duration_s + 10 * math.sqrt(rate * duration_s) + 10)
    times = np.cumsum(rng.exponential(1.0 / rate, n_max))
    while times[-1] < duration_s:  # practically never: extend the tail
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, n_max))])
    times = times[times < duration_s]
    cls = rng.choice(len(classes), size=times.size, p=w / w.sum())
    query = rng.integers(0, num_queries, size=times.size)
    return Schedule(float(rate), float(duration_s), times, cls.astype(np.int64), query.astype(np.int64),
                    tuple(classes))


class Status:
    """Per-request outcome codes in :class:`RunRecord`."""

    PENDING = 0
    COMPLETE = 1
    PARTIAL = 2  # best-so-far answer at the deadline
    REJECTED = 3  # refused at admission (overload / infeasible deadline)
    ERROR = 4
    UNFINISHED = 5  # still outstanding when the drain cap ran out

    NAMES = {0: "pending", 1: "complete", 2: "partial", 3: "rejected", 4: "error", 5: "unfinished"}


@dataclass
class RunRecord:
    """Per-request timestamps (``time.monotonic`` seconds) and outcomes of one stream."""

    schedule: Schedule
    t0: float = 0.0  # monotonic time of stream start; scheduled arrival i = t0 + times[i]
    t_submit: np.ndarray = field(default=None)  # type: ignore[assignment]
    t_done: np.ndarray = field(default=None)  # type: ignore[assignment]
    status: np.ndarray = field(default=None)  # type: ignore[assignment]
    fraction: np.ndarray = field(default=None)  # type: ignore[assignment]
    stream_end: float = 0.0  # when the generator submitted its last request
    results: list | None = None  # optional per-request payload (e.g. result ids), set by ``complete``

    def __post_init__(self) -> None:
        n = len(self.schedule)
        if self.t_submit is None:
            self.t_submit = np.full(n, np.nan)
            self.t_done = np.full(n, np.nan)
            self.status = np.zeros(n, dtype=np.int8)
            self.fraction = np.ones(n, dtype=np.float32)
        if self.results is None:
            self.results = [None] * n

    def complete(self, i: int, status: int = Status.COMPLETE, fraction: float = 1.0, result: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Record request ``i`` as finished now (safe from any thread: element writes)."""
        self.t_done[i] = clock()
        self.fraction[i] = fraction
        self.results[i] = result
        self.status[i] = status

    @property
    def outstanding(self) -> int:
        return int((self.status == Status.PENDING).sum())

    def mark_unfinished(self) -> int:
        """Mark every still-pending request :attr:`Status.UNFINISHED`; return how many."""
        pending = self.status == Status.PENDING
        self.status[pending] = Status.UNFINISHED
        return int(pending.sum())

    def latency_ms(self) -> np.ndarray:
        """Completion minus *scheduled* arrival, ms (NaN where not finished)."""
        return (self.t_done - (self.t0 + self.schedule.times)) * 1e3

    def submit_lag_ms(self) -> np.ndarray:
        return (self.t_submit - (self.t0 + self.schedule.times)) * 1e3


class OpenLoopDriver:
    """Replays a :class:`Schedule` in real time from one thread, never waiting on results.

    ``submit(i, record, lag_s)`` is called for request ``i`` once its scheduled time has
    come; ``lag_s`` is how late the submission is (the caller may shorten a deadline by
    it, as a client holding an absolute deadline would).  It must not block; it arranges
    for ``record.complete(i, ...)`` to be called when the request finishes.
    """

    def __init__(self, schedule: Schedule, submit: Callable[[int, RunRecord, float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.schedule = schedule
        self.submit = submit
        self.clock = clock
        self.record = RunRecord(schedule)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, delay_s: float = 0.01) -> RunRecord:
        self.record.t0 = self.clock() + delay_s
        self._thread = threading.Thread(target=self._run, name="open-loop-driver", daemon=True)
        self._thread.start()
        return self.record

    def _run(self) -> None:
        rec, times, clock = self.record, self.schedule.times, self.clock
        t0 = rec.t0
        try:
            for i in range(times.size):
                due = t0 + times[i]
                while (wait := due - clock()) > 0:  # never early; oversleep counts as lag
                    time.sleep(wait)
                now = clock()
                rec.t_submit[i] = now
                self.submit(i, rec, max(0.0, now - due))
        except BaseException as e:  # noqa: BLE001 - surfaced by join()
            self.error = e
        finally:
            rec.stream_end = clock()

    def join(self) -> RunRecord:
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        return self.record

    def wait_done(self, cap_s: float, poll_s: float = 0.005) -> bool:
        """After :meth:`join`, wait up to ``cap_s`` for every request to finish."""
        end = self.clock() + cap_s
        while self.record.outstanding and self.clock() < end:
            time.sleep(poll_s)
        return self.record.outstanding == 0
