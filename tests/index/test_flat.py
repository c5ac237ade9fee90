"""FlatIndex: exact search equals a numpy brute force, for every metric and input kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trinity.index import FlatIndex

from .helpers import SENTINEL, assert_matches_exact

METRICS = ["ip", "l2", "cosine"]
INPUT_KINDS = ["f32", "f64", "f16", "torch32", "torch64"]


def as_input(x: np.ndarray, kind: str):
    """``x`` in one of the accepted input flavours (the values are those of ``x``)."""
    return {
        "f32": lambda: x.astype(np.float32),
        "f64": lambda: x.astype(np.float64),
        "f16": lambda: x.astype(np.float16),
        "torch32": lambda: torch.from_numpy(x.astype(np.float32)),
        "torch64": lambda: torch.from_numpy(x.astype(np.float64)),
    }[kind]()


def make_data(rng: np.random.Generator, n: int, dim: int, style: str) -> np.ndarray:
    """float16-representable data so that every input flavour carries identical values."""
    if style == "gauss":
        x = rng.standard_normal((n, dim))
    elif style == "ints":  # many exact ties
        x = rng.integers(-2, 3, (n, dim)).astype(np.float64)
    else:  # duplicated rows
        base = rng.standard_normal((max(1, n // 3), dim))
        x = base[rng.integers(0, base.shape[0], n)]
    return x.astype(np.float16).astype(np.float64)


@st.composite
def flat_cases(draw):
    n = draw(st.integers(1, 300))
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        metric=draw(st.sampled_from(METRICS)),
        dim=draw(st.integers(1, 64)),
        n=n,
        k=draw(st.integers(1, n + 5)),
        nq=draw(st.integers(1, 8)),
        explicit_ids=draw(st.booleans()),
        add_kind=draw(st.sampled_from(INPUT_KINDS)),
        query_kind=draw(st.sampled_from(INPUT_KINDS + ["1d"])),
        style=draw(st.sampled_from(["gauss", "gauss", "ints", "dups"])),
        block_size=draw(st.sampled_from([1, 3, 16, 256])),
        chunk_blocks=draw(st.sampled_from([1, 2, 64])),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flat_cases())
def test_flat_matches_numpy_exact(case):
    rng = np.random.default_rng(case["seed"])
    n, dim, k, metric = case["n"], case["dim"], case["k"], case["metric"]
    x = make_data(rng, n, dim, case["style"])
    index = FlatIndex(dim, metric=metric, block_size=case["block_size"], chunk_blocks=case["chunk_blocks"])
    if case["explicit_ids"]:
        ids = rng.choice(np.iinfo(np.int64).max - 1, size=n, replace=False).astype(np.int64)
        got_ids = index.add(as_input(x, case["add_kind"]), ids)
    else:
        ids = np.arange(n, dtype=np.int64)
        got_ids = index.add(as_input(x, case["add_kind"]))
    np.testing.assert_array_equal(got_ids, ids)
    assert got_ids.dtype == np.int64
    assert index.ntotal == len(index) == n
    assert set(index.ids().tolist()) == set(ids.tolist())

    if case["query_kind"] == "1d":
        q = make_data(rng, 1, dim, "gauss")
        D, I = index.search(q[0], k)
    else:
        # half the time query with stored vectors themselves (exact hits / ties)
        q = x[rng.integers(0, n, case["nq"])] if rng.random() < 0.5 else make_data(rng, case["nq"], dim, "gauss")
        D, I = index.search(as_input(q, case["query_kind"]), k)
    assert D.dtype == np.float32
    assert_matches_exact(D, I, x, ids, q, k, metric)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), metric=st.sampled_from(METRICS), block_size=st.sampled_from([1, 2, 5]),
       chunk_blocks=st.sampled_from([1, 3]))
def test_flat_after_removes_and_upserts(seed, metric, block_size, chunk_blocks):
    """Removal moves vectors and recycles blocks (non-contiguous chunks): still exact."""
    rng = np.random.default_rng(seed)
    dim, n = 8, int(rng.integers(20, 120))
    index = FlatIndex(dim, metric=metric, block_size=block_size, chunk_blocks=chunk_blocks)
    store: dict[int, np.ndarray] = {}
    for _ in range(4):
        x = make_data(rng, n, dim, "gauss")
        new_ids = rng.choice(3 * n, size=n, replace=False)
        index.add(x, new_ids)  # ids already present are replaced
        store.update(zip(new_ids.tolist(), x))
        gone = rng.choice(3 * n, size=n // 2, replace=False)
        removed = index.remove(gone)
        assert removed == sum(int(g) in store for g in gone)
        for g in gone.tolist():
            store.pop(g, None)
    assert index.ntotal == len(store)
    ids = np.array(sorted(store), dtype=np.int64)
    xs = np.stack([store[i] for i in ids.tolist()]) if len(ids) else np.zeros((0, dim))
    if len(ids) == 0:
        return
    np.testing.assert_allclose(index.reconstruct(ids), _prepared(xs, metric), rtol=1e-6, atol=1e-6)
    q = make_data(rng, 5, dim, "gauss")
    k = int(rng.integers(1, len(ids) + 4))
    D, I = index.search(q, k)
    assert_matches_exact(D, I, xs, ids, q, k, metric)


def _prepared(x: np.ndarray, metric: str) -> np.ndarray:
    if metric != "cosine":
        return x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_n_pads_with_sentinel(metric):
    index = FlatIndex(4, metric=metric)
    index.add(np.eye(4, dtype=np.float32)[:3], np.array([10, 20, 30]))
    D, I = index.search(np.ones((2, 4), dtype=np.float32), 6)
    assert I.shape == D.shape == (2, 6)
    assert np.all(I[:, 3:] == -1)
    assert set(I[0, :3].tolist()) == {10, 20, 30}
    assert np.all(D[:, 3:] == SENTINEL[metric])
    assert np.all(np.isfinite(D[:, :3]))


@pytest.mark.parametrize("metric", METRICS)
def test_empty_index_search_is_all_padding(metric):
    index = FlatIndex(3, metric=metric)
    D, I = index.search(np.ones(3, dtype=np.float32), 2)
    assert np.all(I == -1) and np.all(D == SENTINEL[metric])


def test_exact_ties_break_by_smaller_id():
    index = FlatIndex(2, metric="ip", block_size=2, chunk_blocks=1)
    x = np.ones((10, 2), dtype=np.float32)
    ids = np.array([9, 3, 7, 1, 8, 0, 6, 2, 5, 4])
    index.add(x, ids)
    D, I = index.search(np.ones((1, 2), dtype=np.float32), 4)
    np.testing.assert_array_equal(I[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(D[0], [2.0, 2.0, 2.0, 2.0])


# --------------------------------------------------------------------------- validation
def _index(metric="ip"):
    index = FlatIndex(4, metric=metric)
    index.add(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    return index


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 5), np.float32), "wrong dimension 5"),
    (np.zeros((2, 3), np.float32), "wrong dimension 3"),
    (np.zeros(5, np.float32), "wrong dimension 5"),
    (np.zeros((2, 2, 4), np.float32), "expected shape"),
    (np.zeros((0, 4), np.float32), "empty"),
    (np.array([[1, 2, np.nan, 4]], np.float32), "NaN or inf"),
    (np.array([[1, 2, np.inf, 4]], np.float64), "NaN or inf"),
    (np.array([[1, 2, -np.inf, 4]], np.float16), "NaN or inf"),
    (torch.tensor([[1.0, float("nan"), 0.0, 0.0]]), "NaN or inf"),
    (np.array([["a", "b", "c", "d"]]), "expected a float array"),
    (np.array([[object(), 1, 2, 3]], dtype=object), "expected a float array"),
    (np.array([[1 + 1j, 0, 0, 0]]), "expected a float array"),
    (np.ones((1, 4), dtype=bool), "expected a float array"),
    (torch.ones((1, 4), dtype=torch.bool), "expected a float array"),
    ("abcd", "expected a numpy array or torch tensor"),
    (None, "expected a numpy array or torch tensor"),
])
@pytest.mark.parametrize("where", ["add", "search"])
def test_bad_vectors_raise_value_error_naming_the_problem(bad, match, where):
    index = _index()
    before = index.ntotal
    with pytest.raises(ValueError, match=match):
        if where == "add":
            index.add(bad)
        else:
            index.search(bad, 3)
    assert index.ntotal == before  # nothing was touched


@pytest.mark.parametrize("k, match", [(0, "k: must be in"), (-3, "k: must be in"), (10**9, "k: must be in"),
                                      (2.0, "k: expected an int"), (True, "k: expected an int"),
                                      ("3", "k: expected an int")])
def test_bad_k_raises(k, match):
    with pytest.raises(ValueError, match=match):
        _index().search(np.zeros(4, np.float32), k)


@pytest.mark.parametrize("metric", ["L1", "hamming", "", "dot"])
def test_unknown_metric_raises(metric):
    with pytest.raises(ValueError, match="unknown metric"):
        FlatIndex(4, metric=metric)


@pytest.mark.parametrize("dim", [0, -1, 2.5, True, "4"])
def test_bad_dim_raises(dim):
    with pytest.raises(ValueError, match="dim"):
        FlatIndex(dim)


@pytest.mark.parametrize("ids, match", [
    (np.array([1, 2]), "got 2 ids for 3 vectors"),
    (np.array([1, 1, 2]), "duplicate ids"),
    (np.array([0, -1, 2]), ">= 0"),
    (np.array([0.5, 1, 2]), "integer ids"),
    (np.array(["a", "b", "c"]), "integer ids"),
    (np.array([[0, 1, 2]]), "1-D"),
])
def test_bad_ids_raise(ids, match):
    index = _index()
    with pytest.raises(ValueError, match=match):
        index.add(np.zeros((3, 4), np.float32), ids)
    assert index.ntotal == 10


def test_integral_float_ids_and_torch_ids_accepted():
    index = FlatIndex(2)
    np.testing.assert_array_equal(index.add(np.eye(2), np.array([5.0, 7.0])), [5, 7])
    np.testing.assert_array_equal(index.add(np.eye(2), torch.tensor([8, 9])), [8, 9])
    assert sorted(index.ids().tolist()) == [5, 7, 8, 9]


@pytest.mark.parametrize("kwargs, match", [({"chunk_blocks": 0}, "chunk_blocks"), ({"chunk_blocks": -2}, "chunk_blocks"),
                                           ({"block_size": 0}, "block_size")])
def test_bad_constructor_arguments_raise(kwargs, match):
    """Bad sizes fail at construction with a ValueError (not ZeroDivisionError at search)."""
    with pytest.raises(ValueError, match=match):
        FlatIndex(4, **kwargs)
