"""The iteration cost model's feedback: slow start after light load, fast decrease on overrun."""

from __future__ import annotations

import numpy as np

from trinity.engine import SchedulerConfig
from trinity.engine.cost_model import IterationCostModel
from trinity.engine.plan import IterationPlan, RunnerOutput, ScanWork

TARGET_S = 4e-3


def observe(model: IterationCostModel, iteration: int, planned: int, pairs: int, duration_s: float) -> None:
    """One iteration of one request that planned ``planned`` and scanned ``pairs`` (read once)."""
    plan = IterationPlan(iteration, work=(ScanWork("r", "c", units=(0,)),), budget_vectors=model.budget_vectors,
                         planned_vectors=planned)
    model.observe(plan, RunnerOutput(vectors_scanned={"r": pairs}, vectors_read=pairs, duration_s=duration_s),
                  iteration)


def make_model() -> IterationCostModel:
    return IterationCostModel(SchedulerConfig(target_iteration_ms=TARGET_S * 1e3, initial_budget_vectors=200_000,
                                              min_budget_vectors=1_000, max_budget_vectors=10_000_000))


def test_budget_grows_at_most_1_5x_past_what_ran_within_target():
    """Light load: tiny iterations that run faster per vector than a loaded one would (the
    lists sit in cache).  The fit alone would promise a huge budget; the slow start caps
    it, then lets it grow geometrically while budget-bound iterations stay within target."""
    model = make_model()
    for i in range(1, 41):
        observe(model, i, planned=5_000, pairs=5_000, duration_s=0.25e-3 + 5_000 / 50e6)
    assert model.budget_vectors <= 1.5 * 5_000
    budgets = [model.budget_vectors]
    for i in range(41, 49):  # a burst: every iteration uses its whole budget, within target
        b = model.budget_vectors
        observe(model, i, planned=b, pairs=b, duration_s=min(0.25e-3 + b / 20e6, TARGET_S))
        budgets.append(model.budget_vectors)
    growth = np.array(budgets[1:]) / np.array(budgets[:-1])
    assert (growth <= 1.5 + 1e-9).all() and budgets[-1] > 10 * budgets[0], budgets


def test_an_overrun_cuts_the_budget_at_once():
    model = make_model()
    for i in range(1, 41):  # steady state at the target
        b = model.budget_vectors
        observe(model, i, planned=b, pairs=b, duration_s=0.25e-3 + b / 20e6)
    steady = model.budget_vectors
    b = steady
    observe(model, 41, planned=b, pairs=b, duration_s=2 * TARGET_S)  # the machine got slower
    assert model.budget_vectors <= steady * 0.5 ** 0.5 * 1.01
