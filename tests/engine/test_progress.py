"""The progress table (a slot per request) and the per-collection ride plan (one CSR for every rider)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trinity.engine import RequestStatus, Scheduler, SearchRunner, Stage
from trinity.engine.plan import IterationPlan, RideWork
from trinity.engine.progress import ProgressTable

from .fake_runner import FakeRunner
from .helpers import FakeClock, fixed_budget, make_collections, run_plan
from .test_scheduler import make_req
from .test_window import IVF, joined_requests


def _ride(ids, units_per_rider, completes=None, ranks=None) -> RideWork:
    ptr = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(u) for u in units_per_rider], out=ptr[1:])
    units = np.array([u for us in units_per_rider for u in us], dtype=np.int64)
    completes = np.zeros(len(ids), dtype=bool) if completes is None else np.asarray(completes)
    ranks = np.arange(len(ids), dtype=np.int64) if ranks is None else np.asarray(ranks, dtype=np.int64)
    return RideWork("c", tuple(ids), ptr, units, units.copy(), completes, ranks, np.arange(len(ids), dtype=np.int64))


def joined_setup(n: int, real_runner: bool = False):
    """A scheduler with ample budget, a runner, and ``n`` admitted IVF requests that have not scanned."""
    clock = FakeClock()
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(10_000_000), cols, clock)
    runner = SearchRunner(cols) if real_runner else FakeRunner(cols, clock=clock)
    return clock, sched, runner, joined_requests(clock, sched, runner, n)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=90), st.integers(0, 2**31 - 1))
def test_table_tracks_progress_like_per_request_masks(num_probes, seed):
    """Slots grow and are reused; applying scans keeps counters equal to per-request masks."""
    rng = np.random.default_rng(seed)
    table = ProgressTable()
    alive: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> (costs, seen mask)
    for i, n in enumerate(num_probes):
        costs = rng.integers(0, 50, n)
        table.add([f"r{i}"], rng.permutation(1000)[:n][None], costs[None])
        alive[f"r{i}"] = (costs, np.zeros(n, dtype=bool))
        if rng.random() < 0.3:  # someone finishes: its row is freed and reused
            gone = str(rng.choice(sorted(alive)))
            table.release(gone)
            del alive[gone]
        ids = [rid for rid in sorted(alive) if rng.random() < 0.7 and not alive[rid][1].all()]
        units = [np.sort(rng.choice(np.flatnonzero(~alive[rid][1]),
                                    size=int(rng.integers(1, (~alive[rid][1]).sum() + 1)), replace=False))
                 for rid in ids]
        if ids:
            ride = _ride(ids, units)
            rows = np.array([table.slot_of[rid] for rid in ids])
            for rid, us in zip(ids, units):
                alive[rid][1][us] = True
            done = np.array([alive[rid][1].all() for rid in ids])
            table.apply(rows, ride.ptr, ride.units, done, np.ones(len(ids), dtype=np.int64))
    for rid, (costs, seen) in alive.items():
        row = table.slot_of[rid]
        n = costs.size
        assert table.num_done[row] == seen.sum()
        assert table.remaining[row] == costs[~seen].sum()
        assert (table.seen[row, :n] == seen).all() and table.seen[row, n:].all()  # padding reads as seen
    assert len(table) == len(alive)


def test_ride_subset_and_items_keep_each_riders_units():
    ride = _ride(["a", "b", "c"], [[0, 3], [1], [2, 4, 5]], completes=[False, True, True], ranks=[4, 0, 2])
    assert [(r, w.request_id, w.units, w.returns_result) for r, w in ride.items()] == [
        (4, "a", (0, 3), False), (0, "b", (1,), True), (2, "c", (2, 4, 5), True)]
    sub = ride.subset(np.array([True, False, True]))
    assert sub.request_ids == ("a", "c") and sub.ptr.tolist() == [0, 2, 5]
    assert sub.units.tolist() == [0, 3, 2, 4, 5] and sub.completes.tolist() == [False, True]
    plan = IterationPlan(1, rides=(ride,))
    assert [w.request_id for w in plan.items()] == ["b", "c", "a"] and plan.num_items == 3


def test_riders_progress_through_one_table_and_leave_it_when_done():
    clock, sched, runner, reqs = joined_setup(6)
    table = sched.tables[IVF]
    assert len(table) == 6 and all(r.num_units_done == 0 for r in reqs)
    plan = sched.schedule()
    assert len(plan.rides) == 1 and len(plan.new_requests) == 6  # they join and ride as one CSR
    finished = run_plan(sched, runner, plan)
    assert {r.request_id for r, _, _ in finished} == {r.request_id for r in reqs}
    assert len(table) == 0, "finished requests keep no slot"
    sizes = sched.collections.stats(IVF).unit_sizes
    for r in reqs:  # progress was copied out of the table when they finished
        assert r.status is RequestStatus.FINISHED_COMPLETE and r.num_units_done == r.num_units_total
        assert r.num_iterations == 1 and r.num_vectors_scanned == int(sizes[r.unit_ids].sum())


def test_a_rider_aborted_mid_iteration_frees_its_slot_without_touching_the_table():
    clock, sched, runner, reqs = joined_setup(3)
    plan = sched.schedule()
    out = runner.run(plan)
    sched.abort(reqs[0].request_id)  # while the iteration "ran"
    sched.update_from_output(plan, out)
    assert reqs[0].status is RequestStatus.FINISHED_ABORTED and len(sched.tables[IVF]) == 0
    late = make_req(clock, IVF, nprobe=8, stage=Stage.DECODE, qi=9)
    sched.add_request(late)  # a new request gets a fresh slot
    plan = sched.schedule()
    run_plan(sched, runner, plan)
    assert late.status is RequestStatus.FINISHED_COMPLETE
