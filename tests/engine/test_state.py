"""The array state and what callers see agree, and an iteration's kernel calls do not grow
with the number of running requests."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings

from trinity.engine import RequestStatus, SchedulerConfig, SearchEngine
from trinity.index import FlatIndex, IVFIndex

from .helpers import FakeClock, dataset, make_collections, queries
from .test_no_loss import TimedRunner, config_strategy, op_strategy

NAMES = ("ivf_ip", "flat_l2")


class Recorder(TimedRunner):
    """Counts, per request, the plans that gave it work and the units it scanned."""

    def __init__(self, collections, clock: FakeClock) -> None:
        super().__init__(collections, clock)
        self.iterations: Counter[str] = Counter()
        self.units: Counter[str] = Counter()
        self._last: dict[str, int] = {}  # the iteration that counted last (its parts count once)

    def run(self, plan):
        out = super().run(plan)
        for ride in plan.rides:
            for rid, n in zip(ride.request_ids, np.diff(ride.ptr).tolist()):
                if rid not in out.errors:
                    self.iterations[rid] += self._last.get(rid) != plan.iteration
                    self._last[rid] = plan.iteration
                    self.units[rid] += n
        return out


def check_tables(engine: SearchEngine, runner: Recorder) -> None:
    """Every slot agrees with its request and with what the runner scanned for it."""
    sched = engine.scheduler
    assert sched.joined <= sched.requests.keys()
    assert sum(len(t) for t in sched.tables.values()) == len(sched.requests)
    for table in sched.tables.values():
        for rid, slot in table.slot_of.items():
            req = sched.requests[rid]
            n = req.num_units_total
            seen = table.seen[slot, :n]
            assert req.slot == slot and (table.unit_ids[slot, :n] == req.unit_ids).all()
            assert table.num_done[slot] == seen.sum() == runner.units[rid] == req.num_units_done
            assert table.remaining[slot] == table.unit_costs[slot, :n][~seen].sum() == req.remaining_cost()
            assert table.seen[slot, n:].all() and (table.unit_ids[slot, :n] >= 0).all()
            assert table.num_iterations[slot] == runner.iterations[rid] == req.num_iterations


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=config_strategy, ops=op_strategy(NAMES))
def test_array_state_agrees_with_results(config, ops):
    clock = FakeClock()
    cols = make_collections(*NAMES)
    runner = Recorder(cols, clock)
    engine = SearchEngine(config, collections=cols, runner=runner, clock=clock, start=False)
    admitted, add = {}, engine.scheduler.add_requests
    engine.scheduler.add_requests = lambda reqs: (admitted.update((r.request_id, r) for r in reqs), add(reqs))
    results = []
    futures = []
    for op in [*ops, *[("step", 0.005)] * 400]:
        if op[0] == "submit":
            _, name, qi, k, nprobe, stage, deadline_ms, during = op

            def submit(name=name, qi=qi, k=k, nprobe=nprobe, stage=stage, deadline_ms=deadline_ms):
                futures.append(engine.submit(name, queries(name)[qi], k, nprobe=nprobe, stage=stage,
                                             deadline_ms=deadline_ms))
            runner.meanwhile.append(submit) if during else submit()
        elif op[0] == "abort" and futures:
            engine.abort(futures[op[1] % len(futures)].request_id)
        elif op[0] == "step":
            clock.advance(op[1])
            results += engine.step()
            check_tables(engine, runner)
        if op[0] == "step" and not engine.scheduler.has_work and not engine._inbox and len(results) == len(futures):
            break
    assert len(results) == len(futures) and not any(len(t) for t in engine.scheduler.tables.values())
    for res in results:
        rid = res.request_id
        assert res.num_iterations == runner.iterations[rid], rid
        total = admitted[rid].num_units_total
        if res.status is RequestStatus.FINISHED_COMPLETE:
            assert res.fraction_scanned == 1.0 and runner.units[rid] == total
        elif res.status is RequestStatus.FINISHED_PARTIAL and total:
            assert res.fraction_scanned == runner.units[rid] / total
        elif res.status is not RequestStatus.FINISHED_PARTIAL:
            assert res.num_iterations == 0 or res.status is RequestStatus.FINISHED_ABORTED


class KernelCalls:
    """Counts the index's kernel calls (coarse assignment, list scans, chunk GEMMs) per iteration."""

    def __init__(self, index) -> None:
        self.calls = 0
        for name in ("assign_prepared", "scan", "scan_chunk"):
            if hasattr(index, name):
                setattr(index, name, self._counted(getattr(index, name)))

    def _counted(self, fn):
        def call(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)
        return call


def kernel_calls_per_iteration(index, num_running: int, stage: str) -> list[int]:
    counter = KernelCalls(index)
    clock = FakeClock()
    engine = SearchEngine(SchedulerConfig(max_num_running=128), runner=None, clock=clock, start=False)
    engine.add_collection("c", index)
    q = dataset("ivf_ip")[:num_running, :index.dim]
    futures = [engine.submit("c", q[i], 10, nprobe=32, stage=stage) for i in range(num_running)]
    calls = []
    while not all(f.done() for f in futures):
        before = counter.calls
        engine.step()
        clock.advance(0.004)
        calls.append(counter.calls - before)
    return calls


def private_ivf() -> IVFIndex:
    x = dataset("ivf_ip")
    idx = IVFIndex(x.shape[1], 64, metric="ip", nprobe=8)
    idx.train(x, niter=4, seed=0)
    idx.add(x)
    return idx


def test_kernel_calls_per_iteration_do_not_grow_with_running_requests():
    for stage in ("decode", "prefill"):
        one = kernel_calls_per_iteration(private_ivf(), 1, stage)
        many = kernel_calls_per_iteration(private_ivf(), 64, stage)
        # one coarse assignment for every newcomer, and at most two list-major scans (the head first)
        assert max(one) <= 3 and max(many) <= 3, (stage, one, many)


def test_flat_kernel_calls_are_per_chunk_not_per_request():
    x = dataset("flat_l2")
    flat = FlatIndex(x.shape[1], metric="l2", block_size=64, chunk_blocks=4)
    flat.add(x)
    num_chunks = flat.num_chunks if hasattr(flat, "num_chunks") else -(-len(x) // 256)
    counter = KernelCalls(flat)
    clock = FakeClock()
    engine = SearchEngine(SchedulerConfig(), clock=clock, start=False)
    engine.add_collection("f", flat)
    futures = [engine.submit("f", x[i], 5, stage="prefill") for i in range(64)]
    while not all(f.done() for f in futures):
        before = counter.calls
        engine.step()
        clock.advance(0.004)
        assert counter.calls - before <= num_chunks
    assert counter.calls <= 2 * num_chunks  # every chunk read once for all 64 requests (one wrap at most)


def test_start_freezes_the_start_up_heap():
    import gc

    from trinity.engine import GcPauses

    engine = SearchEngine(SchedulerConfig())
    try:
        assert gc.get_freeze_count() > 10_000
        with GcPauses() as pauses:
            gc.collect()
        assert pauses.count[2] == 1 and pauses.max_s > 0
    finally:
        engine.shutdown()
