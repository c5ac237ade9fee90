"""``scan`` over any chunking of the probes returns bitwise what one full scan returns;
``RunningTopK`` merges are order independent (total order: score desc, then id asc)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trinity.index import IVFIndex, ProbeChunk, RunningTopK, scan


@functools.lru_cache(maxsize=None)
def small_ivf(metric: str, dups: bool):
    """A small IVF with multi-block lists; ``dups`` duplicates vectors (exact score ties)."""
    rng = np.random.default_rng(0 if dups else 1)
    dim = 8
    if dups:
        base = rng.integers(-2, 3, (120, dim)).astype(np.float32)
        x = base[rng.integers(0, 120, 700)]
    else:
        x = rng.standard_normal((700, dim)).astype(np.float32)
    index = IVFIndex(dim, 12, metric=metric, block_size=4, scan_backend="numba")
    index.train(x, niter=5, seed=0)
    ids = rng.choice(10**6, x.shape[0], replace=False)
    index.add(x, ids)
    # a few removals so lists are not in insertion order and blocks get recycled
    index.remove(ids[::7])
    index.add(x[::7] * 0.5, ids[::7] + 10**7)
    return index, x


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(np.uint32)


def _check_total_order(topk: RunningTopK) -> None:
    s, i, ks = topk.scores.numpy(), topk.ids.numpy(), topk.k.numpy()
    for r in range(s.shape[0]):
        valid = i[r] >= 0
        m = int(valid.sum())
        assert np.all(valid[:m]) and m <= ks[r]
        for j in range(m - 1):
            assert s[r, j] > s[r, j + 1] or (s[r, j] == s[r, j + 1] and i[r, j] < i[r, j + 1]), (r, j)
        assert np.all(np.isneginf(s[r, m:]))


def _split_into_chunks(rng: np.random.Generator, probes: np.ndarray, num_blocks, n_chunks: int,
                       over_end: bool) -> list[ProbeChunk]:
    """Cut every (query, list) pair into random block ranges and deal them into chunks."""
    nq = probes.shape[0]
    pieces: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_chunks)]
    for r in range(nq):
        for lst in probes[r][probes[r] >= 0].tolist():
            nb = int(num_blocks[lst])
            n_cuts = int(rng.integers(0, min(nb, 4) + 1))
            cuts = sorted(rng.integers(0, nb + 1, n_cuts).tolist())
            bounds = [0, *cuts, nb + (int(rng.integers(0, 3)) if over_end else 0)]
            for a, b in zip(bounds[:-1], bounds[1:]):  # may include empty ranges (a == b)
                pieces[int(rng.integers(0, n_chunks))].append((r, lst, a, b))
    chunks = []
    for ps in pieces:
        rng.shuffle(ps)  # order of pairs within a query row is irrelevant
        ps.sort(key=lambda p: p[0])  # CSR: query-major
        counts = np.bincount([p[0] for p in ps], minlength=nq)
        ptr = np.zeros(nq + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        lists = np.array([p[1] for p in ps], dtype=np.int64)
        whole = all(a == 0 and b >= num_blocks[lst] for _, lst, a, b in ps)
        if whole and rng.random() < 0.5:
            chunks.append(ProbeChunk(ptr, lists))
        else:
            chunks.append(ProbeChunk(ptr, lists, np.array([p[2] for p in ps], dtype=np.int64),
                                     np.array([p[3] for p in ps], dtype=np.int64)))
    return chunks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), metric=st.sampled_from(["ip", "l2", "cosine"]), dups=st.booleans(),
       n_chunks=st.integers(1, 6), over_end=st.booleans(), mixed_k=st.booleans())
def test_chunked_scan_is_bitwise_equal_to_full_scan(seed, metric, dups, n_chunks, over_end, mixed_k):
    index, x = small_ivf(metric, dups)
    rng = np.random.default_rng(seed)
    nq = int(rng.integers(1, 12))
    q = np.where(rng.random((nq, 1)) < 0.5, x[rng.integers(0, x.shape[0], nq)],
                 rng.standard_normal((nq, x.shape[1]))).astype(np.float32)
    queries, _ = index.prepare_queries(q)
    ks = rng.integers(1, 60, nq) if mixed_k else np.full(nq, int(rng.integers(1, 60)))
    nprobe = rng.integers(1, index.nlist + 1, nq)
    probes = index.assign_prepared(queries, nprobe)

    full = RunningTopK.empty(nq, ks)
    scan(index.lists, queries, ProbeChunk.from_probes(probes), full, backend="numba")
    _check_total_order(full)

    chunks = _split_into_chunks(rng, probes, index.lists.num_list_blocks(), n_chunks, over_end)
    assert sum(c.num_vectors(index.lists) for c in chunks) == ProbeChunk.from_probes(probes).num_vectors(index.lists)
    parts = RunningTopK.empty(nq, ks)
    for c in rng.permutation(len(chunks)).tolist():
        scan(index.lists, queries, chunks[c], parts, backend="numba")

    np.testing.assert_array_equal(parts.ids.numpy(), full.ids.numpy())
    np.testing.assert_array_equal(_bits(parts.scores), _bits(full.scores))
    np.testing.assert_array_equal(parts.k.numpy(), full.k.numpy())


def test_scan_full_equals_reference_top_k_with_ties():
    """One full scan = top-k under (score desc, id asc) of every probed candidate."""
    index, x = small_ivf("ip", True)
    rng = np.random.default_rng(7)
    q = x[rng.integers(0, x.shape[0], 5)]
    queries, _ = index.prepare_queries(q)
    probes = index.assign_prepared(queries, 3)
    topk = RunningTopK.empty(5, np.array([1, 4, 9, 30, 200]))
    scan(index.lists, queries, ProbeChunk.from_probes(probes), topk, backend="numba")
    lists = index.lists
    for r in range(5):
        cand_ids, cand_s = [], []
        for lst in probes[r].tolist():
            for pos in range(int(lists.list_len[lst])):
                blk = lists.block_table[lst, pos // lists.block_size]
                v = lists.vectors[blk, pos % lists.block_size].numpy()
                cand_ids.append(int(lists.slot_ids[blk, pos % lists.block_size]))
                cand_s.append(float(np.dot(queries[r].numpy().astype(np.float64), v)))  # small ints: exact
        order = sorted(range(len(cand_ids)), key=lambda j: (-cand_s[j], cand_ids[j]))
        k = int(topk.k[r])
        want = [cand_ids[j] for j in order[:k]]
        got = topk.ids[r, :k].numpy()
        np.testing.assert_array_equal(got[: len(want)], want)
        assert np.all(got[len(want):] == -1)
        np.testing.assert_array_equal(topk.scores[r, : len(want)].numpy(), [cand_s[j] for j in order[:k]])


def test_scan_rejects_mismatched_rows_and_bad_chunks():
    index, x = small_ivf("ip", False)
    queries, _ = index.prepare_queries(x[:3])
    chunk = ProbeChunk.from_probes(index.assign_prepared(queries, 2))
    with pytest.raises(ValueError, match="same rows"):
        scan(index.lists, queries[:2], chunk, RunningTopK.empty(2, 3))
    with pytest.raises(ValueError, match="same rows"):
        scan(index.lists, queries, chunk, RunningTopK.empty(4, 3))
    with pytest.raises(ValueError, match="CSR"):
        ProbeChunk(np.array([0, 5]), np.array([1, 2]))
    with pytest.raises(ValueError, match="both block_start and block_end"):
        ProbeChunk(np.array([0, 1]), np.array([1]), np.array([0]), None)
    with pytest.raises(ValueError, match="k"):
        RunningTopK.empty(3, np.array([1, 0, 2]))


def test_empty_chunk_is_a_no_op():
    index, x = small_ivf("l2", False)
    queries, _ = index.prepare_queries(x[:2])
    topk = RunningTopK.empty(2, 5)
    scan(index.lists, queries, ProbeChunk(np.zeros(3, dtype=np.int64), np.zeros(0, dtype=np.int64)), topk)
    assert np.all(topk.ids.numpy() == -1)
    # a range past the end of every list scans nothing either
    chunk = ProbeChunk(np.array([0, 1, 2]), np.array([0, 1]), np.array([10**6, 5]), np.array([10**6 + 3, 5]))
    scan(index.lists, queries, chunk, topk, backend="numba")
    assert np.all(topk.ids.numpy() == -1)


# --------------------------------------------------------------------------- RunningTopK
@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 6), n_cand=st.integers(0, 80),
       n_parts=st.integers(1, 6), tie_heavy=st.booleans())
def test_running_topk_merge_is_order_independent(seed, n_rows, n_cand, n_parts, tie_heavy):
    rng = np.random.default_rng(seed)
    ks = rng.integers(1, 25, n_rows)
    scores = (rng.integers(-3, 4, (n_rows, n_cand)) if tie_heavy else rng.standard_normal((n_rows, n_cand)))
    scores = scores.astype(np.float32)
    ids = np.stack([rng.choice(10**9, n_cand, replace=False) for _ in range(n_rows)]).reshape(n_rows, n_cand)
    ids = np.where(rng.random((n_rows, n_cand)) < 0.1, -1, ids).astype(np.int64)  # -1 = no candidate

    one = RunningTopK.empty(n_rows, ks)
    one.merge_candidates(torch.from_numpy(scores), torch.from_numpy(ids))

    perm = rng.permutation(n_cand)
    cuts = np.sort(rng.integers(0, n_cand + 1, n_parts - 1))
    many = RunningTopK.empty(n_rows, ks)
    for part in np.split(perm, cuts)[::-1]:
        many.merge_candidates(torch.from_numpy(scores[:, part].copy()), torch.from_numpy(ids[:, part].copy()))

    np.testing.assert_array_equal(many.ids.numpy(), one.ids.numpy())
    np.testing.assert_array_equal(_bits(many.scores), _bits(one.scores))
    # and both equal the reference top-k under the total order
    for r in range(n_rows):
        cand = [(float(s), int(i)) for s, i in zip(scores[r], ids[r]) if i >= 0]
        cand.sort(key=lambda c: (-c[0], c[1]))
        want = cand[: ks[r]]
        got_i = one.ids[r].numpy()
        np.testing.assert_array_equal(got_i[: len(want)], [c[1] for c in want])
        np.testing.assert_array_equal(one.scores[r, : len(want)].numpy(), np.float32([c[0] for c in want]))
        assert np.all(got_i[len(want):] == -1)


def test_running_topk_results_and_rows():
    from trinity.index import get_metric

    t = RunningTopK.empty(2, np.array([2, 3]))
    t.merge_candidates(torch.tensor([[1.0, 3.0, 2.0, 0.5], [4.0, 4.0, 1.0, -1.0]]),
                       torch.tensor([[10, 11, 12, 13], [7, 5, 6, -1]]))
    D, I = t.to_results(get_metric("ip"), torch.zeros(2))
    np.testing.assert_array_equal(I, [[11, 12, -1], [5, 7, 6]])
    np.testing.assert_array_equal(D, np.float32([[3.0, 2.0, -np.inf], [4.0, 4.0, 1.0]]))
    D, I = t.to_results(get_metric("l2"), torch.tensor([10.0, 10.0]))
    np.testing.assert_array_equal(D, np.float32([[7.0, 8.0, np.inf], [6.0, 6.0, 9.0]]))
    sub = t.rows([1])
    np.testing.assert_array_equal(sub.ids.numpy(), [[5, 7, 6]])
    sub.ids[0, 0] = 99  # a copy, not a view
    assert int(t.ids[1, 0]) == 5
    np.testing.assert_array_equal(t.num_valid().numpy(), [2, 3])


def test_l2_exact_duplicates_tie_break_by_smaller_id():
    """Identical vectors have identical scores; whatever order they are stored in, the
    smallest ids must win (numba scan, l2).  The kernel used to compare an unrounded
    float64 ``s + aux`` against the float32-rounded row entries, so a later duplicate
    with a smaller id could lose to an earlier, larger id."""
    rng = np.random.default_rng(11)
    failures = []
    for trial in range(20):
        v = rng.standard_normal(16).astype(np.float32)
        q = rng.standard_normal(16).astype(np.float32)
        ids = np.arange(30, 0, -1)  # stored in descending id order
        index = IVFIndex(16, 1, metric="l2", block_size=4, scan_backend="numba")
        index.set_centroids(np.zeros((1, 16), np.float32))
        index.add(np.repeat(v[None, :], ids.size, axis=0), ids)
        D, I = index.search(q, 5)
        assert len(set(D[0].tolist())) == 1
        if not np.array_equal(I[0], [1, 2, 3, 4, 5]):
            failures.append((trial, I[0].tolist()))
    assert not failures, f"{len(failures)}/20 trials broke the (score, id) total order: {failures[:3]}"
