"""The contract between scheduler and runner: one frozen plan per iteration.

The runner keeps per-request device state (prepared query, running top-k, IVF probes)
keyed by request id; the plan tells it which requests join (with everything needed to
build that state), which units each request scans now, and which requests leave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class NewRequest:
    """A request joining the running batch; the runner prepares and (IVF) assigns it."""

    request_id: str
    collection: str
    query: np.ndarray
    k: int
    num_probes: int  # IVF probes to assign (ignored for flat)


@dataclass(frozen=True)
class ScanWork:
    """Units one request scans this iteration.

    IVF: probe positions ``[unit_start, unit_end)`` of the request's best-first probe
    list.  Flat: the chunk ids in ``chunks``.
    """

    request_id: str
    collection: str
    unit_start: int = 0
    unit_end: int = 0
    chunks: tuple[int, ...] = ()
    max_vectors: int | None = None  # IVF: scan the longest prefix within this cap
    allow_overshoot: bool = False  # scan >= 1 unit even past the cap (progress guarantee)
    returns_result: bool = False  # return the top-k if the whole planned range got scanned


@dataclass(frozen=True)
class IterationPlan:
    iteration: int
    new_requests: tuple[NewRequest, ...] = ()
    work: tuple[ScanWork, ...] = ()
    finish_partial: tuple[str, ...] = ()  # deadline reached: return best-so-far, then free
    free: tuple[str, ...] = ()  # aborted / rejected: drop state, no result
    budget_vectors: int = 0
    planned_vectors: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.new_requests or self.work or self.finish_partial or self.free)


@dataclass
class RunnerOutput:
    """What the runner reports back after executing a plan."""

    results: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # id -> (scores, ids)
    unit_costs: dict[str, np.ndarray] = field(default_factory=dict)  # new IVF requests: list sizes of probes
    units_end: dict[str, int] = field(default_factory=dict)  # IVF: probe cursor after this iteration
    vectors_scanned: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # id -> message (e.g. collection dropped)
    duration_s: float = 0.0
