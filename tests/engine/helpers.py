"""Shared data, indexes and drivers for the engine tests (small, built once per session)."""

from __future__ import annotations

import functools

import numpy as np

from trinity.engine import Collections, IterationPlan, Scheduler, SchedulerConfig
from trinity.engine.graph_rows import graph_itopk, hop_limit
from trinity.index import FlatIndex, GraphIndex, IVFIndex


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        assert dt >= 0
        self.t += float(dt)


def clustered(n: int, dim: int, n_clusters: int, sigma: float, seed: int) -> np.ndarray:
    """Gaussian blobs: uneven IVF list sizes, like real data."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    weights = rng.pareto(1.5, n_clusters) + 1.0  # skewed cluster populations
    labels = rng.choice(n_clusters, n, p=weights / weights.sum())
    return (centers[labels] + sigma * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)).astype(np.float32)


def queries_for(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.choice(x.shape[0], n, replace=False)]
    return (q + 0.5 * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(x.shape[1])).astype(np.float32)


# name -> (kind, n, dim, metric, nlist)
SPECS = {
    "ivf_ip": ("ivf", 20_000, 32, "ip", 64),
    "ivf_l2": ("ivf", 8_000, 48, "l2", 64),
    "flat_cos": ("flat", 5_000, 64, "cosine", 0),
    "flat_l2": ("flat", 3_000, 32, "l2", 0),
}
#: Collections only the tests that name them use (graph: nlist is the out-degree).
EXTRA_SPECS = {"graph_ip": ("graph", 4_000, 32, "ip", 16)}


@functools.lru_cache(maxsize=None)
def dataset(name: str) -> np.ndarray:
    kind, n, dim, metric, nlist = {**SPECS, **EXTRA_SPECS}[name]
    return clustered(n, dim, 100, 2.0, seed=_number(name))


def _number(name: str) -> int:
    return sorted(SPECS).index(name) if name in SPECS else len(SPECS) + sorted(EXTRA_SPECS).index(name)


@functools.lru_cache(maxsize=None)
def index(name: str):
    """Shared read-only index (tests never mutate these; build private ones to mutate)."""
    kind, n, dim, metric, nlist = {**SPECS, **EXTRA_SPECS}[name]
    x = dataset(name)
    if kind == "ivf":
        idx = IVFIndex(dim, nlist, metric=metric, nprobe=8)
        idx.train(x, niter=8, seed=0)
    elif kind == "graph":
        idx = GraphIndex(dim, metric=metric, graph_degree=nlist)
    else:
        # 256 vectors per chunk: 20 (cosine) / 12 (l2) chunks, so flat scans span iterations
        idx = FlatIndex(dim, metric=metric, block_size=64, chunk_blocks=4)
    idx.add(x)
    return idx


@functools.lru_cache(maxsize=None)
def queries(name: str, n: int = 64) -> np.ndarray:
    return queries_for(dataset(name), n, seed=100 + _number(name))


def fixed_budget(budget: int, **kw) -> SchedulerConfig:
    """A scheduler config whose vector budget does not adapt (deterministic plans)."""
    return SchedulerConfig(initial_budget_vectors=budget, min_budget_vectors=budget, max_budget_vectors=budget, **kw)


def make_collections(*names: str) -> Collections:
    cols = Collections()
    for name in names or tuple(SPECS):
        cols.add(name, index(name))
    return cols


def drive(sched: Scheduler, runner, *, clock: FakeClock | None = None, max_iters: int = 5_000,
          idle_s: float = 0.001, before_schedule=None, after_update=None) -> dict:
    """Run ``schedule -> run -> update`` like ``SearchEngine.step`` until no work is left.

    Returns ``{request_id: (request, scores, ids)}`` of everything that finished; fails
    if the scheduler is still busy after ``max_iters`` iterations (a stall).
    ``before_schedule(i)`` may add requests; ``after_update(plan, out)`` may inspect.
    """
    finished: dict = {}

    def collect(items):
        for req, s, i in items:
            assert req.request_id not in finished, f"{req.request_id} finished twice"
            finished[req.request_id] = (req, s, i)

    for it in range(max_iters):
        if before_schedule is not None:
            before_schedule(it)
        collect(sched.pop_finished())
        if not sched.has_work:
            return finished
        plan = sched.schedule()
        collect(sched.pop_finished())
        if plan.is_empty:  # the engine runs nothing; only time passes
            if clock is not None:
                clock.advance(idle_s)
            continue
        for part in plan.parts:
            out = runner.run(part)
            collect(sched.update_from_output(part, out))
            if after_update is not None:
                after_update(part, out)
    raise AssertionError(f"scheduler still busy after {max_iters} iterations: "
                         f"{[(r.request_id, r.status.name, r.num_units_done, r.num_units_total) for r in sched.requests.values()][:10]}")


def work_of(plan: IterationPlan, rid: str):
    return next((w for part in plan.parts for w in part.items() if w.request_id == rid), None)



def reference_many(name: str, qs: np.ndarray, ks: list[int], nprobes: list[int | None]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``index.search`` answers for many (query, k, nprobe), batched per nprobe.

    The top-k under the index's total order (score, then id) is a prefix of the top-K for
    K >= k, so one search with the largest k serves every k.
    """
    idx = index(name)
    out: list = [None] * len(ks)
    groups: dict = {}
    graph = isinstance(idx, GraphIndex)
    for j, p in enumerate(nprobes):
        if graph:  # the engine's itopk (at least k, at most a row's buffer) depends on k: group by both
            p = (graph_itopk(p or 64, ks[j]), ks[j])
        groups.setdefault(p if isinstance(idx, (IVFIndex, GraphIndex)) else None, []).append(j)
    for p, js in groups.items():
        kmax = max(ks[j] for j in js)
        if graph:
            d, i = idx.search(qs[js], kmax, itopk=p[0], max_hops=int(hop_limit(p[0])))
        elif isinstance(idx, IVFIndex):
            d, i = idx.search(qs[js], kmax, nprobe=p)
        else:
            d, i = idx.search(qs[js], kmax)
        for row, j in enumerate(js):
            out[j] = (d[row, : ks[j]], i[row, : ks[j]])
    return out


