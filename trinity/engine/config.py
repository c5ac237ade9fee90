"""Engine and scheduler configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetConfig:
    """How the iteration budget follows measured iteration times (``cost_model.py``).

    Attributes:
        min_fit_vectors: below this many vectors per iteration the fit says nothing about scanning.
        refit_every: iterations between least-squares refits (a fit costs ~0.1 ms).
        bound_share: a plan that used this share of its budget was budget-bound.
        gain_exponent: per budget-bound iteration the gain moves by (target / observed) ** this.
        min_gain / max_gain: clamp of that feedback gain.
        max_read_weight: a vector read costs at most this many (query, vector) pair scans.
        overrun: an iteration longer than this multiple of the target is an overrun ...
        decrease_exponent: ... and moves the gain by (target / observed) ** this at once.
        trust_factor: slow start: the budget is at most this multiple of the largest volume
            that recently ran within the target ...
        trust_window: ... among this many recent iterations.
    """

    min_fit_vectors: int = 1024
    refit_every: int = 4
    bound_share: float = 0.8
    gain_exponent: float = 0.2
    min_gain: float = 0.25
    max_gain: float = 8.0
    max_read_weight: float = 32.0
    overrun: float = 1.25
    decrease_exponent: float = 0.5
    trust_factor: float = 1.5
    trust_window: int = 16


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the stage-aware, deadline-driven continuous-batching scheduler.

    Attributes:
        target_iteration_ms: wanted duration of one iteration; the vector budget adapts
            to it from measured iteration times (a few ms on CPU, 1-2 ms on GPU).
        initial_budget_vectors: budget before any measurement.
        min_budget_vectors / max_budget_vectors: clamp for the adaptive budget.
        max_num_running: requests holding runner state at once (like ``max_num_seqs``).
        max_num_waiting: bound of the admission queue; beyond it requests are rejected.
        stage_aware: ``False`` gives FIFO continuous batching (the ablation baseline).
        aging_s: a waiting request is promoted one stage per ``aging_s`` seconds of
            waiting, which bounds starvation of background work.
        deadline_policy: ``"partial"`` returns best-so-far at the deadline;
            ``"reject"`` also rejects at admission requests that clearly cannot finish.
        budget_ewma: smoothing of the measured scan rate.
        urgent_share: under load a request with more than this share of its deadline window
            left rides along on units read for others instead of claiming its own (decode
            level and requests without a deadline always claim).
        urgent_deadline_ms: a request whose deadline window (deadline - arrival) is at most
            this ranks with decode-stage work, whatever its stage: a cache lookup with a
            20 ms deadline issued before a prefill cannot wait for prefill work either.
            ``0`` ranks by stage alone.
        saturated_stretch: while the engine is saturated (budget-bound iterations), the
            target duration grows smoothly up to this multiple of ``target_iteration_ms``:
            longer iterations spread the fixed per-iteration cost (planning, bookkeeping)
            over more scanning.  ``1`` keeps the target fixed.
        default_deadline_ms: deadline of a request submitted without one, per stage
            (decode, prefill, background); ``None`` leaves it without a deadline.  A
            server sets these so that no search outlives its usefulness.
        admission_share: refuse a request at submission when its stage's recent sojourn
            (arrival to answer) exceeds this share of its deadline window
            (``admission.py``); ``None`` admits up to ``max_num_waiting``.
        admission_interval_ms: the window of that sojourn reading.
        max_num_waiting_considered: waiting requests a plan reads from the head of the
            queue: bounds planning under a backlog (few more could start in one iteration).
        switch_interval_ms: the interpreter's GIL switch interval while the loop runs: the
            loop gives up the GIL in each scan, and a busy submitter, resolver or server thread
            keeps it for up to this long (CPython's 5 ms would stall whole iterations).
        idle_wait_ms: how long an idle loop sleeps before it looks at the inbox again.
        budget: how the iteration budget follows measured iteration times.
    """

    target_iteration_ms: float = 4.0
    initial_budget_vectors: int = 200_000
    min_budget_vectors: int = 4_096
    max_budget_vectors: int = 8_000_000
    max_num_running: int = 64
    max_num_waiting: int = 20_000
    stage_aware: bool = True
    aging_s: float = 0.25
    deadline_policy: str = "partial"
    budget_ewma: float = 0.2
    urgent_share: float = 0.5
    saturated_stretch: float = 1.5
    urgent_deadline_ms: float = 30.0
    default_deadline_ms: tuple[float | None, float | None, float | None] = (None, None, None)
    admission_share: float | None = None
    admission_interval_ms: float = 50.0
    max_num_waiting_considered: int = 256
    switch_interval_ms: float = 0.1
    idle_wait_ms: float = 50.0
    budget: BudgetConfig = BudgetConfig()

    def __post_init__(self) -> None:
        if self.deadline_policy not in ("partial", "reject"):
            raise ValueError("deadline_policy: expected 'partial' or 'reject'")
        if not 0 < self.min_budget_vectors <= self.initial_budget_vectors <= self.max_budget_vectors:
            raise ValueError("budget: need 0 < min <= initial <= max")
        if self.saturated_stretch < 1.0:
            raise ValueError("saturated_stretch: expected >= 1 (a multiple of target_iteration_ms)")
        if self.urgent_deadline_ms < 0:
            raise ValueError("urgent_deadline_ms: expected >= 0")
        if not 0.0 <= self.urgent_share <= 1.0:
            raise ValueError("urgent_share: expected a fraction in [0, 1]")
        if len(self.default_deadline_ms) != 3 or any(d is not None and not d > 0 for d in self.default_deadline_ms):
            raise ValueError("default_deadline_ms: expected (decode, prefill, background), each > 0 or None")
        if self.admission_share is not None and not self.admission_share > 0 or self.admission_interval_ms <= 0:
            raise ValueError("admission_share and admission_interval_ms: expected > 0")
        if self.max_num_waiting_considered < 1:
            raise ValueError("max_num_waiting_considered: expected >= 1")
        if self.switch_interval_ms <= 0 or self.idle_wait_ms <= 0:
            raise ValueError("switch_interval_ms and idle_wait_ms: expected > 0")
        if self.target_iteration_ms <= 0 or self.max_num_running < 1 or self.max_num_waiting < 1:
            raise ValueError("target_iteration_ms, max_num_running and max_num_waiting must be positive")
