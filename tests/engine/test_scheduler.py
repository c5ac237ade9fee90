"""Scheduler policy, driven by the bookkeeping-only FakeRunner (and, where the claim is
about real scanning, the real SearchRunner), over real small indexes so that the
collection stats the scheduler budgets with are real."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trinity.engine import RequestStatus, Scheduler, SchedulerConfig, SearchRequest, SearchRunner, Stage

from .fake_runner import FakeRunner
from .helpers import FakeClock, drive, fixed_budget, index, make_collections, queries, run_plan, slots_held

IVF, FLAT = "ivf_ip", "flat_cos"


def make_req(clock: FakeClock, collection: str = IVF, *, nprobe: int | None = None, stage: Stage = Stage.PREFILL,
             k: int = 10, deadline_s: float | None = None, qi: int = 0, request_id: str | None = None) -> SearchRequest:
    q = queries(collection)[qi % len(queries(collection))]
    req = SearchRequest(collection, q, k, nprobe, stage, None if deadline_s is None else clock() + deadline_s,
                        arrival_time=clock())
    # deterministic ids: the FakeRunner derives probe lists from them
    req.request_id = request_id if request_id is not None else f"r{next(_ids)}"
    return req


_ids = itertools.count()


@pytest.fixture(autouse=True)
def _reset_ids():
    global _ids
    _ids = itertools.count()


def mixed_requests(clock: FakeClock, rng: np.random.Generator, n: int, names=("ivf_ip", "ivf_l2", "flat_cos", "flat_l2")):
    out = []
    for i in range(n):
        name = names[int(rng.integers(len(names)))]
        out.append(make_req(clock, name, nprobe=int(rng.integers(1, 65)), stage=Stage(int(rng.integers(3))),
                            k=int(rng.integers(1, 30)), qi=i))
    return out


def check_budget(plan) -> None:
    """Within budget -- or one unit forced past it (the progress guarantee): one newcomer's
    first probe, or one list read by all of its riders."""
    if plan.planned_vectors <= plan.budget_vectors:
        return
    assert plan.forced, f"iteration {plan.iteration}: planned {plan.planned_vectors} > budget {plan.budget_vectors}"
    assert len(plan.items()) == 1 or all(len(w.units) == 1 for w in plan.items()), plan.items()


# --------------------------------------------------------------------------- budget
def test_planned_work_never_exceeds_budget(clock):
    cols = make_collections()
    sched = Scheduler(SchedulerConfig(initial_budget_vectors=3000, min_budget_vectors=1000, max_budget_vectors=6000,
                                      target_iteration_ms=3.0), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1.5e6, overhead_s=2e-4)
    rng = np.random.default_rng(0)
    pending = mixed_requests(clock, rng, 150)

    def arrive(it):  # a burst, then a trickle
        for _ in range(60 if it == 0 else (2 if it % 3 == 0 else 0)):
            if pending:
                req = pending.pop()
                req.arrival_time = clock()
                sched.add_request(req)

    fin = drive(sched, runner, clock=clock, before_schedule=arrive)
    assert not pending and len(fin) == 150
    assert all(r.status is RequestStatus.FINISHED_COMPLETE for r, _, _ in fin.values())
    assert len(runner.plans) > 50
    budgets = {p.budget_vectors for p in runner.plans}
    assert len(budgets) > 1, "the budget should adapt to the fake scan rate"
    for plan in runner.plans:
        check_budget(plan)
        if plan.planned_vectors > plan.budget_vectors:  # the progress exception: one unit
            assert all(len(w.units) <= 1 for w in plan.items()), plan.items()


@pytest.mark.parametrize("runner_kind", ["fake", "real"])
def test_vectors_actually_scanned_never_exceed_budget(clock, runner_kind):
    cols = make_collections()
    sched = Scheduler(fixed_budget(3000), cols, clock)
    runner = FakeRunner(cols, clock=clock) if runner_kind == "fake" else SearchRunner(cols)
    for req in mixed_requests(clock, np.random.default_rng(1), 40):
        sched.add_request(req)
    over = []

    def check(plan, out):
        check_budget(plan)
        scanned = out.num_vectors_scanned
        if scanned > plan.budget_vectors and len(plan.items()) > 1:
            over.append((plan.iteration, plan.budget_vectors, scanned, len(plan.items())))

    fin = drive(sched, runner, clock=clock, after_update=check)
    assert len(fin) == 40
    assert not over, f"(iteration, budget, scanned, items) over budget: {over[:5]}"


@pytest.mark.parametrize("runner_kind", ["fake", "real"])
def test_the_first_claim_may_pass_the_budget_by_one_list_only(clock, runner_kind):
    """A decode whose single probe hits an outsized list (ivf_ip query 7: 1627 vectors) under a
    budget smaller than that list: it scans that list (the progress guarantee), nothing else is
    planned, and the plan says it was forced."""
    cols = make_collections(IVF, FLAT)
    sched = Scheduler(fixed_budget(1000), cols, clock)
    runner = SearchRunner(cols) if runner_kind == "real" else FakeRunner(cols, clock=clock)
    decode = make_req(clock, IVF, nprobe=1, stage=Stage.DECODE, qi=7)
    sched.add_requests([decode, make_req(clock, FLAT, stage=Stage.PREFILL, qi=1)])
    plan = sched.schedule()
    assert [w.request_id for w in plan.items()] == [decode.request_id] and plan.forced
    check_budget(plan)
    (out,) = [runner.run(part) for part in plan.parts]
    assert out.num_vectors_scanned == 1627 and decode.request_id in out.results


@pytest.mark.parametrize("overhead_s,budget", [(0.0, 8000), (1e-3, 6000)])
def test_budget_adapts_to_scan_rate(clock, overhead_s, budget):
    """A device scanning 2M vectors/s with a fixed per-iteration overhead: iterations of
    ``target_iteration_ms`` = 4 ms hold (4 ms - overhead) * 2M vectors."""
    cols = make_collections(IVF)
    # NOTE: a fixed target (no stretch under saturation): the budget is then exact
    cfg = SchedulerConfig(target_iteration_ms=4.0, initial_budget_vectors=2000, min_budget_vectors=500,
                          max_budget_vectors=100_000, saturated_stretch=1.0)
    sched = Scheduler(cfg, cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=2e6, overhead_s=overhead_s)
    rng = np.random.default_rng(0)
    for i in range(60):
        sched.add_request(make_req(clock, IVF, nprobe=int(rng.integers(1, 65)), qi=i))
    drive(sched, runner, clock=clock)
    assert runner.plans[0].budget_vectors == 2000
    assert sched.scan_rate == pytest.approx(2e6, rel=1e-3)
    # the fit gives exactly this; the feedback gain may lift it a little, as planned charges
    # (worst case for a newcomer's first probe) overstate what the runner then scans
    assert budget <= sched.budget_vectors <= 1.15 * budget
    # iteration_s tracks observed durations (EWMA, incl. the draining tail): at most the target
    assert 0 < sched.iteration_s <= 4e-3 * 1.05
    steady = [o.duration_s for o in runner.outputs[10:-5]]
    assert np.median(steady) == pytest.approx(4e-3, rel=0.1)


# --------------------------------------------------------------------------- stage priority
@pytest.mark.parametrize("decode_collection", [IVF, FLAT])
def test_decode_starts_within_one_iteration_under_prefill_backlog(clock, decode_collection):
    cols = make_collections(IVF, FLAT)
    sched = Scheduler(fixed_budget(8000), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=2e6)
    for i in range(200):  # big prefill work: every probe of the IVF index or a full flat scan
        sched.add_request(make_req(clock, IVF if i % 2 else FLAT, nprobe=64, stage=Stage.PREFILL, qi=i))
    for _ in range(3):
        plan = sched.schedule()
        run_plan(sched, runner, plan)
        assert plan.planned_vectors >= 0.9 * plan.budget_vectors, "the backlog should fill the budget"
    decode = make_req(clock, decode_collection, nprobe=4, stage=Stage.DECODE, qi=7)
    sched.add_request(decode)
    plan = sched.schedule()
    assert plan.items() and plan.items()[0].request_id == decode.request_id, "decode must be scheduled first"
    assert decode.request_id in {r.request_id for part in plan.parts for r in part.new_requests}
    fin = run_plan(sched, runner, plan)
    assert decode.status.finished or decode.num_units_done > 0
    if decode_collection == IVF:  # a small decode fits in one iteration
        assert decode.request_id in [r.request_id for r, _, _ in fin]
        assert decode.status is RequestStatus.FINISHED_COMPLETE and decode.num_iterations == 1


def test_decode_starts_within_one_iteration_when_running_slots_are_full(clock):
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(3000, max_num_running=4), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6)
    for i in range(6):  # each new prefill has an earlier deadline, preempts the last one and keeps a slot
        sched.add_request(make_req(clock, IVF, nprobe=64, stage=Stage.PREFILL, deadline_s=10.0 - i, qi=i))
        plan = sched.schedule()
        run_plan(sched, runner, plan)
    assert len(sched.joined) == 4 and all(not sched.requests[r].is_finished for r in sched.joined)
    decode = make_req(clock, IVF, nprobe=4, stage=Stage.DECODE, qi=20)
    sched.add_request(decode)
    plan = sched.schedule()
    assert decode.request_id in [w.request_id for w in plan.items()], "decode waits for a PREFILL request to finish"


def test_tight_deadline_lookup_starts_within_one_iteration_when_running_slots_are_full(clock):
    """A prefill-stage cache lookup whose deadline is a few iterations long cannot wait
    for a running slot either."""
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(3000, max_num_running=4), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6)
    for i in range(6):
        sched.add_request(make_req(clock, IVF, nprobe=64, stage=Stage.PREFILL, deadline_s=10.0 - i, qi=i))
        plan = sched.schedule()
        run_plan(sched, runner, plan)
    assert len(sched.joined) == 4
    lookup = make_req(clock, IVF, nprobe=2, k=1, stage=Stage.PREFILL, deadline_s=4 * sched.iteration_s, qi=20)
    sched.add_request(lookup)
    plan = sched.schedule()
    work = [w for w in plan.items() if w.request_id == lookup.request_id]
    assert work and work[0].units, "a tight-deadline lookup waited for a running slot"


def test_preempted_work_keeps_its_cursor(clock):
    cols = make_collections(IVF, FLAT)
    sched = Scheduler(fixed_budget(1500), cols, clock)
    runner = FakeRunner(cols, clock=clock)
    big_ivf = make_req(clock, IVF, nprobe=64, stage=Stage.PREFILL, qi=1)
    big_flat = make_req(clock, FLAT, stage=Stage.PREFILL, qi=2)
    sched.add_request(big_ivf)
    sched.add_request(big_flat)
    progress = {big_ivf.request_id: [], big_flat.request_id: []}
    statuses = {big_ivf.request_id: set(), big_flat.request_id: set()}
    decodes = []

    def arrive(it):
        if 2 <= it <= 40 and it % 3 == 2:  # decode work keeps cutting in
            req = make_req(clock, IVF if it % 2 else FLAT, nprobe=6, stage=Stage.DECODE, qi=it)
            decodes.append(req)
            sched.add_request(req)

    def after(plan, out):
        for req in (big_ivf, big_flat):
            progress[req.request_id].append(req.num_units_done)
            statuses[req.request_id].add(req.status)

    fin = drive(sched, runner, clock=clock, before_schedule=arrive, after_update=after)
    assert all(fin[r.request_id][0].status is RequestStatus.FINISHED_COMPLETE for r in decodes)
    for req in (big_ivf, big_flat):
        rid = req.request_id
        assert req.status is RequestStatus.FINISHED_COMPLETE
        if req is big_ivf:  # NOTE: a flat scan rides the decodes' chunks (every flat request needs them all)
            assert req.num_preemptions > 0 and RequestStatus.PREEMPTED in statuses[rid], "expected preemption"
        assert progress[rid] == sorted(progress[rid]), f"num_units_done went backwards: {progress[rid]}"
        units = runner.scanned_units(rid)
        assert sorted(units) == list(range(req.num_units_total)), f"units scanned twice or skipped: {units}"
        assert len(runner.iterations_of[rid]) == req.num_iterations > 1
    # IVF: what the runner scanned is exactly what the plans said (its best-first claims,
    # and the positions it rode on decode claims)
    rid = big_ivf.request_id
    planned = [w.units for p in runner.plans for ride in p.rides for _, w in ride.items() if w.request_id == rid]
    assert planned == runner.scans[rid] and runner.scans[rid][0] == tuple(range(len(runner.scans[rid][0])))


# --------------------------------------------------------------------------- ordering
def test_earliest_deadline_first_within_a_stage(clock):
    cols = make_collections(IVF)
    deadlines = [5.0, 1.0, 3.0, None, 2.0, 4.0, None, 0.5]
    reqs = [make_req(clock, IVF, nprobe=32, stage=Stage.PREFILL, deadline_s=d, qi=i) for i, d in enumerate(deadlines)]
    decode = make_req(clock, IVF, nprobe=32, stage=Stage.DECODE, qi=20)  # no deadline, still first
    background = make_req(clock, IVF, nprobe=32, stage=Stage.BACKGROUND, deadline_s=0.25, qi=21)
    # one plan with room for everybody: the work order is the priority order (a long
    # aging_s puts the virtual deadline of a request without one far away)
    sched = Scheduler(fixed_budget(10_000_000, aging_s=100.0), cols, clock)
    for r in reqs + [background, decode]:
        sched.add_request(r)
    plan = sched.schedule()
    edf = [r.request_id for r in sorted(reqs, key=lambda r: (r.deadline is None, r.deadline or 0, r.arrival_time))]
    order = list(dict.fromkeys(w.request_id for w in plan.items()))  # a rider of the head's lists is in both parts
    assert order == [decode.request_id, *edf, background.request_id]
    # a budget for about one request per iteration: they start and finish in that order
    clock2 = FakeClock()
    reqs = [make_req(clock2, IVF, nprobe=32, stage=Stage.PREFILL, deadline_s=d, qi=i) for i, d in enumerate(deadlines)]
    sched = Scheduler(fixed_budget(9000, aging_s=100.0), cols, clock2)
    runner = FakeRunner(cols, clock=clock2, rate=1e7)
    for r in reqs:
        sched.add_request(r)
    fin = drive(sched, runner, clock=clock2)
    order = sorted(fin, key=lambda rid: fin[rid][0].finish_time)
    by_deadline = [r.request_id for r in sorted(reqs, key=lambda r: (r.deadline is None, r.deadline or 0, r.arrival_time))]
    assert order == by_deadline


def test_fifo_mode_orders_by_arrival(clock):
    cols = make_collections(IVF, FLAT)
    stages = [Stage.BACKGROUND, Stage.PREFILL, Stage.BACKGROUND, Stage.DECODE, Stage.PREFILL, Stage.DECODE]

    def admit(sched):
        reqs = []
        for i, stage in enumerate(stages):
            reqs.append(make_req(clock, IVF if i % 2 else FLAT, nprobe=40, stage=stage,
                                 deadline_s=None if i % 3 else 100.0 - i, qi=i))
            sched.add_request(reqs[-1])
            clock.advance(0.001)
        return reqs

    # stage-aware: a decode goes first; FIFO: the oldest (a background request) does
    sched = Scheduler(fixed_budget(3000), cols, clock)
    reqs = admit(sched)
    assert sched.schedule().items()[0].request_id in (reqs[3].request_id, reqs[5].request_id)
    sched = Scheduler(fixed_budget(3000, stage_aware=False), cols, clock)
    reqs = admit(sched)
    arrival = {r.request_id: r.arrival_time for r in reqs}
    runner = FakeRunner(cols, clock=clock)
    fin = drive(sched, runner, clock=clock)
    assert len(fin) == len(reqs)
    assert runner.plans[0].items()[0].request_id == reqs[0].request_id
    for plan in runner.plans:  # every plan hands out budget in arrival order, whatever the stage
        times = [arrival[w.request_id] for w in plan.items()]
        assert times == sorted(times), f"iteration {plan.iteration}: not in arrival order"
    # the oldest request is never preempted by a younger one
    assert reqs[0].num_preemptions == 0


# --------------------------------------------------------------------------- starvation
def decode_stream(sched, clock, rng, with_deadlines: bool, per_iteration: int = 2):
    def arrive(it):
        for _ in range(per_iteration):  # more decode work than the budget: the queue never empties
            sched.add_request(make_req(clock, IVF, nprobe=int(rng.integers(8, 17)), stage=Stage.DECODE,
                                       deadline_s=10.0 if with_deadlines else None, qi=int(rng.integers(64))))
    return arrive


def run_until_finished(sched, runner, clock, req, arrive, max_iters):
    for it in range(max_iters):
        arrive(it)
        plan = sched.schedule()
        if not plan.is_empty:
            run_plan(sched, runner, plan)
        else:
            clock.advance(0.001)
        if req.is_finished:
            return it + 1
    return None


def test_aging_bounds_background_starvation(clock):
    cols = make_collections(IVF)
    aging_s = 0.02
    sched = Scheduler(fixed_budget(4000, aging_s=aging_s), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6)  # 4 ms per full iteration
    bg = make_req(clock, IVF, nprobe=16, stage=Stage.BACKGROUND, qi=3)
    sched.add_request(bg)
    iters = run_until_finished(sched, runner, clock, bg, decode_stream(sched, clock, np.random.default_rng(0), False), 500)
    assert iters is not None, f"background request starved: {bg.status}, {bg.num_units_done}/{bg.num_units_total}"
    # promoted after 2 * aging_s (10 iterations of 4 ms), then it waits at most for the decode
    # backlog that outranked it by then, and scans for a few iterations
    assert iters <= BOUND_ITERS
    assert bg.status is RequestStatus.FINISHED_COMPLETE
    assert len(sched.requests) >= 10, "the decode stream should have kept the engine overloaded"


BOUND_ITERS = 80  # an unaged background request would wait for ever: the decode queue only grows


def test_aging_bounds_starvation_against_decodes_with_deadlines(clock):
    """Decode requests with (loose) deadlines sort by deadline; the aged background request
    must still get its turn."""
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(4000, aging_s=0.02), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6)
    bg = make_req(clock, IVF, nprobe=16, stage=Stage.BACKGROUND, qi=3)
    sched.add_request(bg)
    iters = run_until_finished(sched, runner, clock, bg, decode_stream(sched, clock, np.random.default_rng(0), True), 500)
    assert iters is not None, f"background request starved: {bg.status}, {bg.num_units_done}/{bg.num_units_total}"
    assert iters <= BOUND_ITERS and len(sched.requests) >= 10


# --------------------------------------------------------------------------- deadlines
def test_deadline_gives_partial_result_in_time(clock):
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(4000), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6)  # 4 ms per full iteration
    req = make_req(clock, IVF, nprobe=64, deadline_s=0.010)  # needs ~25 ms of scanning
    sched.add_request(req)
    fin = drive(sched, runner, clock=clock)
    got, scores, ids = fin[req.request_id]
    assert got.status is RequestStatus.FINISHED_PARTIAL and "deadline" in got.message
    assert 0 < got.fraction_scanned < 1
    assert got.finish_time <= got.deadline
    assert ids is not None and ids.shape == (req.k,), "a joined request returns its best-so-far top-k"
    assert not slots_held(sched) and not sched.requests and not sched.joined


def starve_until_deadline(clock):
    """A BACKGROUND request with a 6 ms deadline behind DECODE work filling every 4 ms iteration.

    (``urgent_deadline_ms=0``: by default so tight a deadline would rank it with the decode work.)
    """
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(4000, urgent_deadline_ms=0), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6)
    sched.add_request(make_req(clock, IVF, nprobe=64, stage=Stage.DECODE, qi=1))
    late = make_req(clock, IVF, nprobe=8, stage=Stage.BACKGROUND, deadline_s=0.006, qi=2)
    sched.add_request(late)
    fin = drive(sched, runner, clock=clock)
    return late, fin[late.request_id], runner


def test_a_deadline_before_the_next_iteration_leaves_with_this_one(clock):
    """It rides the decode's lists while it can and leaves partial with this iteration's
    output, rather than scanning once more and answering after its deadline."""
    late, (got, scores, ids), runner = starve_until_deadline(clock)
    assert got.status is RequestStatus.FINISHED_PARTIAL and 0 < got.fraction_scanned < 1
    assert ids is not None and got.message == "deadline reached"


def test_deadline_before_any_scan_is_delivered_in_time(clock):
    late, (got, scores, ids), runner = starve_until_deadline(clock)
    assert got.finish_time <= got.deadline, f"{1e3 * (got.finish_time - got.deadline):.2f} ms late"


def test_deadline_partial_is_delivered_in_time_under_load(clock):
    cols = make_collections(IVF, FLAT)
    sched = Scheduler(fixed_budget(4000), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6, overhead_s=2e-4)  # ~4.2 ms per full iteration
    req = make_req(clock, IVF, nprobe=64, deadline_s=0.010)
    sched.add_request(req)
    sched.add_request(make_req(clock, FLAT, stage=Stage.BACKGROUND))  # keeps every iteration full
    fin = drive(sched, runner, clock=clock)
    got = fin[req.request_id][0]
    assert got.status is RequestStatus.FINISHED_PARTIAL and got.fraction_scanned < 1
    assert got.finish_time <= got.deadline, f"partial result {1e3 * (got.finish_time - got.deadline):.2f} ms late"


def test_reject_policy_rejects_clearly_infeasible_requests(clock):
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(4000, deadline_policy="reject"), cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=1e6)
    early = make_req(clock, IVF, nprobe=64, deadline_s=0.005, qi=1)
    sched.add_request(early)  # no scan rate measured yet: admitted (and finished partial)
    assert not early.is_finished
    for i in range(5):
        sched.add_request(make_req(clock, IVF, nprobe=64, qi=i))
    drive(sched, runner, clock=clock)
    assert early.status is RequestStatus.FINISHED_PARTIAL
    assert sched.scan_rate == pytest.approx(1e6)
    # ~23k vectors at 1M vectors/s cannot finish in 5 ms
    doomed = make_req(clock, IVF, nprobe=64, deadline_s=0.005, qi=2)
    sched.add_request(doomed)
    fin = sched.pop_finished()
    assert [r.request_id for r, _, _ in fin] == [doomed.request_id]
    assert doomed.status is RequestStatus.FINISHED_REJECTED and "infeasible" in doomed.message
    assert doomed.request_id not in sched.requests
    # a feasible one with a deadline is admitted and completes in time
    ok = make_req(clock, IVF, nprobe=4, deadline_s=0.050, qi=3)
    sched.add_request(ok)
    assert not ok.is_finished
    drive(sched, runner, clock=clock)
    assert ok.status is RequestStatus.FINISHED_COMPLETE and ok.finish_time <= ok.deadline
    # the default policy admits the same request and answers partially
    sched2 = Scheduler(fixed_budget(4000), cols, clock)
    sched2.cost.scan_rate = sched.scan_rate
    doomed2 = make_req(clock, IVF, nprobe=64, deadline_s=0.005, qi=2)
    sched2.add_request(doomed2)
    assert not doomed2.is_finished
    drive(sched2, FakeRunner(cols, clock=clock, rate=1e6), clock=clock)
    assert doomed2.status is RequestStatus.FINISHED_PARTIAL


def test_deadline_already_passed_is_rejected(clock):
    sched = Scheduler(SchedulerConfig(), make_collections(IVF), clock)
    req = make_req(clock, IVF, deadline_s=0.001)
    clock.advance(0.002)
    sched.add_request(req)
    assert req.status is RequestStatus.FINISHED_REJECTED and not sched.requests


# --------------------------------------------------------------------------- overload, abort
def test_waiting_queue_overflow_rejects(clock):
    cols = make_collections(IVF)
    sched = Scheduler(SchedulerConfig(max_num_waiting=5), cols, clock)
    reqs = [make_req(clock, IVF, qi=i) for i in range(8)]
    for r in reqs:
        sched.add_request(r)
    fin = sched.pop_finished()
    assert [r.request_id for r, _, _ in fin] == [r.request_id for r in reqs[5:]]
    assert all(r.status is RequestStatus.FINISHED_REJECTED and "overloaded" in r.message for r in reqs[5:])
    assert all(not r.is_finished for r in reqs[:5])
    # once requests are running (joined), the queue has room again
    runner = FakeRunner(cols, clock=clock)
    fin = drive(sched, runner, clock=clock)
    assert len(fin) == 5 and all(r.status is RequestStatus.FINISHED_COMPLETE for r in reqs[:5])
    sched.add_request(make_req(clock, IVF))
    assert not sched.pop_finished()


def test_max_num_running_bounds_runner_state(clock):
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(100_000, max_num_running=3), cols, clock)
    runner = FakeRunner(cols, clock=clock)
    for i in range(10):
        sched.add_request(make_req(clock, IVF, nprobe=64, qi=i))
    fin = drive(sched, runner, clock=clock,
                after_update=lambda p, o: (assert_le(len(sched.joined), 3), assert_le(slots_held(sched), 3 + len(sched.slots.waiting()))))
    assert len(fin) == 10


def assert_le(a, b):
    assert a <= b, (a, b)


@pytest.mark.parametrize("runner_kind", ["fake", "real"])
def test_abort_frees_everything(clock, runner_kind):
    cols = make_collections(IVF, FLAT)
    sched = Scheduler(fixed_budget(3000), cols, clock)
    runner = FakeRunner(cols, clock=clock) if runner_kind == "fake" else SearchRunner(cols)
    a = make_req(clock, IVF, nprobe=64, stage=Stage.DECODE, deadline_s=100.0, qi=1)  # first, ~35k vectors
    b = make_req(clock, FLAT, stage=Stage.DECODE, deadline_s=200.0, qi=2)  # second: rides on a's leftovers
    c = make_req(clock, IVF, nprobe=64, stage=Stage.BACKGROUND, qi=3)  # last: at most rides along on a's lists
    for r in (a, b, c):
        sched.add_request(r)
    for _ in range(10):
        plan = sched.schedule()
        run_plan(sched, runner, plan)
        if b.num_units_done:
            break
    assert not a.is_finished and not b.is_finished
    assert {a.request_id, b.request_id} <= sched.joined and slots_held(sched) == len(sched.requests)
    assert 0 < a.num_units_done < a.num_units_total and c.num_units_done < c.num_units_total
    for r in (a, b, c):
        assert sched.abort(r.request_id)
        assert r.status is RequestStatus.FINISHED_ABORTED
    assert not sched.abort(a.request_id) and not sched.abort("no-such-request")
    fin = sched.pop_finished()
    assert [r.request_id for r, _, _ in fin] == [a.request_id, b.request_id, c.request_id]
    assert all(s is None and i is None for _, s, i in fin)
    # their slots -- scheduler progress and the runner's rows alike -- are free at once
    assert not sched.requests and not sched.joined and not sched.has_work and not slots_held(sched)
    assert sched.schedule().is_empty
    assert sched.num_admitted == sched.num_finished == 3


@pytest.mark.parametrize("runner_kind", ["fake", "real"])
def test_abort_during_an_iteration_frees_its_slot_and_ignores_its_output(clock, runner_kind):
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(2000), cols, clock)
    runner = FakeRunner(cols, clock=clock) if runner_kind == "fake" else SearchRunner(cols)
    a = make_req(clock, IVF, nprobe=64, qi=1)
    sched.add_request(a)
    plan = sched.schedule()
    assert [r.request_id for r in plan.new_requests] == [a.request_id]
    out = runner.run(plan)  # the runner now holds state for a ...
    assert sched.abort(a.request_id)  # ... which the scheduler aborts before seeing the output
    fin = sched.update_from_output(plan, out)
    assert [(r.request_id, r.status) for r, _, _ in fin] == [(a.request_id, RequestStatus.FINISHED_ABORTED)]
    assert a.request_id not in sched.joined and sched.pop_finished() == []
    assert not slots_held(sched) and not sched.has_work and not sched.requests


# --------------------------------------------------------------------------- flat scans
@pytest.mark.parametrize("nprobe", [3, 5, 7])
def test_flat_request_finishes_after_ivf_interleaving(clock, nprobe):
    """A flat request alone, then an IVF request taking part of each iteration's budget
    (so the flat window narrows to one chunk it cannot afford and the cursor skips it),
    then the flat request alone again: it must still finish."""
    cols = make_collections(FLAT, IVF)
    sched = Scheduler(fixed_budget(512), cols, clock)  # two 256-vector flat chunks
    runner = FakeRunner(cols, clock=clock)
    flat = make_req(clock, FLAT, stage=Stage.BACKGROUND)
    ivf = make_req(clock, IVF, nprobe=nprobe, stage=Stage.DECODE)

    def arrive(it):
        if it == 0:
            sched.add_request(flat)
        if it == 1:
            sched.add_request(ivf)

    drive(sched, runner, clock=clock, before_schedule=arrive, max_iters=300)
    assert flat.status is RequestStatus.FINISHED_COMPLETE and ivf.status is RequestStatus.FINISHED_COMPLETE
    assert sorted(runner.scanned_units(flat.request_id)) == list(range(index(FLAT).num_chunks))


def test_flat_requests_share_chunks_and_see_each_once(clock):
    cols = make_collections(FLAT)
    sched = Scheduler(fixed_budget(2048), cols, clock)  # 8 of the 20 chunks per iteration
    runner = FakeRunner(cols, clock=clock)
    reqs = []

    def arrive(it):
        if it in (0, 1, 2, 3):
            reqs.append(make_req(clock, FLAT, stage=Stage.PREFILL, qi=it))
            sched.add_request(reqs[-1])

    fin = drive(sched, runner, clock=clock, before_schedule=arrive)
    n = index(FLAT).num_chunks
    for r in reqs:
        assert fin[r.request_id][0].status is RequestStatus.FINISHED_COMPLETE
        assert sorted(runner.scanned_units(r.request_id)) == list(range(n))
    firsts = {runner.scanned_units(r.request_id)[0] for r in reqs}
    assert len(firsts) > 1, "late joiners should start mid-scan, at the shared cursor"
    assert any(len({w.request_id for w in p.items()}) > 1 and len(set.intersection(*[set(w.units) for w in p.items()])) > 0
               for p in runner.plans if len(p.items()) > 1), "riders should share chunks"


@pytest.mark.parametrize("stage", [Stage.DECODE, Stage.PREFILL])
def test_decode_newcomer_finishes_in_one_iteration_when_its_lists_run_large(clock, stage):
    """Queries probe larger lists than the size-biased mean; a decode lookup's first scan
    -- or a tight-deadline cache lookup's -- must still cover all its probes (a second
    iteration would double its latency)."""
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(10_000_000), cols, clock)
    runner = SearchRunner(cols)
    sizes = cols.stats(IVF).unit_sizes
    mean = float((sizes * sizes).sum() / sizes.sum())  # size-biased mean list size
    qs = queries(IVF)
    cost = sizes[index(IVF).assign(qs, 2)].sum(axis=1)
    large = np.flatnonzero((cost > 2 * mean * 1.1) & (cost < 2 * mean * 1.9))
    assert large.size, "the test index should have queries probing larger-than-estimated lists"
    for qi in large[:5]:
        req = make_req(clock, IVF, nprobe=2, k=4, stage=stage, qi=int(qi), deadline_s=0.020)
        sched.add_request(req)
        plan = sched.schedule()
        finished = run_plan(sched, runner, plan)
        assert [r.request_id for r, *_ in finished] == [req.request_id]
        assert req.status is RequestStatus.FINISHED_COMPLETE and req.num_iterations == 1


def test_aging_lifts_priority_not_urgency(clock):
    """Under load an aged prefill request with a loose deadline still rides along on shared
    list reads instead of claiming lists of its own (scanning alone, a backlog of aged RAG
    lookups cut throughput ~15x); a decode or a nearly spent deadline claims."""
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(8000, aging_s=0.001), cols, clock)
    slack = make_req(clock, IVF, nprobe=32, stage=Stage.PREFILL, deadline_s=60.0, qi=1)
    decode = make_req(clock, IVF, nprobe=32, stage=Stage.DECODE, deadline_s=60.0, qi=2)
    late = make_req(clock, IVF, nprobe=32, stage=Stage.PREFILL, deadline_s=0.1, qi=3)
    sched.add_requests([slack, decode, late])
    clock.advance(0.09)
    now = clock()
    cand = np.array([r.request_slot for r in (slack, decode, late)])
    assert sched.slots.aged(cand[:1], now)[0] == 0, "aged to the top"
    sched._saturated = True
    window, _ = sched._open_window(cand)
    assert sched._claims(cand, window.groups, now).eligible.tolist() == [False, True, True]
