"""GraphIndex: graph invariants, exactness at itopk >= n, recall on real embeddings, hop-level
stepping equal to one-shot search, deletes, inserts, persistence and input errors.

Real-embedding sample: the first 4,000 MiniLM passages (as in test_real_embeddings.py),
200 held out as queries.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from trinity.index import FlatIndex, GraphIndex, load_index
from trinity.index.graph_build import reachable

from .helpers import assert_same_ids_up_to_ties, recall_at_k

data = pytest.importorskip("trinity.data")

NUM_PASSAGES, NUM_QUERIES, K = 4000, 200, 10


@functools.lru_cache(maxsize=None)
def corpus():
    _, emb = data.load_embedded_corpus(NUM_PASSAGES, progress=False)
    emb = np.asarray(emb, dtype=np.float32)
    perm = np.random.default_rng(0).permutation(NUM_PASSAGES)
    return emb[perm[NUM_QUERIES:]], emb[perm[:NUM_QUERIES]]


@functools.lru_cache(maxsize=None)
def built(metric: str, degree: int = 32, refine_itopk: int = 192) -> GraphIndex:
    x, _ = corpus()
    index = GraphIndex(x.shape[1], metric=metric, graph_degree=degree, refine_itopk=refine_itopk)
    index.add(x)
    return index


@functools.lru_cache(maxsize=None)
def exact(metric: str, k: int = K) -> np.ndarray:
    x, q = corpus()
    flat = FlatIndex(x.shape[1], metric=metric)
    flat.add(x)
    return flat.search(q, k)[1]


@pytest.mark.parametrize("degree, refine_itopk", [(16, 192), (32, 192), (32, 0)])
def test_graph_invariants(degree, refine_itopk):
    index = built("ip", degree, refine_itopk)
    g = index.graph
    assert g.shape == (index.ntotal, degree) and g.dtype == np.int32
    assert (g >= 0).all() and (g < index.ntotal).all(), "every node has exactly graph_degree edges"
    assert not (g == np.arange(len(g))[:, None]).any(), "no self loops"
    srt = np.sort(g, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any(), "no duplicate edges"
    seen = reachable(g, index.entries, np.ones(len(g), np.uint8))
    assert seen.mean() >= 0.999


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_itopk_covering_the_index_equals_flat(metric):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    q = rng.standard_normal((20, 24)).astype(np.float32)
    index = GraphIndex(24, metric=metric, graph_degree=8)
    index.add(x)
    flat = FlatIndex(24, metric=metric)
    flat.add(x)
    D, I = index.search(q, 10, itopk=600)
    Df, If = flat.search(q, 10)
    assert_same_ids_up_to_ties(I, D, If, Df)


@pytest.mark.parametrize("metric, refine_itopk", [("ip", 192), ("cosine", 192), ("l2", 192), ("ip", 0)])
def test_recall_on_real_embeddings(metric, refine_itopk):
    _, q = corpus()
    index = built(metric, 32, refine_itopk)
    rec = {L: recall_at_k(index.search(q, K, itopk=L)[1], exact(metric)) for L in (16, 64)}
    assert rec[64] >= 0.95, rec
    assert rec[16] <= rec[64]


def test_hop_steps_on_random_subsets_equal_one_shot():
    _, q = corpus()
    index = built("ip")
    D1, I1 = index.search(q, K, itopk=48, search_width=2)
    queries, offset = index.prepare_queries(q)
    state = index.start_search(queries.numpy(), itopk=48, search_width=2)
    rng = np.random.default_rng(3)
    for _ in range(10_000):
        live = np.nonzero(~state.done())[0]
        if not live.size:
            break
        rows = live[rng.random(live.size) < 0.5]
        index.advance(state, rows, int(rng.integers(1, 4)))
    D2, I2 = index.results(state, K, offset.numpy())
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)


def test_rows_of_a_persistent_batch_do_the_one_shot_work():
    """Rows seeded in place into a batch sized for the largest itopk (the engine's) use the hash a
    one-shot state of their own itopk gets: same answers, same distance evaluations and hops."""
    from trinity.index.graph_search import empty_state, hash_size_for

    _, q = corpus()
    index = built("ip")
    queries, offset = index.prepare_queries(q[:24])
    batch = empty_state(64, queries.shape[1], 256, hash_size_for(256, 1, index.graph_degree, index.entries.size))
    rows = np.arange(40, 64)
    for itopk in (16, 48):
        alone = index.start_search(queries.numpy(), itopk=itopk)
        index.seed_rows(batch, rows, queries.numpy(), itopk=itopk)
        index.advance(alone, None, 1000)
        index.advance(batch, rows, 1000)
        np.testing.assert_array_equal(index.results(batch, K, offset.numpy(), rows=rows)[1],
                                      index.results(alone, K, offset.numpy())[1])
        np.testing.assert_array_equal(batch.num_evals[rows], alone.num_evals)
        np.testing.assert_array_equal(batch.hops[rows], alone.hops)


def test_a_query_alone_gets_the_batch_result():
    _, q = corpus()
    index = built("cosine")
    D, I = index.search(q[:40], K, itopk=32)
    for r in range(0, 40, 7):
        d1, i1 = index.search(q[r], K, itopk=32)
        np.testing.assert_array_equal(i1[0], I[r])
        np.testing.assert_allclose(d1[0], D[r], rtol=1e-6)


def test_kth_best_never_worsens_and_hops_are_capped():
    _, q = corpus()
    index = built("l2")
    queries, offset = index.prepare_queries(q[:50])
    state = index.start_search(queries.numpy(), itopk=32, max_hops=12)
    last = index.results(state, K, offset.numpy())[0][:, -1]
    while not state.done().all():
        index.advance(state, None, 1)
        kth = index.results(state, K, offset.numpy())[0][:, -1]
        assert (kth <= last + 1e-6).all()  # squared L2: smaller is better
        last = kth
    assert state.hops.max() <= 12


def test_deleted_ids_never_return_and_consolidation_keeps_recall():
    x, q = corpus()
    index = GraphIndex(x.shape[1], graph_degree=24, consolidate_threshold=0.25)
    ids = index.add(x)
    rng = np.random.default_rng(4)
    gone = rng.choice(ids, size=len(ids) // 10, replace=False)
    assert index.remove(gone) == gone.size and index.num_nodes == len(ids)  # marked, still routing
    assert not np.isin(index.search(q, K, itopk=128)[1], gone).any()
    more = rng.choice(np.setdiff1d(ids, gone), size=len(ids) // 5, replace=False)
    index.remove(more)  # past the threshold: consolidated
    assert index.num_nodes == index.ntotal == len(ids) - gone.size - more.size
    gone = np.concatenate([gone, more])
    _, I = index.search(q, K, itopk=64)
    assert not np.isin(I, gone).any()
    live = np.setdiff1d(ids, gone)
    flat = FlatIndex(x.shape[1])
    flat.add(x[live], live)
    assert recall_at_k(I, flat.search(q, K)[1]) >= 0.93
    assert reachable(index.graph, index.entries, np.ones(index.num_nodes, np.uint8)).mean() >= 0.999


def test_inserted_points_find_themselves():
    x, _ = corpus()
    index = GraphIndex(x.shape[1], metric="cosine", graph_degree=24)
    index.add(x[:2400])
    new_ids = np.concatenate([index.add(x[s:s + 100]) for s in range(2400, 3800, 100)])  # pool grows in between
    assert index.ntotal == 3800 and (index.graph[2400:] >= 0).all()
    _, I = index.search(x[2400:], 1, itopk=32)
    assert np.mean(I[:, 0] == new_ids) >= 0.99


def test_upsert_replaces_the_vector():
    x, _ = corpus()
    index = GraphIndex(x.shape[1], graph_degree=16)
    index.add(x[:1000])
    index.add(x[1000:1001], ids=np.array([5]))
    assert index.ntotal == 1000
    _, I = index.search(x[1000:1001], 1)
    assert I[0, 0] == 5
    np.testing.assert_allclose(index.reconstruct([5])[0], x[1000], rtol=1e-6)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_save_load_round_trip(tmp_path, metric):
    x, q = corpus()
    index = GraphIndex(x.shape[1], metric=metric, graph_degree=16, num_entries=32)
    index.add(x[:1500], ids=np.arange(1500) * 3)
    index.remove(np.arange(0, 90, 3))
    index.save(tmp_path / "g")
    loaded = load_index(tmp_path / "g")
    assert isinstance(loaded, GraphIndex) and loaded.ntotal == index.ntotal == 1470
    assert loaded.config() == index.config()
    np.testing.assert_array_equal(loaded.graph, index.graph)
    np.testing.assert_array_equal(loaded.entries, index.entries)
    for a, b in zip(index.search(q, K, itopk=32), loaded.search(q, K, itopk=32)):
        np.testing.assert_array_equal(a, b)
    assert 0 not in loaded and 3 * 40 in loaded


def test_empty_and_tiny_indexes():
    index = GraphIndex(8, graph_degree=4)
    D, I = index.search(np.ones((2, 8), np.float32), 3)
    assert (I == -1).all() and np.isneginf(D).all()
    index.add(np.eye(8, dtype=np.float32)[:3])
    D, I = index.search(np.eye(8, dtype=np.float32)[:1], 5)
    assert I[0, 0] == 0 and sorted(I[0, :3]) == [0, 1, 2] and (I[0, 3:] == -1).all()


@pytest.mark.parametrize("kwargs, field", [
    ({"itopk": 0}, "itopk"), ({"search_width": 0}, "search_width"), ({"max_hops": -1}, "max_hops"),
    ({"k": 0}, "k"), ({"itopk": 1.5}, "itopk"),
])
def test_bad_search_arguments_name_the_field(kwargs, field):
    index = built("ip")
    args = {"k": 5, **kwargs}
    with pytest.raises(ValueError, match=field):
        index.search(np.ones(384, np.float32), **args)


@pytest.mark.parametrize("kwargs, field", [
    ({"graph_degree": 0}, "graph_degree"), ({"graph_degree": 32, "intermediate_degree": 8}, "intermediate_degree"),
    ({"device": "cuda"}, "device"), ({"consolidate_threshold": 0.0}, "consolidate_threshold"),
    ({"metric": "hamming"}, "metric"), ({"num_entries": 0}, "num_entries"), ({"refine_itopk": -1}, "refine_itopk"),
    ({"refine_passes": 0}, "refine_passes"),
])
def test_bad_constructor_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GraphIndex(16, **kwargs)


def test_bad_vectors_name_the_field():
    index = GraphIndex(8)
    with pytest.raises(ValueError, match="x"):
        index.add(np.ones((3, 7), np.float32))
    with pytest.raises(ValueError, match="queries"):
        index.search(np.full((1, 8), np.nan, np.float32), 1)
    with pytest.raises(ValueError, match="ids"):
        index.add(np.ones((2, 8), np.float32), ids=np.array([1, 1]))


def test_warmup_compiles_the_graph_kernels():
    from trinity.index import graph_build, graph_refine, graph_search, graph_update
    from trinity.index.warmup import warmup

    warmup()
    for kernel in (graph_search._advance, graph_search._advance_serial, graph_search._seed, graph_search._seed_serial,
                   graph_search._topk, graph_build._prune, graph_build.merge_reverse, graph_build.reachable,
                   graph_refine._trace, graph_refine.robust_prune, graph_refine.reverse_edges,
                   graph_update._touches_deleted, graph_update._repair_candidates):
        assert kernel.signatures, kernel.py_func.__name__


def test_serial_twins_have_their_own_cache_entries():
    """numba's disk cache keys machine code by function name and signature, not by options:
    a serial twin under the parallel kernel's name loaded the other's code (the 2-thread
    graph search ran no faster than 1 thread)."""
    from trinity.index import graph_search, ivf

    for parallel, serial in ((graph_search._seed, graph_search._seed_serial),
                             (graph_search._advance, graph_search._advance_serial),
                             (ivf._assign_rows, ivf._assign_rows_serial)):
        assert parallel.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")
        assert parallel._cache._cache_file._index_name != serial._cache._cache_file._index_name
