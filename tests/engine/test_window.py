"""List-centric IVF batching: claimed lists are read once for every rider, riders are
taken in priority order when the budget binds, and hopeless requests are demoted so an
overload does not topple every deadline (EDF's domino effect)."""

from __future__ import annotations

import numpy as np

from trinity.engine import RequestStatus, Scheduler, SearchRunner, Stage
from trinity.engine.window import Claims, Riders, Window

from .fake_runner import FakeRunner
from .helpers import FakeClock, drive, fixed_budget, make_collections
from .test_scheduler import make_req

IVF = "ivf_ip"


def joined_requests(clock: FakeClock, sched: Scheduler, runner, n: int, nprobe: int | list[int] = 32, **kw) -> list:
    """``n`` admitted prefill requests (their probes assigned, a slot each) that have not scanned yet."""
    nprobes = nprobe if isinstance(nprobe, list) else [nprobe] * n
    kw.setdefault("deadline_s", 10.0)
    reqs = [make_req(clock, IVF, nprobe=nprobes[i], stage=Stage.PREFILL, qi=i, **kw) for i in range(n)]
    sched.add_requests(reqs)
    assert all(r.unit_ids is not None and r.slot >= 0 and r.num_units_done == 0 for r in reqs)
    return reqs


def lists_of(reqs: list, plan) -> dict[str, set[int]]:
    units = {r.request_id: r.unit_ids for r in reqs}
    return {w.request_id: {int(units[w.request_id][u]) for u in w.units} for w in plan.items()}


def test_every_rider_scans_each_claimed_list_in_the_same_iteration():
    clock = FakeClock()
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(10_000_000), cols, clock)
    runner = FakeRunner(cols, clock=clock)
    reqs = joined_requests(clock, sched, runner, 12)
    plan = sched.schedule()
    read = set().union(*lists_of(reqs, plan).values())
    assert plan.planned_vectors <= plan.budget_vectors and not plan.forced and plan.head is None
    for r in reqs:  # ample budget: everything needed is read, and every need is served
        wanted = {int(p) for p in r.unit_ids}
        assert wanted <= read and lists_of(reqs, plan)[r.request_id] == wanted
    out = runner.run(plan)
    # 12 requests x 32 probes over 64 lists: lists are shared, so far fewer reads than scans
    scanned = out.num_vectors_scanned
    sizes = cols.stats(IVF).unit_sizes
    assert sizes[sorted(read)].sum() < scanned / 3


def test_a_binding_budget_takes_riders_in_priority_order():
    clock = FakeClock()
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(6_000), cols, clock)
    runner = FakeRunner(cols, clock=clock)
    reqs = joined_requests(clock, sched, runner, 10, nprobe=64)  # everyone wants every list
    plan = sched.schedule()
    assert plan.planned_vectors <= plan.budget_vectors
    order = [r.request_id for r in sorted(reqs, key=lambda r: r.arrival_time)]
    got = [w.request_id for w in plan.items()]
    assert got == order[: len(got)], "riders are served in priority order"
    # the most urgent request claimed its best-first probes: a prefix of its probe list
    top = plan.items()[0]
    assert top.request_id == order[0] and top.units == tuple(range(len(top.units)))


def window_of(sched: Scheduler, reqs: list, read_weight: float) -> Window:
    """One window over ``reqs`` (in this priority order) of the IVF collection."""
    cols, n = sched.collections, len(reqs)
    riders = Riders(IVF, cols.stats(IVF).unit_sizes, sched.tables[IVF], tuple(r.request_id for r in reqs),
                    np.array([r.slot for r in reqs]), np.arange(n), share=True)
    return Window([riders], read_weight)


def test_only_the_first_claim_is_forced_past_the_budget_and_alone():
    clock = FakeClock()
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(10_000_000), cols, clock)
    reqs = joined_requests(clock, sched, FakeRunner(cols, clock=clock), 4, nprobe=64)
    sizes = cols.stats(IVF).unit_sizes
    window = window_of(sched, reqs, read_weight=0.5)
    ones = np.ones(4, dtype=bool)
    charge, forced = window.plan(Claims(np.zeros(4, dtype=np.int64), ones, ~ones), budget=1.0)
    first = int(reqs[0].unit_ids[0])
    assert forced and charge == sizes[first] * 1.5
    heads, (rest,) = window.work()
    ((_, only),) = rest.items()
    assert not heads
    assert only.request_id == reqs[0].request_id and only.units == (0,)


