"""Search request state, owned by the scheduler.

One progress counter per request (``num_units_done`` of ``num_units_total``) replaces
phases: a *unit* is one probed IVF list or one flat chunk.  The running top-k itself
lives with the runner (device state); the scheduler only tracks progress and policy.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from trinity.engine.progress import ProgressTable
from trinity.errors import ErrorCode, InvalidInput


class Stage(enum.IntEnum):
    """Where a retrieval comes from; lower is more urgent."""

    DECODE = 0
    PREFILL = 1
    BACKGROUND = 2

    @classmethod
    def parse(cls, value: str | int | Stage) -> Stage:
        if isinstance(value, Stage):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and value in cls._value2member_map_:
            return cls(value)
        raise InvalidInput(f"stage: expected one of {[s.name.lower() for s in cls]}, got {value!r}", "stage")


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_COMPLETE = "complete"
    FINISHED_PARTIAL = "partial"  # deadline reached: best-so-far answer
    FINISHED_ABORTED = "aborted"
    FINISHED_REJECTED = "rejected"  # infeasible deadline or overload at admission
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self.name.startswith("FINISHED")


_ids = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_ids)}"


@dataclass
class SearchRequest:
    """One query against one collection, from admission to result.

    One progress counter per request: ``num_units_done`` of ``num_units_total``, where a
    unit is one probed IVF list or one flat chunk.  While the request is active they live
    in its slot of the collection's :class:`~trinity.engine.progress.ProgressTable`; at
    the finish they are copied here.
    """

    collection: str
    query: np.ndarray  # (dim,) float32, as given by the user
    k: int
    nprobe: int | None = None  # IVF probes or a graph's itopk wanted; None = collection default
    stage: Stage = Stage.PREFILL
    deadline: float | None = None  # absolute time.monotonic(); None = no deadline
    request_id: str = field(default_factory=new_request_id)
    arrival_time: float = field(default_factory=time.monotonic)
    search_width: int = 1  # graph collections: nodes a hop expands

    status: RequestStatus = RequestStatus.WAITING
    kind: str = ""  # the collection's kind at admission: "ivf" or "flat"
    num_units_total: int = 0  # probes (IVF) or chunks (flat); set at admission
    num_preemptions: int = 0
    first_scan_time: float | None = None
    finish_time: float | None = None
    unit_ids: np.ndarray | None = None  # probed list ids best first (IVF) or chunk ids (flat), from admission
    admission_seq: int = field(default=-1, repr=False)  # set by the scheduler; breaks priority ties
    message: str = ""  # why it finished the way it did (rejection reason, error, ...)
    code: ErrorCode | None = None  # the error taxonomy's code of a rejection, abort or error
    generation: int = field(default=0, repr=False)  # of its collection at admission (collections.generation)
    slot: int = field(default=-1, repr=False)  # its slot in the collection's progress table while active
    request_slot: int = field(default=-1, repr=False)  # its slot in the scheduler's RequestSlots while active
    _table: ProgressTable | None = field(default=None, repr=False)
    _final: tuple[int, int, int, int] = field(default=(0, 0, 0, 0), repr=False)  # counters after the finish

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def _counter(self, i: int) -> int:
        return self._final[i] if self._table is None else int(self._table._counters[i, self.slot])

    num_units_done = property(lambda self: self._counter(0))
    num_vectors_scanned = property(lambda self: self._counter(2))
    num_iterations = property(lambda self: self._counter(3))

    def remaining_cost(self) -> int:
        """Vectors still to scan."""
        return self._counter(1)

    @property
    def fraction_scanned(self) -> float:
        return 1.0 if self.num_units_total == 0 else self.num_units_done / self.num_units_total

    def attach(self, table: ProgressTable, slot: int, unit_ids: np.ndarray) -> None:
        """Admission: the request's units live in ``slot`` of ``table`` from now on."""
        self.unit_ids, self.num_units_total, self.slot, self._table = unit_ids, len(unit_ids), slot, table

    def detach(self) -> None:
        """The finish: copy the counters out of the table and free the slot."""
        table = self._table
        if table is not None:
            self._final = tuple(table._counters[:4, self.slot].tolist())
            self._table = None
            table.release(self.request_id)


@dataclass(frozen=True)
class SearchResult:
    """What a caller gets back.  ``partial`` is never silent: it says how much was scanned."""

    request_id: str
    ids: np.ndarray  # (k,) int64, -1 padded
    scores: np.ndarray  # (k,) float32, user units (IP / squared L2), sentinel padded
    status: RequestStatus
    fraction_scanned: float
    stage: Stage
    queue_ms: float  # arrival -> first scan
    total_ms: float  # arrival -> finish
    num_iterations: int
    num_preemptions: int
    deadline_missed: bool = False
    message: str = ""
    code: ErrorCode | None = None  # why it is not an answer (rejected, aborted, error); None for answers

    @property
    def partial(self) -> bool:
        return self.status is not RequestStatus.FINISHED_COMPLETE

    @classmethod
    def of(cls, req: SearchRequest, scores: np.ndarray, ids: np.ndarray) -> SearchResult:
        """The result of a finished request."""
        status, finish_time = req.status, req.finish_time
        missed = req.deadline is not None and finish_time > req.deadline and status in (
            RequestStatus.FINISHED_COMPLETE, RequestStatus.FINISHED_PARTIAL)
        first = req.first_scan_time if req.first_scan_time is not None else finish_time
        fraction = 1.0 if status is RequestStatus.FINISHED_COMPLETE else req.fraction_scanned
        return cls(req.request_id, ids, scores, status, fraction, req.stage, (first - req.arrival_time) * 1e3,
                   (finish_time - req.arrival_time) * 1e3, req.num_iterations, req.num_preemptions, missed,
                   req.message, req.code)
