"""The iteration cost model's feedback: slow start after light load, fast decrease on overrun."""

from __future__ import annotations

import numpy as np

from trinity.engine import SchedulerConfig
from trinity.engine.cost_model import IterationCostModel, IterationSample

TARGET_S = 4e-3


def observe(model: IterationCostModel, iteration: int, planned: int, pairs: int, duration_s: float,
            saturated: bool = False) -> None:
    """One iteration of one request that planned ``planned`` and scanned ``pairs`` (read once)."""
    model.observe(IterationSample(pairs, pairs, 1, duration_s, planned, model.budget_vectors), iteration,
                  saturated=saturated)


def make_model(**kw) -> IterationCostModel:
    return IterationCostModel(SchedulerConfig(target_iteration_ms=TARGET_S * 1e3, initial_budget_vectors=200_000,
                                              min_budget_vectors=1_000, max_budget_vectors=10_000_000, **kw))


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


def test_saturation_stretches_the_target_and_it_comes_back():
    """A device with 1 ms fixed cost per iteration scanning 20M pairs/s: budget-bound
    (saturated) iterations aim at 1.5x the target, so each spends 5 of 6 ms scanning
    instead of 3 of 4; once no longer saturated, the target returns to 4 ms."""
    model = make_model(saturated_stretch=1.5)

    def run(first: int, n: int, saturated: bool) -> None:
        for i in range(first, first + n):
            b = model.budget_vectors
            observe(model, i, planned=b, pairs=b, duration_s=1e-3 + b / 20e6, saturated=saturated)

    run(1, 60, saturated=False)
    assert model.target_s == TARGET_S
    assert abs(model.budget_vectors - 3e-3 * 20e6) / 60_000 < 0.1
    run(61, 80, saturated=True)
    assert 1.45 * TARGET_S < model.target_s <= 1.5 * TARGET_S
    assert abs(model.budget_vectors - 5e-3 * 20e6) / 100_000 < 0.1, model.budget_vectors
    run(141, 80, saturated=False)
    assert model.target_s < 1.02 * TARGET_S and model.budget_vectors < 0.7 * 5e-3 * 20e6
