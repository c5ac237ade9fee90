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
    """One query against one collection, from admission to result."""

    collection: str
    query: np.ndarray  # (dim,) float32, as given by the user
    k: int
    nprobe: int | None = None  # IVF probes wanted; None = collection default
    stage: Stage = Stage.PREFILL
    deadline: float | None = None  # absolute time.monotonic(); None = no deadline
    request_id: str = field(default_factory=new_request_id)
    arrival_time: float = field(default_factory=time.monotonic)

    status: RequestStatus = RequestStatus.WAITING
    kind: str = ""  # the collection's kind at admission: "ivf" or "flat"
    num_units_total: int = 0  # probes (IVF) or chunks (flat) wanted; set at admission
    num_preemptions: int = 0
    first_scan_time: float | None = None
    finish_time: float | None = None
    unit_costs: np.ndarray | None = None  # vectors per unit (IVF: probed list sizes), known after assignment
    unit_ids: np.ndarray | None = None  # IVF: probed list ids, best first, known after assignment
    seen: np.ndarray | None = None  # flat: which chunks this request has scanned (from admission)
    est_unit_cost: float = 0.0  # vectors per unit before assignment is known
    admission_seq: int = field(default=-1, repr=False)  # set by the scheduler; breaks priority ties
    message: str = ""  # why it finished the way it did (rejection reason, error, ...)
    code: ErrorCode | None = None  # the error taxonomy's code of a rejection, abort or error
    generation: int = field(default=0, repr=False)  # of its collection at admission (collections.generation)
    # NOTE: progress counters.  An assigned IVF request's progress lives in a row of its
    # collection's ProgressTable until it finishes (``attach`` / ``detach``); the fields
    # hold what is not there (a flat request's, a newcomer's first iteration, the rest
    # after it finished).  Read them through the properties.
    _units_done: int = field(default=0, repr=False)
    _vectors: int = field(default=0, repr=False)
    _iterations: int = field(default=0, repr=False)
    _remaining: int = field(default=0, repr=False)
    _table: ProgressTable | None = field(default=None, repr=False)
    _row: int = field(default=-1, repr=False)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def assigned(self) -> bool:
        """IVF: its probes are known (it joined; progress is in a table row)."""
        return self.unit_ids is not None

    @property
    def progress_row(self) -> int:
        """The request's row in its collection's progress table (IVF, while joined)."""
        return self._row

    @property
    def num_units_done(self) -> int:
        return self._units_done if self._table is None else int(self._table.num_done[self._row])

    @property
    def num_vectors_scanned(self) -> int:
        return self._vectors + (0 if self._table is None else int(self._table.num_vectors[self._row]))

    @property
    def num_iterations(self) -> int:
        return self._iterations + (0 if self._table is None else int(self._table.num_iterations[self._row]))

    @property
    def num_units_left(self) -> int:
        return self.num_units_total - self.num_units_done

    @property
    def fraction_scanned(self) -> float:
        return 1.0 if self.num_units_total == 0 else self.num_units_done / self.num_units_total

    def remaining_cost(self) -> int:
        """Vectors still to scan (estimated before assignment)."""
        if self._table is not None:
            return int(self._table.remaining[self._row])
        if self.unit_costs is None:
            return int(round(self.num_units_left * self.est_unit_cost))
        return self._remaining

    def attach(self, table: ProgressTable, unit_ids: np.ndarray, unit_costs: np.ndarray, num_scanned: int) -> None:
        """IVF: the probes are known (list ids best first, their sizes) and the first
        ``num_scanned`` of them were scanned; progress moves to a row of ``table``."""
        self.unit_ids, self.unit_costs = unit_ids, unit_costs
        self.num_units_total = len(unit_costs)
        self._row = table.add(self.request_id, unit_ids, unit_costs, num_scanned)
        self._table = table

    def detach(self) -> None:
        """Copy the progress out of the table and free the row (when the request finishes)."""
        table, row = self._table, self._row
        if table is None:
            return
        self._units_done = int(table.num_done[row])
        self._vectors += int(table.num_vectors[row])
        self._iterations += int(table.num_iterations[row])
        self._remaining = int(table.remaining[row])
        self._table, self._row = None, -1
        table.release(self.request_id)

    def count_iteration(self, vectors_scanned: int) -> None:
        """An iteration in which the request scanned outside its table row (flat, a newcomer)."""
        self._vectors += vectors_scanned
        self._iterations += 1

    def mark_seen(self, positions) -> None:
        """Flat: record scanned chunks; update the progress counter."""
        fresh = np.asarray(positions, dtype=np.int64)
        was = self.seen[fresh]
        if was.any():  # NOTE: plans name unseen units only; this keeps a repeat from counting twice
            fresh = fresh[~was]
        self.seen[fresh] = True
        self._units_done += fresh.size


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
