"""Shared reference implementations and comparators for the index tests."""

from __future__ import annotations

import numpy as np

SENTINEL = {"ip": -np.inf, "cosine": -np.inf, "l2": np.inf}


def _normalize(x: np.ndarray) -> np.ndarray:
    # Same convention as trinity.index.metric: zero vectors stay zero (norm clamped).
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_scores(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """``(nq, n)`` float64 user-visible scores (ip / cosine similarity / squared L2)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == "ip":
        return q @ x.T
    if metric == "cosine":
        return _normalize(q) @ _normalize(x).T
    if metric == "l2":
        # float64 expansion; exact enough and O(nq * n) memory
        return np.maximum((q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * (q @ x.T), 0.0)
    raise AssertionError(metric)


def exact_search(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force ``(D, I)`` with FAISS padding conventions, float64."""
    s = exact_scores(x, q, metric)
    order = np.argsort(s if metric == "l2" else -s, axis=1, kind="stable")[:, :k]
    nq = q.shape[0]
    D = np.full((nq, k), SENTINEL[metric])
    I = np.full((nq, k), -1, dtype=np.int64)
    m = order.shape[1]
    D[:, :m] = np.take_along_axis(s, order, axis=1)
    I[:, :m] = np.asarray(ids)[order]
    return D, I


def assert_matches_exact(D: np.ndarray, I: np.ndarray, x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int,
                         metric: str, *, tie_tol: float = 1e-4) -> None:
    """Check ``(D, I)`` against brute force, tolerating swaps among near-tied candidates.

    ``tie_tol`` is relative to the largest score magnitude of the query row (and at least
    absolute ``tie_tol``), so that float32 rounding in the index never fails the test.
    """
    ids = np.asarray(ids, dtype=np.int64)
    nq = q.shape[0]
    assert D.shape == (nq, k) and I.shape == (nq, k), (D.shape, I.shape, (nq, k))
    assert I.dtype == np.int64
    s = exact_scores(x, q, metric)
    n = x.shape[0]
    m = min(k, n)
    sign = 1.0 if metric == "l2" else -1.0  # ascending sort key
    pos_of = {int(v): j for j, v in enumerate(ids.tolist())}
    for r in range(nq):
        row = s[r]
        tol = tie_tol * max(1.0, float(np.abs(row).max()))
        order = np.argsort(sign * row, kind="stable")
        want = row[order[:m]]
        # padding
        assert np.all(I[r, m:] == -1), f"row {r}: expected -1 padding past {m}, got {I[r]}"
        assert np.all(D[r, m:] == SENTINEL[metric]), f"row {r}: expected sentinel padding, got {D[r]}"
        got_ids = I[r, :m]
        assert np.all(got_ids >= 0), f"row {r}: missing results {got_ids} (n={n}, k={k})"
        assert len(set(got_ids.tolist())) == m, f"row {r}: duplicate ids {got_ids}"
        assert all(int(v) in pos_of for v in got_ids), f"row {r}: unknown ids in {got_ids}"
        np.testing.assert_allclose(D[r, :m], want, rtol=1e-4, atol=tol, err_msg=f"row {r} distances")
        got_exact = row[[pos_of[int(v)] for v in got_ids]]
        # Each returned id must have the exact score of its rank, up to near-ties.
        np.testing.assert_allclose(got_exact, want, rtol=0, atol=tol, err_msg=f"row {r}: ids out of order")
        # Where the rank's score is clearly separated from every other candidate, the id is exact.
        for j in range(m):
            others = np.delete(row, order[j])
            if others.size == 0 or np.abs(others - want[j]).min() > tol:
                assert got_ids[j] == ids[order[j]], f"row {r} rank {j}: {got_ids[j]} != {ids[order[j]]}"


def assert_same_ids_up_to_ties(I1: np.ndarray, D1: np.ndarray, I2: np.ndarray, D2: np.ndarray, *,
                               tie_tol: float = 1e-4) -> None:
    """Two result sets agree: same distances (to tolerance) and the same ids except that
    candidates whose distances are within ``tie_tol`` may swap places."""
    assert I1.shape == I2.shape
    np.testing.assert_allclose(D1, D2, rtol=1e-5, atol=tie_tol)
    for r in range(I1.shape[0]):
        if np.array_equal(I1[r], I2[r]):
            continue
        scale = tie_tol * max(1.0, float(np.abs(D1[r][np.isfinite(D1[r])]).max(initial=0.0)))
        for j in range(I1.shape[1]):
            if I1[r, j] == I2[r, j]:
                continue
            near = np.abs(D1[r] - D1[r, j]) <= scale
            # the differing id must appear among the near-tied ranks of the other result
            # (or the tie extends past the end of the list)
            assert I2[r, j] in I1[r][near] or near[-1], f"row {r} rank {j}: {I1[r]} vs {I2[r]}"


def recall_at_k(I: np.ndarray, I_exact: np.ndarray) -> float:
    k = I_exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(I, I_exact)]))


def clustered_data(rng: np.random.Generator, n: int, dim: int, n_clusters: int, sigma: float) -> np.ndarray:
    """Gaussian blobs around ``N(0, I)`` centres; noise has norm ~``sigma``."""
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    return (centers[rng.integers(0, n_clusters, n)]
            + sigma * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)).astype(np.float32)
