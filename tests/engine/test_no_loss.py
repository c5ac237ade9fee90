"""Property: whatever the interleaving of arrivals, aborts, steps and (fake) time, every
submitted request resolves exactly once, nothing is lost, no state leaks, and complete
answers are exactly ``index.search``."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trinity.engine import RequestStatus, SchedulerConfig, SearchEngine, SearchResult, SearchRunner
from trinity.index import IVFIndex

from .helpers import FakeClock, assert_matches, index, make_collections, queries, reference_many, slots_held

STAGES = ["decode", "prefill", "background"]
ALLOWED = {RequestStatus.FINISHED_COMPLETE, RequestStatus.FINISHED_PARTIAL, RequestStatus.FINISHED_ABORTED,
           RequestStatus.FINISHED_REJECTED}
STALL_STEPS = 100


class TimedRunner(SearchRunner):
    """The real runner with a deterministic duration (``1e-4 s + vectors / 2e6``) that
    also advances the fake clock, so runs replay exactly.  ``meanwhile``: calls made after
    the next run, as if they came from other threads while a part of an iteration ran."""

    def __init__(self, collections, clock: FakeClock) -> None:
        super().__init__(collections)
        self.clock = clock
        self.meanwhile: list = []

    def run(self, plan):
        out = super().run(plan)
        out.duration_s = 1e-4 + out.num_vectors_scanned / 2e6
        self.clock.advance(out.duration_s)
        calls, self.meanwhile = self.meanwhile, []
        for call in calls:
            call()
        return out


def op_strategy(names):
    submit = st.tuples(st.just("submit"), st.sampled_from(names), st.integers(0, 63), st.integers(1, 20),
                       st.one_of(st.none(), st.integers(1, 70)), st.sampled_from(STAGES),
                       st.one_of(st.none(), st.floats(0.5, 60.0)), st.booleans())  # last: during a run
    abort = st.tuples(st.just("abort"), st.integers(0, 10_000))
    step = st.tuples(st.just("step"), st.floats(0.0, 0.02))
    return st.lists(st.one_of(submit, submit, abort, step, step), min_size=6, max_size=50)


def make_config(budget, waiting, policy, aging, running, stage_aware) -> SchedulerConfig:
    if budget == "adaptive":  # adapts to TimedRunner's deterministic durations
        budget_kw = dict(initial_budget_vectors=2_000, min_budget_vectors=256, max_budget_vectors=50_000,
                         target_iteration_ms=2.0)
    else:
        budget_kw = dict(initial_budget_vectors=budget, min_budget_vectors=budget, max_budget_vectors=budget)
    return SchedulerConfig(max_num_waiting=waiting, deadline_policy=policy, aging_s=aging, max_num_running=running,
                           stage_aware=stage_aware, **budget_kw)


config_strategy = st.builds(
    make_config, st.sampled_from([700, 1500, 4000, "adaptive"]), st.sampled_from([4, 10_000]),
    st.sampled_from(["partial", "reject"]), st.sampled_from([0.005, 0.25]), st.sampled_from([2, 8, 512]),
    st.sampled_from([True, True, False]))


def run_and_check(names, config, ops) -> None:
    clock = FakeClock()
    cols = make_collections(*names)
    runner = TimedRunner(cols, clock)
    engine = SearchEngine(config, collections=cols, runner=runner, clock=clock, start=False)
    submitted: list[tuple] = []  # (future, name, qi, k, nprobe, stage, deadline_ms)
    aborted: set[str] = set()
    resolutions: Counter = Counter()
    returned: Counter = Counter()

    def submit(name, qi, k, nprobe, stage, deadline_ms):
        fut = engine.submit(name, queries(name)[qi], k, nprobe=nprobe, stage=stage, deadline_ms=deadline_ms)
        fut.add_done_callback(lambda f: resolutions.update([f.request_id]))
        submitted.append((fut, name, qi, k, nprobe, stage, deadline_ms))

    for op in ops:
        if op[0] == "submit":
            if op[-1]:  # arrives while the runner runs a part of an iteration
                runner.meanwhile.append(lambda args=op[1:-1]: submit(*args))
            else:
                submit(*op[1:-1])
        elif op[0] == "abort":
            if submitted:
                fut = submitted[op[1] % len(submitted)][0]
                if not fut.done():
                    aborted.add(fut.request_id)
                engine.abort(fut.request_id)
        else:
            clock.advance(op[1])
            returned.update(r.request_id for r in engine.step())

    # drain: time moves on; stop when idle, fail when nothing moves for a long while
    idle_steps, last = 0, None
    while engine.scheduler.has_work or engine._inbox:
        clock.advance(0.005)
        returned.update(r.request_id for r in engine.step())
        progress = (len(engine.scheduler.requests),
                    sum(r.num_units_done for r in engine.scheduler.requests.values()))
        idle_steps = idle_steps + 1 if progress == last else 0
        last = progress
        if idle_steps > STALL_STEPS:  # 100 steps = 0.5 s of fake time: past every deadline and aging
            busy = [(r.request_id, r.collection, r.status.name, r.num_units_done, r.num_units_total)
                    for r in engine.scheduler.requests.values()]
            raise AssertionError(f"requests never finish (stall): {busy}")

    # every request resolved exactly once, with a final status
    ids = [s[0].request_id for s in submitted]
    assert len(set(ids)) == len(ids)
    for fut, name, qi, k, nprobe, stage, deadline_ms in submitted:
        rid = fut.request_id
        assert fut.done(), f"{rid} never resolved"
        assert resolutions[rid] == 1 and returned[rid] == 1, (rid, resolutions[rid], returned[rid])
        res = fut.result(timeout=0)
        assert isinstance(res, SearchResult) and res.request_id == rid
        assert res.status in ALLOWED, (rid, res.status, res.message)
        assert res.ids.shape == (k,) and res.scores.shape == (k,)
        if res.status is RequestStatus.FINISHED_ABORTED:
            assert rid in aborted
        if res.status is RequestStatus.FINISHED_PARTIAL:
            assert deadline_ms is not None and res.fraction_scanned < 1
        if res.status is RequestStatus.FINISHED_COMPLETE:
            assert res.fraction_scanned == 1 and not res.partial
    # nobody holds state any more
    sched = engine.scheduler
    assert not sched.requests and not sched.joined and not slots_held(sched) and not sched.has_work
    assert not slots_held(engine.scheduler), "slots leaked"
    assert not engine._futures and not engine._inbox
    assert sched.num_admitted == sched.num_finished == len(submitted)
    # complete answers are exact
    complete = [s for s in submitted if s[0].result().status is RequestStatus.FINISHED_COMPLETE]
    for name in names:
        mine = [s for s in complete if s[1] == name]
        if not mine:
            continue
        default = index(name).nprobe if isinstance(index(name), IVFIndex) else None
        refs = reference_many(name, queries(name)[[s[2] for s in mine]], [s[3] for s in mine],
                              [s[4] if s[4] is not None else default for s in mine])
        for s, ref in zip(mine, refs):
            res = s[0].result()
            assert_matches(name, res.scores, res.ids, ref, what=str(s[1:]), query=queries(name)[s[2]])


NAMES = ("ivf_ip", "ivf_l2", "flat_cos", "flat_l2")


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=config_strategy, ops=op_strategy(NAMES))
def test_no_request_is_lost(config, ops):
    run_and_check(NAMES, config, ops)
