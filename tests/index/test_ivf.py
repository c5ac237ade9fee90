"""IVFIndex: recall on clustered data, exactness at full probing, backend agreement."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from trinity.index import FlatIndex, IVFIndex, ProbeChunk, RunningTopK, scan

from .helpers import SENTINEL, assert_matches_exact, assert_same_ids_up_to_ties, clustered_data, exact_search, recall_at_k

METRICS = ["ip", "l2", "cosine"]


@functools.lru_cache(maxsize=None)
def clustered(n: int = 20_000, dim: int = 64, nq: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = clustered_data(rng, n, dim, n_clusters=512, sigma=3.0)
    q = x[rng.choice(n, nq, replace=False)] + 1.5 * rng.standard_normal((nq, dim)).astype(np.float32) / np.sqrt(dim)
    return x, q.astype(np.float32)


@functools.lru_cache(maxsize=None)
def trained_ivf(metric: str, nlist: int = 128):
    x, _ = clustered()
    index = IVFIndex(x.shape[1], nlist, metric=metric)
    index.train(x, niter=10, seed=0)
    index.add(x)
    return index


@pytest.mark.parametrize("metric", METRICS)
def test_recall_at_nlist_over_8(metric):
    x, q = clustered()
    index = trained_ivf(metric)
    assert index.ntotal == x.shape[0]
    assert index.list_sizes().sum() == x.shape[0]
    _, I_exact = exact_search(x, np.arange(x.shape[0]), q, 10, metric)
    D, I = index.search(q, 10, nprobe=index.nlist // 8)
    recall = recall_at_k(I, I_exact)
    assert recall >= 0.95, f"{metric}: recall@10 = {recall:.3f} at nprobe={index.nlist // 8}"
    # more probes never hurt (same candidates plus more)
    _, I2 = index.search(q, 10, nprobe=index.nlist // 4)
    assert recall_at_k(I2, I_exact) >= recall


@pytest.mark.parametrize("metric", METRICS)
def test_full_probe_equals_exact_search(metric):
    rng = np.random.default_rng(1)
    n, dim, nlist = 3000, 24, 16
    x = rng.standard_normal((n, dim)).astype(np.float32)
    ids = rng.choice(10**12, n, replace=False).astype(np.int64)
    index = IVFIndex(dim, nlist, metric=metric, block_size=8)
    index.train(x, niter=5)
    index.add(x, ids)
    q = np.concatenate([rng.standard_normal((30, dim)), x[:10]]).astype(np.float32)
    for k in (1, 10, 57):
        D, I = index.search(q, k, nprobe=nlist)
        assert_matches_exact(D, I, x, ids, q, k, metric)
    # and it agrees with the flat index
    flat = FlatIndex(dim, metric=metric)
    flat.add(x, ids)
    Df, If = flat.search(q, 10)
    D, I = index.search(q, 10, nprobe=nlist)
    assert_same_ids_up_to_ties(If, Df, I, D)


@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_candidates_pads(metric):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    index = IVFIndex(8, 4, metric=metric)
    index.train(x)
    index.add(x)
    D, I = index.search(x[:3], 60, nprobe=4)
    assert_matches_exact(D, I, x, np.arange(40), x[:3], 60, metric)
    # with one probe only that list's vectors can come back; the rest is padding
    D, I = index.search(x[0], 60, nprobe=1)
    lst = index.assign(x[0], 1)[0, 0]
    m = int(index.list_sizes()[lst])
    assert np.all(I[0, :m] >= 0) and np.all(I[0, m:] == -1)
    assert np.all(D[0, m:] == SENTINEL[metric])


def test_add_or_search_before_train_raises():
    index = IVFIndex(8, 4)
    assert not index.is_trained
    with pytest.raises(ValueError, match="before train"):
        index.add(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="before train"):
        index.search(np.zeros((1, 8), np.float32), 3)
    assert index.ntotal == 0


def test_train_validation():
    index = IVFIndex(8, 16)
    with pytest.raises(ValueError, match="at least nlist=16"):
        index.train(np.zeros((10, 8), np.float32))
    with pytest.raises(ValueError, match="wrong dimension"):
        index.train(np.zeros((100, 7), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        index.train(np.full((100, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="nlist"):
        IVFIndex(8, 0)
    with pytest.raises(ValueError, match="centroids: expected 16 rows"):
        index.set_centroids(np.zeros((15, 8), np.float32))


def test_cannot_retrain_non_empty_index():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 8)).astype(np.float32)
    index = IVFIndex(8, 4)
    index.train(x)
    index.add(x)
    with pytest.raises(ValueError, match="non-empty"):
        index.set_centroids(x[:4])


@pytest.mark.parametrize("nprobe, match", [(0, "nprobe"), (-1, "nprobe"), (1.5, "nprobe")])
def test_bad_nprobe_raises(nprobe, match):
    index = trained_ivf("ip")
    with pytest.raises(ValueError, match=match):
        index.search(np.zeros(64, np.float32), 3, nprobe=nprobe)


@pytest.mark.parametrize("metric", METRICS)
def test_scan_backends_agree(metric):
    """numba (list-major) and torch (gather + bmm) scans return the same ids on random data."""
    rng = np.random.default_rng(4)
    n, dim, nlist = 2000, 16, 16
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((260, dim)).astype(np.float32)  # > one internal search batch
    a = IVFIndex(dim, nlist, metric=metric, block_size=16, scan_backend="numba")
    a.train(x, niter=5)
    b = IVFIndex(dim, nlist, metric=metric, block_size=16, scan_backend="torch")
    b.set_centroids(a.centroids)
    a.add(x)
    b.add(x)
    for nprobe in (1, 4, nlist):
        Da, Ia = a.search(q, 10, nprobe=nprobe)
        Db, Ib = b.search(q, 10, nprobe=nprobe)
        assert_same_ids_up_to_ties(Ia, Da, Ib, Db)
        assert (Ia == Ib).mean() > 0.999
    # and at full probing both equal exact search
    D, I = b.search(q[:20], 10, nprobe=nlist)
    assert_matches_exact(D, I, x, np.arange(n), q[:20], 10, metric)


def test_torch_backend_mixed_k_and_block_ranges():
    """The torch scan honours per-row k and block ranges (compare with numba, no ties)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    index = IVFIndex(16, 8, block_size=4)
    index.train(x, niter=5)
    index.add(x)
    q = rng.standard_normal((6, 16)).astype(np.float32)
    queries, _ = index.prepare_queries(q)
    probes = index.assign_prepared(queries, np.array([1, 2, 8, 3, 8, 1]))
    chunk = ProbeChunk.from_probes(probes)
    nb = index.lists.num_list_blocks(chunk.list_ids)
    start = rng.integers(0, nb + 1)
    end = np.minimum(start + rng.integers(0, 5, size=nb.shape), nb + 2)  # past the end is clipped
    chunk = ProbeChunk(chunk.query_ptr, chunk.list_ids, start, end)
    ks = np.array([1, 5, 17, 3, 40, 2])
    results = []
    for backend in ("numba", "torch"):
        topk = RunningTopK.empty(6, ks)
        scan(index.lists, queries, chunk, topk, backend=backend)
        results.append(topk)
    np.testing.assert_array_equal(results[0].ids.numpy(), results[1].ids.numpy())
    np.testing.assert_allclose(results[0].scores.numpy(), results[1].scores.numpy(), rtol=1e-5, atol=1e-5)
    for r, k in enumerate(ks):
        assert np.all(results[0].ids.numpy()[r, k:] == -1)


