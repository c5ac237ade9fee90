"""The simulated vector node plans exactly as the real engine does for the same arrivals.

Reference: the real ``SearchEngine`` with the real ``SearchRunner`` on a real IVF index,
stepped back to back on a clock that advances by the same cost model (as ``trinity bench
overhead`` does). Simulated: the SimPy ``VectorNode`` -- the same engine and scheduler on a
``CostRunner`` over the index's list sizes alone, probes taken from the real assignment.
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from trinity.engine import Collections, SchedulerConfig, SearchEngine, SearchRunner
from trinity.index import FlatIndex, IVFIndex
from trinity.sim.profiles import SearchCost
from trinity.sim.vector import ShellIndex
from trinity.sim.vnode import VectorNode

COST = SearchCost(fixed_s=0.5e-3, pairs_per_s=20e6, reads_per_s=100e6, per_item_s=20e-6)
CLASSES = [("decode", 4, 8, 20.0), ("prefill", 8, 16, 150.0), ("prefill", 1, 4, 20.0)]  # stage, k, nprobe, deadline


def digest(plan) -> tuple:
    parts = [(p.is_head, tuple(r.request_id for r in p.new_requests),
              tuple(sorted((w.request_id, w.units, w.returns_result) for ride in p.rides for _, w in ride.items())),
              tuple(e.request_id for e in p.finish_partial)) for p in plan.parts]
    work = tuple(w for part in parts for w in part[2])
    return tuple(parts), work, tuple(e for part in parts for e in part[3]), plan.budget_vectors


@pytest.fixture(scope="module", params=[4000.0, 30000.0], ids=["loaded", "overloaded"])
def setup(request):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16)).astype(np.float32)
    x = (centers[rng.integers(0, 40, 6000)] + 0.3 * rng.normal(size=(6000, 16))).astype(np.float32)
    ivf = IVFIndex(16, 64, metric="l2", nprobe=8)
    ivf.train(x, niter=6, seed=0)
    ivf.add(x)
    n = 1200
    times = np.cumsum(rng.exponential(1 / request.param, n))
    cls = rng.integers(0, len(CLASSES), n)
    queries = x[rng.integers(0, len(x), n)] + 0.1 * rng.normal(size=(n, 16)).astype(np.float32)
    return ivf, times, cls, queries.astype(np.float32)


@pytest.fixture(scope="module")
def flat_setup():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 16)).astype(np.float32)
    flat = FlatIndex(16, metric="l2", block_size=64, chunk_blocks=4)  # 256 vectors per chunk: scans span iterations
    flat.add(x)
    n = 300
    times = np.cumsum(rng.exponential(1 / 3000.0, n))
    return flat, times, rng.integers(0, len(CLASSES), n), x[rng.integers(0, len(x), n)]


class _Modelled:
    def __init__(self, inner: SearchRunner, clock: list[float]) -> None:
        self.inner, self.clock = inner, clock

    def run(self, plan):
        out = self.inner.run(plan)
        out.duration_s = COST.seconds(out.num_vectors_scanned, out.vectors_read, plan.num_items + len(plan.new_requests))
        out.duration_s -= COST.fixed_s * plan.is_head
        self.clock[0] += out.duration_s
        return out


def real_plans(ivf, times, cls, queries, config) -> list:
    clock, plans = [0.0], []
    collections = Collections()
    collections.add("corpus", ivf)
    engine = SearchEngine(config, collections=collections, runner=_Modelled(SearchRunner(collections), clock),
                          clock=lambda: clock[0], start=False)
    inner = engine.scheduler.schedule
    engine.scheduler.schedule = lambda: plans.append(inner()) or plans[-1]
    i = 0
    while i < len(times) or engine.scheduler.has_work:
        if i < len(times) and times[i] > clock[0] and not engine.scheduler.has_work:
            clock[0] = float(times[i])  # idle: the next arrival wakes the loop
        now = clock[0]
        while i < len(times) and times[i] <= now:
            stage, k, nprobe, deadline = CLASSES[cls[i]]
            clock[0] = float(times[i])  # NOTE: submitted at its arrival, as a server's loop thread sees it
            engine.submit("corpus", queries[i], k, nprobe=nprobe if isinstance(ivf, IVFIndex) else None, stage=stage,
                          deadline_ms=deadline, request_id=f"r{i}")
            i += 1
        clock[0] = now
        engine.step()
        if plans[-1].is_empty:
            clock[0] += COST.fixed_s  # NOTE: as the simulated node does after an empty plan
    return plans


def sim_plans(ivf, times, cls, queries, config) -> list:
    if isinstance(ivf, FlatIndex):
        sizes = [ivf.chunk_num_vectors(c) for c in range(ivf.num_chunks)]
        return _run_node(ShellIndex(np.array(sizes), dim=16, nprobe=0, kind="flat"), None, times, cls, config)
    probes = {}
    q, _ = ivf.prepare_validated(queries)
    for c, (_, _, nprobe, _) in enumerate(CLASSES):
        rows = np.flatnonzero(cls == c)
        assigned = ivf.assign_prepared(q[rows], nprobe)
        probes.update((f"r{r}", a[a >= 0]) for r, a in zip(rows.tolist(), assigned))
    return _run_node(ShellIndex(ivf.lists.list_len.copy(), dim=16, nprobe=ivf.nprobe), probes, times, cls, config)


def _run_node(shell, probes, times, cls, config) -> list:
    env = simpy.Environment()
    node = VectorNode(env, "v", COST, config, shell, lambda rid, n: probes[rid][:n])
    plans = node.record_plans()

    def arrivals():
        for i, t in enumerate(times):
            yield env.timeout(float(t) - env.now)
            stage, k, nprobe, deadline = CLASSES[cls[i]]
            node.search(f"r{i}", k, nprobe if probes is not None else None, stage, deadline)

    env.process(arrivals())
    env.run()
    return plans


@pytest.mark.parametrize("stage_aware", [True, False])
def test_simulated_plans_equal_the_real_engines(setup, stage_aware):
    config = SchedulerConfig(target_iteration_ms=2.0, stage_aware=stage_aware)
    real = [digest(p) for p in real_plans(*setup, config)]
    sim = [digest(p) for p in sim_plans(*setup, config)]
    assert len(real) > 20
    assert any(len(d[1]) > 3 for d in real), "the workload should batch"
    if setup[1][-1] < 0.05:  # overloaded: deadlines run out, best-so-far answers leave
        assert any(d[2] for d in real)
    first = next((i for i, (a, b) in enumerate(zip(real, sim)) if a != b), None)
    assert first is None, f"plans differ from iteration {first}: real {real[first]} sim {sim[first]}"
    assert len(real) == len(sim)


def test_simulated_flat_plans_equal_the_real_engines(flat_setup):
    config = SchedulerConfig(target_iteration_ms=2.0)
    real = [digest(p) for p in real_plans(*flat_setup, config)]
    sim = [digest(p) for p in sim_plans(*flat_setup, config)]
    assert len(real) > 20 and any(len(d[1]) > 3 for d in real)
    assert real == sim
