"""Sojourn-time admission and per-stage default deadlines."""

from __future__ import annotations

import numpy as np
import pytest

from trinity.engine import OverloadedError, SchedulerConfig, SearchEngine, Stage
from trinity.engine.admission import SojournAdmission
from trinity.index import FlatIndex

from .helpers import FakeClock


def _admission(clock: FakeClock) -> SojournAdmission:
    return SojournAdmission(target_share=0.5, interval_s=0.1, clock=clock)


def _answer(adm: SojournAdmission, clock: FakeClock, stage: Stage, arrival: float, answered: bool = True) -> None:
    adm.observe(stage, arrival, clock() if answered else None, clock())


def test_slow_answers_refuse_what_cannot_be_served_in_time():
    clock = FakeClock()
    adm = _admission(clock)
    arrivals = []
    for _ in range(4):
        arrivals.append(clock())
        adm.admit(Stage.PREFILL, 1.0, clock())
        clock.advance(0.01)
    for a in arrivals[:2]:  # two windows in which answers took ~300 ms
        clock.advance(0.3 - (clock() - a) + 0.1)
        _answer(adm, clock, Stage.PREFILL, a)
    assert adm.delay_s(Stage.PREFILL, clock()) > 0.3
    with pytest.raises(OverloadedError, match="prefill requests take") as e:
        adm.admit(Stage.PREFILL, 0.4, clock())
    assert e.value.retry_after_s >= 1.0
    adm.admit(Stage.PREFILL, 2.0, clock())  # a looser deadline still fits
    adm.admit(Stage.DECODE, 0.02, clock())  # stages queue apart: decode work is not behind prefill work


def test_a_request_stuck_past_its_share_refuses_at_once():
    clock = FakeClock()
    adm = _admission(clock)
    adm.admit(Stage.PREFILL, 1.0, clock())
    clock.advance(0.4)
    adm.admit(Stage.PREFILL, 1.0, clock())  # the oldest has used 40% of its window
    clock.advance(0.2)
    with pytest.raises(OverloadedError):  # now 60%: no answer has come back, none needed
        adm.admit(Stage.PREFILL, 1.0, clock())
    adm.admit(Stage.DECODE, 0.01, clock())
    clock.advance(0.05)
    adm.admit(Stage.DECODE, 0.01, clock())  # past its share, but within an interval: a batch's own queries


def test_a_drained_stage_forgets_and_answers_without_data_do_not_count():
    clock = FakeClock()
    adm = _admission(clock)
    a, b = clock(), clock() + 0.001
    adm.admit(Stage.PREFILL, 10.0, a)
    adm.admit(Stage.PREFILL, 10.0, b)
    clock.advance(0.5)
    _answer(adm, clock, Stage.PREFILL, b, answered=False)  # a rejection: no sojourn reading
    assert adm.delay_s(Stage.PREFILL, clock()) == pytest.approx(0.5)  # the oldest is still out
    _answer(adm, clock, Stage.PREFILL, a)  # the last one out
    assert adm.delay_s(Stage.PREFILL, clock()) == 0.0
    adm.admit(Stage.PREFILL, 0.1, clock())


def test_engine_applies_default_deadlines_and_admission():
    config = SchedulerConfig(default_deadline_ms=(50.0, None, 1000.0), admission_share=0.5)
    engine = SearchEngine(config, start=False)
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    flat = FlatIndex(8)
    flat.add(x)
    engine.add_collection("c", flat)
    now = engine.clock()
    engine.submit("c", x[0], 3, stage="decode")
    engine.submit("c", x[0], 3, stage="prefill")
    engine.submit("c", x[0], 3, stage="background", deadline_ms=7.0)
    deadlines = [req.deadline for _, req in engine._inbox]
    assert deadlines[0] == pytest.approx(now + 0.05, abs=0.01) and deadlines[1] is None
    assert deadlines[2] == pytest.approx(now + 0.007, abs=0.01)
    assert engine.admission.delay_s(Stage.DECODE, engine.clock()) >= 0.0
    results = []
    while engine.scheduler.has_work or engine._inbox:
        results += engine.step()
    assert len(results) == 3
    assert all(engine.admission.delay_s(s, engine.clock()) == 0.0 for s in Stage)  # all answered
    with pytest.raises(ValueError, match="default_deadline_ms"):
        SchedulerConfig(default_deadline_ms=(0.0, None, None))
