"""The iteration cost model: how many vectors fit in one target-length iteration.

Iteration time is fitted as ``a + b * pairs + c * reads + d * items`` over recent
iterations -- ``pairs`` are (query, vector) scans, ``reads`` the distinct vectors read
(a list shared by several requests is read once), ``items`` the requests touched -- and
the next budget is what fills ``target_iteration_ms``, corrected by a feedback gain from
budget-bound iterations (cut at once after an overrun) and capped by a slow start (at
most 1.5x the largest volume that recently ran within the target).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from trinity.engine.config import SchedulerConfig
from trinity.engine.plan import IterationPlan, RunnerOutput


@dataclass(frozen=True)
class IterationSample:
    """What one iteration (all its parts) planned and took."""

    num_pairs: int  # (query, vector) pairs scanned
    num_reads: int  # distinct vectors read
    num_items: int  # requests with work plus newcomers
    duration_s: float
    planned_vectors: int
    budget_vectors: int

    @classmethod
    def of(cls, plan: IterationPlan, out: RunnerOutput, before: IterationSample | None = None) -> IterationSample:
        """The sample of ``plan`` run as ``out``, added to the sample of its head (``before``)."""
        s = cls(out.num_vectors_scanned, out.vectors_read, plan.num_items + len(plan.new_requests), out.duration_s,
                plan.planned_vectors, plan.budget_vectors)
        if before is None:
            return s
        return cls(s.num_pairs + before.num_pairs, s.num_reads + before.num_reads, s.num_items + before.num_items,
                   s.duration_s + before.duration_s, s.planned_vectors + before.planned_vectors, s.budget_vectors)

class IterationCostModel:
    """Budget, scan rate and read weight, adapted from measured iteration durations."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._b = config.budget
        self.budget_vectors = config.initial_budget_vectors  # pair equivalents per iteration
        self.scan_rate: float | None = None  # (query, vector) pairs per second, fitted
        self.iteration_s = config.target_iteration_ms / 1e3  # EWMA of observed iteration durations
        self.read_weight = 0.0  # cost of reading a vector / scanning a (query, vector) pair; fitted
        self._samples: deque[tuple[int, int, int, float]] = deque(maxlen=64)  # (pairs, reads, items, seconds)
        self._items = 0.0  # EWMA of work items per iteration
        self._fit_budget = float(config.initial_budget_vectors)
        self._gain = 1.0  # feedback correction of the fit, from budget-bound iterations
        self._proven: deque[float] = deque(maxlen=config.budget.trust_window)  # planned volumes, scaled to fit the target
        self._capped = False  # the trust region, not the fit, set the budget
        self._load = 0.0  # EWMA of saturated (budget-bound) iterations, 0..1

    @property
    def target_s(self) -> float:
        """The iteration duration the budget aims at: ``target_iteration_ms``, stretched
        towards ``saturated_stretch`` times it while the engine is saturated.

        Longer saturated iterations spread the fixed per-iteration cost over more scanning;
        smoothed, so the budget does not flip between two targets.
        """
        return self.config.target_iteration_ms / 1e3 * (1.0 + (self.config.saturated_stretch - 1.0) * self._load)

    def observe(self, sample: IterationSample, iteration: int, saturated: bool = False,
                step_s: float | None = None) -> None:
        """Fit ``duration ~ a + b * pairs + c * reads + d * items`` over recent iterations
        and size the budget so a full iteration lasts ``target_s``.

        ``pairs`` are (query, vector) scans, ``reads`` the distinct vectors read; the
        budget is in pair equivalents, a read weighing ``c / b`` (``read_weight``).

        NOTE: a plain vectors/duration rate charges fixed per-iteration and per-request
        costs to the scan, so a smaller budget looks slower still and the budget spirals
        down; separating the terms keeps it stable at light and heavy load alike.
        """
        if sample.duration_s <= 0:
            return
        a = self.config.budget_ewma
        self._load = (1 - a) * self._load + a * float(saturated)
        target = self.target_s
        items, scanned = sample.num_items, sample.num_pairs
        # NOTE: clamp outliers (a JIT compile, a page-in after idling) before fitting or
        # smoothing: one slow iteration must not make every deadline look unreachable.
        seconds = min(sample.duration_s, 4 * target)
        self._samples.append((scanned, sample.num_reads, items, seconds))
        self._items = (1 - a) * self._items + a * items
        # NOTE: deadlines are checked against observed iteration times -- the whole step,
        # planning included (``step_s``) -- not against the fit's prediction: with tiny
        # collections the fit is degenerate (a clamped budget would "predict" iterations
        # hundreds of ms long and expire every request).
        self.iteration_s = (1 - a) * self.iteration_s + a * min(max(step_s or 0.0, seconds), 4 * target)
        self._proven.append(sample.planned_vectors * min(1.0, target / sample.duration_s))
        if sample.planned_vectors >= self._b.bound_share * sample.budget_vectors:
            # NOTE: a budget-bound iteration shows what the budget really buys; correct the
            # fit towards the target duration (the regression extrapolates badly from the
            # short iterations of light load, and a budget it underestimates starves work).
            # An overrun is corrected at once, a shortfall slowly (and not while the slow
            # start caps the budget: short capped iterations say nothing about the fit).
            if seconds > self._b.overrun * target:
                self._gain *= (target / seconds) ** self._b.decrease_exponent
            elif not self._capped:
                self._gain *= (target / max(seconds, 1e-6)) ** self._b.gain_exponent
            self._gain = min(max(self._gain, self._b.min_gain), self._b.max_gain)
        self._set_budget()
        if len(self._samples) < 8 or iteration % self._b.refit_every:
            return
        data = np.asarray(self._samples, dtype=np.float64)
        if data[:, 0].max() < self._b.min_fit_vectors:
            return  # tiny scans say nothing about the scan rate: keep the current budget
        fixed, per_pair, per_read, per_item = _fit(data, [0, 1, 2])
        if not per_pair > 0 or per_read < 0:  # reads and pairs too collinear to separate
            fixed, per_pair, per_item = _fit(data, [0, 2])
            per_read = self.read_weight * per_pair
            if not per_pair > 0:
                return  # degenerate window (constant scans): keep the current budget
        fixed, per_item = max(fixed, 0.0), max(per_item, 0.0)
        self.read_weight = (1 - a) * self.read_weight + a * min(per_read / per_pair, self._b.max_read_weight)
        self.scan_rate = 1.0 / per_pair
        self._fit_budget = (target - fixed - per_item * self._items) / per_pair
        self._set_budget()

    def _set_budget(self) -> None:
        budget = self._fit_budget * self._gain
        # Slow start: the fit extrapolates from light load; grow at most trust_factor past
        # what actually ran within target.
        cap = self._b.trust_factor * max(max(self._proven, default=0.0), self.config.min_budget_vectors)
        self._capped, budget = budget > cap, min(budget, cap)
        self.budget_vectors = int(min(max(budget, self.config.min_budget_vectors), self.config.max_budget_vectors))


def _fit(data: np.ndarray, cols: list[int]) -> np.ndarray:
    """Least squares of iteration seconds (last column) on ``1`` and the ``cols`` features:
    ``[intercept, coefficient per feature]`` (features scaled to [0, 1] for conditioning)."""
    scale = np.maximum(data[:, cols].max(axis=0), 1.0)
    design = np.column_stack([np.ones(len(data)), data[:, cols] / scale])
    return np.linalg.lstsq(design, data[:, -1], rcond=None)[0] / np.r_[1.0, scale]
