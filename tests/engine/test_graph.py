"""Graph collections in the engine: a hop is the unit of work; random join / leave / preempt
schedules give one-shot ``GraphIndex.search`` answers, a deadline returns the best so far."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from trinity.engine import RequestStatus, SearchEngine
from trinity.engine.graph_rows import hop_limit

from .helpers import FakeClock, fixed_budget, index, make_collections, queries, slots_held
from .test_no_loss import TimedRunner, config_strategy, op_strategy, run_and_check

NAMES = ("ivf_ip", "graph_ip")


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=config_strategy, ops=op_strategy(NAMES))
def test_no_graph_request_is_lost_and_complete_answers_are_one_shot_search(config, ops):
    run_and_check(NAMES, config, ops)


def engine_on(budget: int):
    clock = FakeClock()
    cols = make_collections("graph_ip")
    engine = SearchEngine(fixed_budget(budget), collections=cols, runner=TimedRunner(cols, clock), clock=clock,
                          start=False)
    return engine, clock


def drain(engine, clock, dt=0.001, max_steps=2_000):
    out = {}
    for _ in range(max_steps):
        if not (engine.scheduler.has_work or engine._inbox):
            return out
        clock.advance(dt)
        out.update((r.request_id, r) for r in engine.step())
    raise AssertionError("engine still busy")


def test_preempted_graph_queries_resume_where_they_stopped():
    engine, clock = engine_on(budget=160)  # 20 hops of the 16-degree graph per iteration
    q, idx = queries("graph_ip"), index("graph_ip")
    background = [engine.submit("graph_ip", q[i], 10, nprobe=48, stage="background") for i in range(6)]
    results, order = {}, []
    for _ in range(4):
        clock.advance(0.001)
        order += [r.request_id for r in engine.step()]
    decode = engine.submit("graph_ip", q[40], 5, nprobe=16, stage="decode", deadline_ms=1000)
    clock.advance(0.001)
    order += [r.request_id for r in engine.step()]
    results = drain(engine, clock)
    assert decode.request_id in order and not results.keys() & order[:-1], "the decode query went first"
    assert sum(f.result().num_preemptions for f in background) > 0
    for i, f in enumerate(background):
        res = f.result()
        d, ids = idx.search(q[i:i + 1], 10, itopk=48, max_hops=int(hop_limit(48)))
        assert res.status is RequestStatus.FINISHED_COMPLETE and res.num_iterations > 1
        np.testing.assert_array_equal(res.ids, ids[0])
        np.testing.assert_array_equal(res.scores, d[0])
    assert not slots_held(engine.scheduler)


def test_a_deadline_returns_the_best_after_the_hops_done():
    engine, clock = engine_on(budget=160)  # 20 hops per iteration, an iteration every 3 ms
    q, idx = queries("graph_ip"), index("graph_ip")
    fut = engine.submit("graph_ip", q[3], 10, nprobe=256, stage="prefill", deadline_ms=20.0)
    res = drain(engine, clock, dt=0.003)[fut.request_id]
    assert res.status is RequestStatus.FINISHED_PARTIAL and res.partial
    hops = round(res.fraction_scanned * hop_limit(256))
    assert 0 < res.fraction_scanned < 1 and hops == 20 * res.num_iterations
    d, ids = idx.search(q[3:4], 10, itopk=256, max_hops=hops)
    np.testing.assert_array_equal(res.ids, ids[0])
    np.testing.assert_array_equal(res.scores, d[0])


def test_a_decode_query_takes_many_hops_in_one_iteration():
    engine, clock = engine_on(budget=100_000)
    fut = engine.submit("graph_ip", queries("graph_ip")[7], 10, nprobe=32, stage="decode", deadline_ms=50)
    res = drain(engine, clock)[fut.request_id]
    assert res.status is RequestStatus.FINISHED_COMPLETE and res.num_iterations == 1


def test_a_compaction_under_running_searches_restarts_them_and_never_returns_deleted_ids():
    from trinity.engine import Collections
    from trinity.index import GraphIndex

    from .helpers import dataset

    x, q = dataset("graph_ip"), queries("graph_ip")
    idx = GraphIndex(x.shape[1], graph_degree=16)
    idx.add(x)
    clock, cols = FakeClock(), Collections()
    cols.add("g", idx)
    engine = SearchEngine(fixed_budget(160), collections=cols, runner=TimedRunner(cols, clock), clock=clock,
                          start=False)
    futures = [engine.submit("g", q[i], 10, nprobe=64, stage="background") for i in range(4)]
    for _ in range(2):
        clock.advance(0.001)
        engine.step()
    gone = np.arange(0, len(x), 3)
    storage = idx.lists
    idx.remove(gone)
    idx.consolidate()
    assert idx.lists is not storage, "the test needs a compaction"
    drain(engine, clock)
    for f in futures:
        res = f.result()
        assert res.status is RequestStatus.FINISHED_COMPLETE
        assert not np.isin(res.ids, gone).any() and (res.ids >= 0).all()


def test_mixed_k_itopk_and_search_width_in_one_iteration_equal_one_shot_search():
    engine, clock = engine_on(budget=100_000)
    q, idx = queries("graph_ip"), index("graph_ip")
    asks = [(i, k, itopk, width) for i, (k, itopk, width) in
            enumerate([(1, 16, 1), (5, 32, 2), (10, 64, 4), (3, 48, 8), (10, 128, 1), (7, 24, 3)])]
    futures = [engine.submit("graph_ip", q[i], k, nprobe=itopk, stage="prefill", search_width=width)
               for i, k, itopk, width in asks]
    with pytest.raises(ValueError, match="search_width"):
        engine.submit("graph_ip", q[0], 1, search_width=9)
    drain(engine, clock)
    assert engine.scheduler.iteration == 1
    for (i, k, itopk, width), f in zip(asks, futures):
        d, ids = idx.search(q[i:i + 1], k, itopk=itopk, search_width=width, max_hops=int(hop_limit(itopk, width)))
        np.testing.assert_array_equal(f.result().ids, ids[0])
        np.testing.assert_array_equal(f.result().scores, d[0])