def test_unknown_scan_backend_raises():
    index = trained_ivf("ip")
    index2 = IVFIndex(64, 128, scan_backend="cuda-magic")
    index2.set_centroids(index.centroids)
    index2.add(np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="unknown scan backend"):
        index2.search(np.zeros(64, np.float32), 3)


@pytest.mark.parametrize("metric", METRICS)
def test_remove_and_upsert_affect_search(metric):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    index = IVFIndex(16, 8, metric=metric, block_size=4)
    index.train(x, niter=5)
    ids = np.arange(1000, 1500)
    index.add(x, ids)
    # the nearest neighbour of x[0] is itself ...
    _, I = index.search(x[0], 1, nprobe=8)
    assert I[0, 0] == 1000
    # ... until removed
    assert index.remove([1000, 1000, 7]) == 1
    _, I = index.search(x[0], 5, nprobe=8)
    assert 1000 not in I
    # re-adding id 1001 with x[0]'s vector replaces the old 1001
    index.add(x[:1], np.array([1001]))
    assert index.ntotal == 499
    _, I = index.search(x[0], 1, nprobe=8)
    assert I[0, 0] == 1001
    keep = np.arange(1, 500)
    store = x[keep].copy()
    store[0] = x[0]  # id 1001 now holds x[0]
    q = rng.standard_normal((10, 16)).astype(np.float32)
    D, I = index.search(q, 7, nprobe=8)
    assert_matches_exact(D, I, store, keep + 1000, q, 7, metric)


def test_assign_shapes_and_per_query_nprobe():
    index = trained_ivf("l2")
    _, q = clustered()
    probes = index.assign(q[:5], 7)
    assert probes.shape == (5, 7) and probes.dtype == np.int64
    assert all(len(set(row.tolist())) == 7 for row in probes)
    queries, _ = index.prepare_queries(q[:3])
    ragged = index.assign_prepared(queries, np.array([1, 3, 2]))
    assert ragged.shape == (3, 3)
    np.testing.assert_array_equal(ragged >= 0, [[1, 0, 0], [1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(ragged[1], probes[1, :3])
    assert torch.is_tensor(queries)


@pytest.mark.parametrize("metric", METRICS)
def test_probes_do_not_depend_on_the_batch(metric):
    """Small batches take the serial coarse kernel, large ones the parallel one: a query's
    probes must be the same either way (the engine admits a few at a time, search() many)."""
    index = trained_ivf(metric)
    _, q = clustered()
    many = index.assign(q[:100], 16)
    few = np.concatenate([index.assign(q[i:i + 3], 16) for i in range(0, 100, 3)])
    np.testing.assert_array_equal(many, few[:100])


@pytest.mark.parametrize("nprobe", [0, -1])
def test_bad_default_nprobe_raises_at_construction(nprobe):
    """A default nprobe < 1 must be rejected up front: nprobe=0 used to make every
    search silently return nothing, nprobe=-1 a numpy error at search time."""
    with pytest.raises(ValueError, match="nprobe"):
        IVFIndex(8, 4, nprobe=nprobe)


def test_default_nprobe_is_clamped_and_used():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    index = IVFIndex(8, 4, nprobe=100)
    assert index.nprobe == 4
    index.train(x)
    index.add(x)
    D, I = index.search(x[:5], 3)  # default nprobe = all lists: exact
    assert_matches_exact(D, I, x, np.arange(200), x[:5], 3, "ip")