#: IVF answers of the engine equal ``index.search`` bit for bit -- ids always; scores only
#: once ``BaseIndex.prepare_validated`` prepares queries exactly like ``prepare_queries``
#: (see test_engine.py::test_ivf_scores_are_bit_identical_to_index_search).  Until then IVF
#: scores are compared to a few float32 ulps of the magnitudes involved.
IVF_BIT_EXACT_SCORES = True


def assert_matches(name: str, scores: np.ndarray, ids: np.ndarray, ref: tuple[np.ndarray, np.ndarray], what: str = "",
                   query: np.ndarray | None = None) -> None:
    """IVF: ids bit-exact, scores too (see ``IVF_BIT_EXACT_SCORES``).  Flat: ids exact,
    scores to 1e-5 -- relative to the magnitudes that cancel for L2
    (``||q||^2 + ||x||^2 - 2 q.x``), since the GEMM's batch shape differs between the
    engine and ``index.search``."""
    d, i = ref
    assert ids.shape == i.shape and scores.shape == d.shape, (ids.shape, i.shape)
    np.testing.assert_array_equal(ids, i, err_msg=f"{name} {what}: ids differ from index.search")
    idx = index(name)
    l2_scale = 1.0
    if idx.metric.name == "l2":
        l2_scale += float(np.max((dataset(name) ** 2).sum(1)))
        if query is not None:
            l2_scale += float((np.asarray(query, np.float64) ** 2).sum())
    if isinstance(idx, GraphIndex):
        np.testing.assert_array_equal(scores, d, err_msg=f"{name} {what}: scores differ from index.search")
    elif isinstance(idx, IVFIndex):
        if IVF_BIT_EXACT_SCORES:
            np.testing.assert_array_equal(scores, d, err_msg=f"{name} {what}: scores differ from index.search")
        else:
            ulps = 4 * float(np.finfo(np.float32).eps)
            np.testing.assert_allclose(scores, d, rtol=ulps, atol=ulps * l2_scale,
                                       err_msg=f"{name} {what}: scores differ from index.search")
    else:
        np.testing.assert_allclose(scores, d, rtol=1e-5, atol=1e-5 * l2_scale, err_msg=f"{name} {what}: scores differ")


def run_plan(sched: Scheduler, runner, plan: IterationPlan) -> list:
    """Run a plan's parts (head first) and update after each, as ``SearchEngine.step`` does."""
    return [f for part in plan.parts for f in sched.update_from_output(part, runner.run(part))]


def slots_held(sched: Scheduler) -> int:
    """Progress-table slots held (each is also a row of the runner's persistent batch)."""
    return sum(len(t) for t in sched.tables.values())
