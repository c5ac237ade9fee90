"""SearchEngine end to end: real runner, real (small) indexes, exact answers."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from trinity.engine import (EngineClosedError, RequestStatus, SchedulerConfig, SearchEngine, SearchRunner, Stage,
                            UnknownCollectionError)
from trinity.errors import TrinityError
from trinity.index import FlatIndex, IVFIndex

from .helpers import (slots_held, FakeClock, SPECS, assert_matches, dataset, fixed_budget, index, make_collections, queries,
                      reference_many)

NAMES = tuple(SPECS)  # ivf_ip (32-d), ivf_l2 (48-d), flat_cos (64-d), flat_l2 (32-d)
TIMEOUT_S = 60


def make_engine(config: SchedulerConfig | None = None, names=NAMES, **kw) -> SearchEngine:
    return SearchEngine(config, collections=make_collections(*names), **kw)


class RecordingRunner(SearchRunner):
    """The real runner, keeping every plan and output."""

    def __init__(self, collections, clock: FakeClock | None = None, advance_s: float = 0.0) -> None:
        super().__init__(collections)
        self.plans, self.outputs = [], []
        self.clock, self.advance_s = clock, advance_s

    def run(self, plan):
        out = super().run(plan)
        self.plans.append(plan)
        self.outputs.append(out)
        if self.clock is not None:
            self.clock.advance(self.advance_s)
        return out


def step_until_idle(engine: SearchEngine, max_steps: int = 2_000) -> list:
    results = []
    for _ in range(max_steps):
        if not engine.scheduler.has_work and not engine._inbox:
            return results
        results += engine.step()
    busy = [(r.request_id, r.collection, r.status.name, r.num_units_done, r.num_units_total)
            for r in engine.scheduler.requests.values()]
    raise AssertionError(f"engine still busy after {max_steps} steps (a stall): {busy[:8]}")


def random_specs(rng: np.random.Generator, n: int, names=NAMES):
    specs = []
    for j in range(n):
        name = names[int(rng.integers(len(names)))]
        nprobe = None if rng.random() < 0.2 else int(rng.integers(1, 80))  # > nlist is clamped
        specs.append((name, int(rng.integers(len(queries(name)))), int(rng.integers(1, 40)), nprobe,
                      ["decode", "prefill", "background"][int(rng.integers(3))]))
    return specs


def check_all(specs, results) -> None:
    by_name: dict = {}
    for j, (name, qi, k, nprobe, stage) in enumerate(specs):
        by_name.setdefault(name, []).append(j)
    for name, js in by_name.items():
        default = index(name).nprobe if isinstance(index(name), IVFIndex) else None
        refs = reference_many(name, queries(name)[[specs[j][1] for j in js]], [specs[j][2] for j in js],
                              [specs[j][3] if specs[j][3] is not None else default for j in js])
        for j, ref in zip(js, refs):
            res = results[j]
            assert res.status is RequestStatus.FINISHED_COMPLETE and not res.partial, (specs[j], res.status, res.message)
            assert res.fraction_scanned == 1.0 and res.stage is Stage.parse(specs[j][4])
            assert_matches(name, res.scores, res.ids, ref, what=str(specs[j]), query=queries(name)[specs[j][1]])


# --------------------------------------------------------------------------- exactness
def test_concurrent_mixed_requests_equal_index_search():
    """Many threads, four collections (ip / l2 / cosine, 32-64 d, IVF and flat) in one engine."""
    specs = random_specs(np.random.default_rng(0), 160)
    assert any(name == "ivf_ip" and (nprobe or 8) >= 20 for name, _, _, nprobe, _ in specs)  # > 8000 vectors
    cols = make_collections()
    runner = RecordingRunner(cols)
    with SearchEngine(fixed_budget(8_000), collections=cols, runner=runner) as engine:
        futures: list = [None] * len(specs)

        def client(offset: int) -> None:
            for j in range(offset, len(specs), 4):
                name, qi, k, nprobe, stage = specs[j]
                futures[j] = engine.submit(name, queries(name)[qi], k, nprobe=nprobe, stage=stage)
                if j % 7 == 0:
                    time.sleep(0.001)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [f.result(timeout=TIMEOUT_S) for f in futures]
    check_all(specs, results)
    assert any(len({w.collection for w in p.items()}) > 1 for p in runner.plans), "collections share iterations"
    assert max(len(p.items()) for p in runner.plans) > 2, "requests should be batched into shared iterations"
    assert max(r.num_iterations for r in results) > 1, "big requests span several iterations"


def preempted_vs_alone(name: str, qi: int, nprobe: int | None):
    """Run one big prefill query under a tiny budget with decode requests cutting in, and
    the same query alone with budget to spare; return both results."""
    clock = FakeClock()
    names = ("ivf_ip", "ivf_l2", "flat_cos")
    engine = make_engine(fixed_budget(1500), names, start=False, clock=clock)
    big = engine.submit(name, queries(name)[qi], 25, nprobe=nprobe, stage="prefill")
    decodes = []
    for step in range(12):
        if step in (2, 5, 6):  # decode work arrives while the prefill is in progress
            decodes.append(engine.submit("ivf_l2", queries("ivf_l2")[step], 5, nprobe=16, stage="decode"))
        if step == 8:
            decodes.append(engine.submit("ivf_ip", queries("ivf_ip")[step], 5, nprobe=8, stage="decode"))
        engine.step()
        clock.advance(0.004)
    step_until_idle(engine)
    assert all(f.result(timeout=0).status is RequestStatus.FINISHED_COMPLETE for f in decodes)
    preempted = big.result(timeout=0)
    assert preempted.status is RequestStatus.FINISHED_COMPLETE
    assert preempted.num_preemptions >= 2 and preempted.num_iterations > 2, preempted

    engine2 = make_engine(fixed_budget(10_000_000), names, start=False)
    fut = engine2.submit(name, queries(name)[qi], 25, nprobe=nprobe, stage="prefill")
    engine2.step()
    alone = fut.result(timeout=0)
    assert alone.num_iterations == 1 and alone.num_preemptions == 0
    (ref,) = reference_many(name, queries(name)[[qi]], [25], [nprobe])
    assert_matches(name, preempted.scores, preempted.ids, ref, query=queries(name)[qi])
    return preempted, alone


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ivf_scores_are_bit_identical_to_index_search(metric):
    if metric == "l2":
        idx = index("ivf_l2")
    else:
        idx = IVFIndex(48, 64, metric="cosine")
        idx.train(dataset("ivf_l2"), niter=4)
        idx.add(dataset("ivf_l2"))
    engine = SearchEngine(fixed_budget(10_000_000), start=False)
    engine.add_collection("c", idx)
    qs = queries("ivf_l2")
    futures = [engine.submit("c", q, 10, nprobe=8) for q in qs]
    step_until_idle(engine)
    d, i = idx.search(qs, 10, nprobe=8)
    np.testing.assert_array_equal(np.stack([f.result().ids for f in futures]), i)
    np.testing.assert_array_equal(np.stack([f.result().scores for f in futures]), d)


def test_preempted_ivf_request_equals_unpreempted_run():
    preempted, alone = preempted_vs_alone("ivf_ip", 3, 64)
    np.testing.assert_array_equal(preempted.ids, alone.ids)
    np.testing.assert_array_equal(preempted.scores, alone.scores)


def test_preempted_flat_request_equals_unpreempted_run():
    preempted, alone = preempted_vs_alone("flat_cos", 4, None)
    np.testing.assert_array_equal(preempted.ids, alone.ids)
    np.testing.assert_allclose(preempted.scores, alone.scores, rtol=1e-5, atol=1e-5)


def test_flat_collections_are_continuously_batched():
    cols = make_collections("flat_cos", "flat_l2")
    runner = RecordingRunner(cols)
    engine = SearchEngine(fixed_budget(2048), collections=cols, runner=runner, start=False)  # 8 chunks / iteration
    futures = {}
    for step in range(6):
        if step < 4:  # one new request per iteration, while the earlier ones are mid-scan
            name = "flat_cos" if step != 2 else "flat_l2"
            futures[(name, step)] = engine.submit(name, queries(name)[step], 10 + step, stage="prefill")
        engine.step()
    step_until_idle(engine)
    chunks: dict = {}
    for plan in runner.plans:
        for w in plan.items():
            chunks.setdefault(w.request_id, []).extend(w.units)
    firsts = set()
    for (name, step), fut in futures.items():
        res = fut.result(timeout=0)
        seen = chunks[fut.request_id]
        assert sorted(seen) == list(range(index(name).num_chunks)), f"{name}: every chunk exactly once, got {seen}"
        firsts.add((name, seen[0]))
        (ref,) = reference_many(name, queries(name)[[step]], [10 + step], [None])
        assert res.status is RequestStatus.FINISHED_COMPLETE and res.num_iterations > 1
        assert_matches(name, res.scores, res.ids, ref, query=queries(name)[step])
    assert len({c for n, c in firsts if n == "flat_cos"}) > 1, "late joiners start at the shared cursor, mid-scan"
    assert any(len([w for w in p.items() if w.collection == "flat_cos"]) > 1 for p in runner.plans), \
        "requests of one flat collection should ride in the same iteration"


# --------------------------------------------------------------------------- APIs
def test_sync_api():
    with make_engine() as engine:
        for name in NAMES:
            q = queries(name)[5]
            res = engine.search_sync(name, q, 7, nprobe=16)
            (ref,) = reference_many(name, q[None], [7], [16])
            assert res.status is RequestStatus.FINISHED_COMPLETE and res.request_id
            assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32
            assert_matches(name, res.scores, res.ids, ref, query=q)
            assert res.total_ms >= res.queue_ms >= 0


def test_async_api():
    specs = random_specs(np.random.default_rng(1), 40)

    async def main(engine):
        return await asyncio.gather(*[engine.search(name, queries(name)[qi], k, nprobe=nprobe, stage=stage)
                                      for name, qi, k, nprobe, stage in specs])

    with make_engine(SchedulerConfig(initial_budget_vectors=8_000, min_budget_vectors=4_000)) as engine:
        results = asyncio.run(main(engine))
    check_all(specs, results)


def test_async_cancel_aborts_the_request():
    engine = make_engine(fixed_budget(1000), start=False)

    async def main():
        task = asyncio.create_task(engine.search("ivf_ip", queries("ivf_ip")[0], 10, nprobe=64))
        await asyncio.sleep(0.01)  # submitted
        await asyncio.to_thread(engine.step)  # admitted and partly scanned
        assert len(engine.scheduler.requests) == 1 and len(engine.scheduler.joined) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    step_until_idle(engine)
    assert not engine.scheduler.requests and not slots_held(engine.scheduler)
    assert engine.metrics.registry.get_sample_value(
        "trinity_search_finished_total", {"stage": "prefill", "status": "aborted"}) == 1


def test_abort_via_future():
    engine = make_engine(fixed_budget(1000), start=False)
    fut = engine.submit("flat_cos", queries("flat_cos")[0], 10)
    other = engine.submit("ivf_ip", queries("ivf_ip")[0], 10, nprobe=8)
    engine.step()
    assert not fut.done() and fut.request_id in engine.scheduler.joined
    engine.abort(fut.request_id)
    engine.abort("no-such-request")  # harmless
    engine.step()
    res = fut.result(timeout=0)
    assert res.status is RequestStatus.FINISHED_ABORTED and res.partial and res.message == "aborted"
    assert 0 < res.fraction_scanned < 1
    assert np.all(res.ids == -1) and np.all(np.isneginf(res.scores))
    assert fut.request_id not in engine.scheduler.joined and fut.request_id not in engine.scheduler.requests
    step_until_idle(engine)
    assert other.result(timeout=0).status is RequestStatus.FINISHED_COMPLETE
    assert not slots_held(engine.scheduler)


def test_request_ids():
    engine = make_engine(start=False)
    fut = engine.submit("ivf_ip", queries("ivf_ip")[0], 3, request_id="mine")
    assert fut.request_id == "mine"
    with pytest.raises(ValueError, match="request_id"):
        engine.submit("ivf_ip", queries("ivf_ip")[0], 3, request_id="mine")
    step_until_idle(engine)
    assert fut.result(timeout=0).request_id == "mine"
    engine.submit("ivf_ip", queries("ivf_ip")[0], 3, request_id="mine")  # free again once finished
    step_until_idle(engine)


# --------------------------------------------------------------------------- shutdown
def test_shutdown_drain_completes_pending_requests():
    engine = make_engine(fixed_budget(2_000))
    specs = random_specs(np.random.default_rng(2), 30)
    futures = [engine.submit(name, queries(name)[qi], k, nprobe=nprobe, stage=stage)
               for name, qi, k, nprobe, stage in specs]
    engine.shutdown(drain=True, timeout_s=TIMEOUT_S)
    assert all(f.done() for f in futures)
    check_all(specs, [f.result(timeout=0) for f in futures])
    with pytest.raises(EngineClosedError):
        engine.submit("ivf_ip", queries("ivf_ip")[0], 3)
    engine.shutdown()  # idempotent


def test_shutdown_without_drain_fails_pending_requests():
    engine = make_engine(fixed_budget(1_000), start=False)
    futures = [engine.submit("ivf_ip", queries("ivf_ip")[i], 5, nprobe=64) for i in range(5)]
    engine.step()  # some in flight, most waiting
    queued = engine.submit("flat_cos", queries("flat_cos")[0], 5)  # still in the inbox
    engine.shutdown(drain=False)
    for f in futures + [queued]:
        assert f.done()
        with pytest.raises(EngineClosedError):
            f.result(timeout=0)
    with pytest.raises(EngineClosedError):
        engine.submit("ivf_ip", queries("ivf_ip")[0], 3)


def test_shutdown_without_drain_with_running_loop():
    engine = make_engine(fixed_budget(1_000))
    futures = [engine.submit("flat_cos", queries("flat_cos")[i], 5) for i in range(20)]
    engine.shutdown(drain=False)
    assert engine._thread is None
    outcomes = set()
    for f in futures:
        assert f.done()
        if f.exception() is not None:
            assert isinstance(f.exception(), EngineClosedError)
            outcomes.add("closed")
        else:
            assert f.result().status is RequestStatus.FINISHED_COMPLETE
            outcomes.add("complete")
    assert "closed" in outcomes


def test_context_manager_drains():
    with make_engine() as engine:
        fut = engine.submit("ivf_l2", queries("ivf_l2")[1], 4)
    assert fut.result(timeout=0).status is RequestStatus.FINISHED_COMPLETE
    with pytest.raises(EngineClosedError):
        engine.submit("ivf_l2", queries("ivf_l2")[1], 4)


# --------------------------------------------------------------------------- validation
BAD_INPUTS = [
    ("wrong dim", dict(query=np.zeros(31, np.float32)), "dimension"),
    ("two vectors", dict(query=np.zeros((2, 32), np.float32)), "query"),
    ("nan", dict(query=np.full(32, np.nan, np.float32)), "NaN"),
    ("inf", dict(query=np.full(32, np.inf, np.float32)), "inf"),
    ("string query", dict(query="hello"), "quer"),
    ("k=0", dict(k=0), "k"),
    ("k<0", dict(k=-3), "k"),
    ("k float", dict(k=2.5), "k"),
    ("nprobe=0", dict(nprobe=0), "nprobe"),
    ("unknown collection", dict(collection="nope"), "collection"),
    ("bad stage", dict(stage="lunch"), "stage"),
    ("bad stage int", dict(stage=7), "stage"),
    ("deadline 0", dict(deadline_ms=0), "deadline_ms"),
    ("deadline <0", dict(deadline_ms=-5.0), "deadline_ms"),
    ("deadline nan", dict(deadline_ms=math.nan), "deadline_ms"),
]


@pytest.mark.parametrize("case,kwargs,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_value_error_naming_the_field(case, kwargs, field):
    engine = make_engine(start=False)
    args = dict(collection="ivf_ip", query=queries("ivf_ip")[0], k=5)
    args.update(kwargs)
    collection, query, k = args.pop("collection"), args.pop("query"), args.pop("k")
    with pytest.raises(ValueError) as exc:
        engine.submit(collection, query, k, **args)
    assert field.lower() in str(exc.value).lower(), str(exc.value)
    assert isinstance(exc.value, TrinityError) and 400 <= exc.value.status < 500  # one taxonomy, a client error
    assert exc.value.field in ("query", "k", "nprobe", "collection", "stage", "deadline_ms"), exc.value.field
    assert not engine._inbox and not engine._futures, "a rejected submission leaves no trace"
    if case == "unknown collection":
        assert isinstance(exc.value, UnknownCollectionError)


# --------------------------------------------------------------------------- collections
def test_dropping_an_ivf_collection_mid_flight_errors_its_requests():
    engine = make_engine(fixed_budget(2_000), ("ivf_ip", "ivf_l2"), start=False)
    running = engine.submit("ivf_ip", queries("ivf_ip")[0], 5, nprobe=64)
    waiting = [engine.submit("ivf_ip", queries("ivf_ip")[i], 5, nprobe=64) for i in range(1, 4)]
    survivor = engine.submit("ivf_l2", queries("ivf_l2")[0], 5, nprobe=16)
    engine.step()
    assert running.request_id in engine.scheduler.joined
    engine.drop_collection("ivf_ip")
    step_until_idle(engine)
    for f in [running] + waiting:
        res = f.result(timeout=0)
        assert res.status is RequestStatus.FINISHED_ERROR and "ivf_ip" in res.message, (res.status, res.message)
        assert np.all(res.ids == -1)
    assert survivor.result(timeout=0).status is RequestStatus.FINISHED_COMPLETE
    assert not slots_held(engine.scheduler) and not engine.scheduler.requests
    with pytest.raises(ValueError):
        engine.submit("ivf_ip", queries("ivf_ip")[0], 5)


def test_dropping_a_flat_collection_mid_flight_errors_its_requests():
    engine = make_engine(fixed_budget(1_000), ("flat_cos", "ivf_ip"), start=False)
    running = engine.submit("flat_cos", queries("flat_cos")[0], 5)
    waiting = engine.submit("flat_cos", queries("flat_cos")[1], 5)
    survivor = engine.submit("ivf_ip", queries("ivf_ip")[0], 5)
    engine.step()
    assert running.request_id in engine.scheduler.joined
    engine.drop_collection("flat_cos")
    step_until_idle(engine)
    for f in (running, waiting):
        res = f.result(timeout=0)
        assert res.status is RequestStatus.FINISHED_ERROR and "flat_cos" in res.message, (res.status, res.message)
    assert not slots_held(engine.scheduler) and not engine.scheduler.requests
    assert survivor.result(timeout=0).status is RequestStatus.FINISHED_COMPLETE


def test_dropping_a_collection_before_admission_errors_its_requests():
    engine = make_engine(fixed_budget(1_000), ("ivf_ip", "ivf_l2"), start=False)
    doomed = engine.submit("ivf_ip", queries("ivf_ip")[0], 5)
    survivor = engine.submit("ivf_l2", queries("ivf_l2")[0], 5)
    engine.drop_collection("ivf_ip")
    step_until_idle(engine)
    res = doomed.result(timeout=0)
    assert res.status is RequestStatus.FINISHED_ERROR and "ivf_ip" in res.message
    assert survivor.result(timeout=0).status is RequestStatus.FINISHED_COMPLETE


def replacement(old, kind: str):
    x = np.random.default_rng(5).standard_normal((3000, old.dim)).astype(np.float32)
    if kind == "flat":
        new = FlatIndex(old.dim, metric=old.metric.name, block_size=64, chunk_blocks=4)
    else:
        new = IVFIndex(old.dim, 64 if kind == "ivf-same-shape" else 8, metric=old.metric.name)
        new.train(x, niter=3)
    new.add(x)
    return new


@pytest.mark.parametrize("kind", ["ivf-same-shape", "ivf-smaller-nlist", "flat"])
def test_replacing_a_collection_mid_flight_errors_its_requests(kind):
    name = "flat_cos" if kind == "flat" else "ivf_ip"
    engine = make_engine(fixed_budget(1500), (name,), start=False)
    fut = engine.submit(name, queries(name)[0], 5, nprobe=32)
    engine.step()
    assert fut.request_id in engine.scheduler.joined
    engine.add_collection(name, replacement(engine.drop_collection(name), kind))  # e.g. a re-index
    step_until_idle(engine)
    res = fut.result(timeout=0)
    assert res.status is RequestStatus.FINISHED_ERROR, (res.status, res.ids)


class FailingRunner(SearchRunner):
    """Raises on its ``fail_at``-th call (a device error, a bug in a kernel, ...)."""

    def __init__(self, collections, fail_at: int) -> None:
        super().__init__(collections)
        self.calls, self.fail_at = 0, fail_at

    def run(self, plan):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        return super().run(plan)


def test_engine_survives_a_failing_iteration():
    cols = make_collections("ivf_ip")
    engine = SearchEngine(fixed_budget(1500), collections=cols, runner=FailingRunner(cols, fail_at=2))
    try:
        futures = [engine.submit("ivf_ip", queries("ivf_ip")[i], 5, nprobe=64) for i in range(3)]
        for f in futures:  # each resolves, with an error naming the failure
            res = f.result(timeout=5)
            assert res.status is RequestStatus.FINISHED_ERROR and "device lost" in res.message
        assert not engine.scheduler.requests and not slots_held(engine.scheduler)
        later = engine.submit("ivf_ip", queries("ivf_ip")[5], 5, nprobe=4)
        res = later.result(timeout=5)
        assert res.status is RequestStatus.FINISHED_COMPLETE
        (ref,) = reference_many("ivf_ip", queries("ivf_ip")[[5]], [5], [4])
        assert_matches("ivf_ip", res.scores, res.ids, ref)
    finally:
        engine.shutdown(drain=False)


class GatedFailingRunner(SearchRunner):
    """Holds its first iteration until released, then fails its second."""

    def __init__(self, collections) -> None:
        super().__init__(collections)
        self.calls = 0
        self.entered, self.gate = threading.Event(), threading.Event()

    def run(self, plan):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.gate.wait(10)
        if self.calls == 2:
            raise RuntimeError("device lost")
        return super().run(plan)


def test_requests_finished_in_a_failing_iteration_still_resolve():
    cols = make_collections("ivf_ip")
    runner = GatedFailingRunner(cols)
    engine = SearchEngine(fixed_budget(1500, max_num_waiting=2), collections=cols, runner=runner)
    try:
        running = engine.submit("ivf_ip", queries("ivf_ip")[0], 5, nprobe=64)
        assert runner.entered.wait(10)  # iteration 1 is in the runner; what follows lands in iteration 2
        aborted = engine.submit("ivf_ip", queries("ivf_ip")[1], 5, nprobe=64)
        engine.abort(aborted.request_id)
        waiting = [engine.submit("ivf_ip", queries("ivf_ip")[i], 5, nprobe=64) for i in (2, 3)]
        rejected = engine.submit("ivf_ip", queries("ivf_ip")[4], 5, nprobe=64)  # queue full
        runner.gate.set()
        assert running.result(timeout=10).status is RequestStatus.FINISHED_ERROR  # failed by the loop
        for f in [aborted, rejected, *waiting]:  # resolved too (by the resolver thread or the loop)
            assert f.result(timeout=5).status is not RequestStatus.FINISHED_COMPLETE
    finally:
        runner.gate.set()
        engine.shutdown(drain=False)


def test_empty_collection_answers_padding():
    engine = SearchEngine(start=False)
    engine.add_collection("empty", FlatIndex(8, metric="l2"))
    fut = engine.submit("empty", np.ones(8, np.float32), 3)
    step_until_idle(engine)
    res = fut.result(timeout=0)
    assert res.status is RequestStatus.FINISHED_COMPLETE
    assert np.all(res.ids == -1) and np.all(np.isposinf(res.scores))
    with pytest.raises(ValueError):
        engine.add_collection("empty", FlatIndex(8))


# --------------------------------------------------------------------------- metrics
def run_metrics_workload():
    clock = FakeClock()
    cols = make_collections("ivf_ip", "flat_cos")
    runner = RecordingRunner(cols, clock=clock, advance_s=0.030)  # every iteration takes 30 ms of fake time
    engine = SearchEngine(fixed_budget(1_500), collections=cols, runner=runner, clock=clock, start=False)
    big = engine.submit("ivf_ip", queries("ivf_ip")[1], 5, nprobe=64, stage="background")
    engine.step()  # big is running ...
    late = engine.submit("flat_cos", queries("flat_cos")[0], 5, stage="prefill", deadline_ms=50)
    engine.step()  # ... and now preempted
    small = [engine.submit("ivf_ip", queries("ivf_ip")[i], 5, nprobe=4, stage="decode") for i in range(3)]
    step_until_idle(engine)
    return engine, late.result(timeout=0), big.result(timeout=0), [f.result(timeout=0) for f in small]


def test_metrics_registry():
    engine, late, big, small = run_metrics_workload()
    assert late.status is RequestStatus.FINISHED_PARTIAL and late.deadline_missed and late.fraction_scanned < 1
    assert big.num_preemptions >= 1
    text = generate_latest(engine.metrics.registry).decode()
    for name in ["trinity_search_latency_seconds_bucket", "trinity_engine_queue_depth",
                 "trinity_engine_iteration_seconds_bucket", "trinity_engine_vectors_scanned_total",
                 "trinity_engine_preemptions_total", "trinity_search_finished_total",
                 "trinity_search_deadline_misses_total", "trinity_engine_budget_vectors",
                 "trinity_engine_iterations_total", "trinity_engine_iteration_vectors_bucket"]:
        assert name in text, name
    get = engine.metrics.registry.get_sample_value
    for stage in ("decode", "prefill", "background"):
        assert get("trinity_search_latency_seconds_count", {"stage": stage}) >= 1, stage
        for state in ("waiting", "running", "preempted"):
            assert get("trinity_engine_queue_depth", {"stage": stage, "state": state}) == 0  # all done
    assert get("trinity_search_latency_seconds_count", {"stage": "decode"}) == 3
    iterations = get("trinity_engine_iterations_total")
    assert iterations == sum(not p.is_head for p in engine.runner.plans) and get("trinity_engine_iteration_seconds_count") == iterations
    assert get("trinity_engine_vectors_scanned_total") == sum(o.num_vectors_scanned for o in engine.runner.outputs)
    assert 0 < get("trinity_engine_vectors_read_total") == sum(o.vectors_read for o in engine.runner.outputs)
    assert get("trinity_engine_preemptions_total") == engine.scheduler.num_preemptions >= 1
    assert get("trinity_search_queue_seconds_count", {"stage": "decode"}) == 3
    assert get("trinity_search_finished_total", {"stage": "prefill", "status": "partial"}) == 1
    assert get("trinity_search_finished_total", {"stage": "decode", "status": "complete"}) == 3
    assert get("trinity_search_deadline_misses_total", {"stage": "prefill"}) == 1
    assert get("trinity_engine_budget_vectors") == 1_500


def test_queue_depth_gauge_tracks_waiting_and_running():
    engine = make_engine(fixed_budget(1_000), ("ivf_ip",), start=False)
    for i in range(5):
        engine.submit("ivf_ip", queries("ivf_ip")[i], 5, nprobe=64, stage="background")
    engine.step()
    get = engine.metrics.registry.get_sample_value
    running = get("trinity_engine_queue_depth", {"stage": "background", "state": "running"})
    waiting = get("trinity_engine_queue_depth", {"stage": "background", "state": "waiting"})
    assert running >= 1 and waiting >= 1 and running + waiting == 5
    step_until_idle(engine)


class PartRecordingRunner(SearchRunner):
    """The real runner, recording what each plan it runs finishes."""

    def __init__(self, collections) -> None:
        super().__init__(collections)
        self.parts: list[tuple[bool, set[str]]] = []  # (is a head, results)

    def run(self, plan):
        out = super().run(plan)
        self.parts.append((plan.is_head, set(out.results)))
        return out


def test_decode_results_leave_before_the_rest_of_the_scan():
    """A decode lookup's lists are scanned first (the head sub-plan), with every rider of
    those lists; its result is resolved before the rest of the iteration scans, exactly once,
    and every answer -- decode and the riders split across the two parts -- equals index.search."""
    cols = make_collections("ivf_ip")
    runner = PartRecordingRunner(cols)
    engine = SearchEngine(fixed_budget(40_000), collections=cols, runner=runner, start=False)
    qs = queries("ivf_ip")
    bulk = [engine.submit("ivf_ip", qs[i], 10, nprobe=64, stage="prefill") for i in range(3)]
    first = engine.step()  # the bulk requests join and start scanning (several iterations at this budget)
    decode = [engine.submit("ivf_ip", qs[10 + i], 4, nprobe=8, stage="decode") for i in range(2)]
    finished = {r.request_id: r for r in first + step_until_idle(engine)}
    decode_ids = {f.request_id for f in decode}
    delivered = set().union(*(done for head, done in runner.parts if head))
    assert decode_ids <= delivered and not delivered & {f.request_id for f in bulk}
    for futs, k, nprobe, rows in ((decode, 4, 8, [10, 11]), (bulk, 10, 64, [0, 1, 2])):
        refs = reference_many("ivf_ip", qs[rows], [k] * len(rows), [nprobe] * len(rows))
        for f, ref in zip(futs, refs):
            res = f.result(timeout=0)
            assert res.status is RequestStatus.FINISHED_COMPLETE
            assert_matches("ivf_ip", res.scores, res.ids, ref)
            assert finished[f.request_id].total_ms == res.total_ms
    assert engine.scheduler.num_finished == 5


def test_a_flat_collection_that_shrinks_under_a_scan_finishes_it():
    """Deletes move vectors out of the last chunks while a flat scan is under way: the scan
    skips the chunks that no longer exist and finishes (no stall, no error)."""
    x = dataset("flat_l2")
    flat = FlatIndex(x.shape[1], metric="l2", block_size=64, chunk_blocks=4)  # 256 vectors per chunk
    flat.add(x)
    engine = SearchEngine(fixed_budget(512), start=False)  # two chunks per iteration
    engine.add_collection("f", flat)
    fut = engine.submit("f", x[0], 5, stage="prefill")
    engine.step()
    flat.remove(np.arange(len(x) // 2, len(x)))  # half the chunks disappear
    step_until_idle(engine)
    res = fut.result(timeout=0)
    assert res.status in (RequestStatus.FINISHED_COMPLETE, RequestStatus.FINISHED_PARTIAL) and res.ids[0] == 0
    assert not slots_held(engine.scheduler)