def test_real_runner_reads_a_shared_list_once():
    clock = FakeClock()
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(10_000_000), cols, clock)
    runner = SearchRunner(cols)
    joined_requests(clock, sched, runner, 16)
    plan = sched.schedule()
    out = runner.run(plan)
    assert out.vectors_read < out.num_vectors_scanned / 3
    fin = {r.request_id: (r, s, i) for r, s, i in sched.update_from_output(plan, out)}
    fin.update(drive(sched, runner, clock=clock))
    assert len(fin) == 16 and all(r.status is RequestStatus.FINISHED_COMPLETE for r, _, _ in fin.values())


def test_overload_demotes_hopeless_requests_instead_of_missing_every_deadline():
    """A queue with twice the work the deadlines allow: EDF alone would start every
    request late and cut each one at its deadline; demoting the hopeless ones lets about
    half finish complete and on time."""
    clock = FakeClock()
    cols = make_collections(IVF)
    cfg = fixed_budget(20_000)
    sched = Scheduler(cfg, cols, clock)
    runner = FakeRunner(cols, clock=clock, rate=5e6)  # 4 ms per full iteration
    for _ in range(16):  # learn the scan rate first
        drive(sched, runner, clock=clock, before_schedule=lambda it: it or sched.add_request(
            make_req(clock, IVF, nprobe=32, qi=3)))
    assert sched.scan_rate
    sizes = cols.stats(IVF).unit_sizes.astype(float)
    per_request = 32 * (sizes * sizes).sum() / sizes.sum() / 5e6  # seconds of scanning each (size-biased lists)
    reqs = []
    for i in range(24):  # deadline i leaves room for about i / 2 requests ahead of it
        reqs.append(make_req(clock, IVF, nprobe=32, qi=i, deadline_s=(i + 1) * per_request / 2 + 0.008))
        sched.add_request(reqs[-1])
    fin = drive(sched, runner, clock=clock)
    complete = [r for r in reqs if fin[r.request_id][0].status is RequestStatus.FINISHED_COMPLETE]
    on_time = [r for r in complete if r.finish_time <= r.deadline]
    assert len(on_time) >= 6, [fin[r.request_id][0].status.name for r in reqs]
    assert all(np.isfinite(r.deadline) for r in reqs)


def test_fill_prefers_lists_that_finish_requests():
    clock = FakeClock()
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(10_000_000), cols, clock)
    few, many = joined_requests(clock, sched, FakeRunner(cols, clock=clock), 2, nprobe=[2, 64])
    sizes = cols.stats(IVF).unit_sizes
    window = window_of(sched, [few, many], read_weight=1.0)
    # a budget for exactly few's two lists (with both riders): with no claims the fill takes
    # those (worth 1/2 each to `few`) before any list only `many` needs (worth 1/64)
    mine = few.unit_ids
    none = np.zeros(2, dtype=bool)
    window.plan(Claims(np.full(2, -1), none, none), budget=float((sizes[mine] * 3.0).sum()))
    assert window.chosen[mine].all() and window.chosen.sum() == 2
    assert set(window.work()[1][0].request_ids) >= {few.request_id}


def test_tight_deadline_lookups_go_in_the_head_under_load():
    """A cache lookup (a 20 ms window ranks with decode work) claims its lists and its answer
    leaves in the head; a RAG search with slack only rides (the fill takes its lists)."""
    clock = FakeClock()
    cols = make_collections(IVF)
    sched = Scheduler(fixed_budget(10_000_000), cols, clock)
    sched._saturated = True
    lookup = make_req(clock, IVF, nprobe=4, k=1, qi=1, deadline_s=0.020)
    rag = make_req(clock, IVF, nprobe=32, k=32, qi=2, deadline_s=0.150)
    sched.add_requests([lookup, rag])
    plan = sched.schedule()
    assert plan.head is not None and {w.request_id for w in plan.head.items()} >= {lookup.request_id}
    (head_lookup,) = [w for w in plan.head.items() if w.request_id == lookup.request_id]
    assert head_lookup.returns_result and len(head_lookup.units) == 4
    assert rag.request_id not in {w.request_id for w in plan.head.items() if w.returns_result}
