"""The scan primitive: score a CSR set of (query, list[, block range]) pairs against
blocked inverted lists and merge the results into each query's running top-k.

Scanning IVF lists is memory bound, so the CPU kernel works **list-major**: pairs are
grouped by list, and each block of a probed list is read once for every query that
probes it in this call.  Each pair first keeps a private top-k (so threads never share
a row), then a second pass merges pair results into the running rows with the total
order of :mod:`trinity.index.topk` -- which makes any chunking of the pairs return
exactly what one full scan returns.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch

from trinity.index.blocks import BlockedLists
from trinity.index.kernels import triton_available
from trinity.index.metric import SCORE_SENTINEL
from trinity.index.probes import ProbeChunk
from trinity.index.topk import RunningTopK, insert, insert_new, merge_dense_torch


def scan(lists: BlockedLists, queries: torch.Tensor, chunk: ProbeChunk, topk: RunningTopK,
         backend: str = "auto") -> None:
    """Scan ``chunk`` for prepared ``queries`` and merge into ``topk`` in place.

    ``queries`` are already in the internal scoring space (``Metric.prepare_queries``);
    row ``i`` of ``queries`` and of ``topk`` belongs to the pairs of CSR row ``i``.
    ``backend`` is ``"numba"`` (CPU, list-major), ``"torch"`` (any device), ``"triton"``
    (fused in-place kernels, :mod:`trinity.index.kernels`; CUDA, or CPU tensors under
    ``TRITON_INTERPRET=1``) or ``"auto"`` (CPU: numba; CUDA: triton if importable, else torch).
    """
    if chunk.num_queries != queries.shape[0] or topk.num_rows != queries.shape[0]:
        raise ValueError("scan: queries, chunk and running top-k must have the same rows")
    if chunk.num_pairs == 0:
        return
    if backend == "auto":
        backend = resolve_backend(lists.device, lists.dtype)
    if backend == "numba":
        _scan_numba(lists, queries, chunk, topk)
    elif backend == "torch":
        _scan_torch(lists, queries, chunk, topk)
    elif backend == "triton":
        from trinity.index.kernels import scan_triton

        scan_triton(lists, queries, chunk, topk)
    else:
        raise ValueError(f"unknown scan backend {backend!r}")


def resolve_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The ``"auto"`` scan backend for storage on ``device`` with ``dtype``.

    On CUDA, ``TRINITY_CUDA_SCAN_BACKEND=torch`` (or ``triton``) overrides the choice.
    """
    if device.type == "cpu":
        return "numba" if dtype == torch.float32 else "torch"
    forced = os.environ.get("TRINITY_CUDA_SCAN_BACKEND", "")
    if forced in ("torch", "triton"):
        return forced
    return "triton" if triton_available() else "torch"


# --------------------------------------------------------------------------- CPU (numba)
def _scan_numba(lists: BlockedLists, queries: torch.Tensor, chunk: ProbeChunk, topk: RunningTopK) -> None:
    pair_q = np.repeat(np.arange(chunk.num_queries), np.diff(chunk.query_ptr))
    b0, b1 = chunk.block_ranges(lists)
    order = np.argsort(chunk.list_ids, kind="stable")
    sorted_lists = chunk.list_ids[order]
    grp_start = np.flatnonzero(np.r_[True, sorted_lists[1:] != sorted_lists[:-1]])  # NOTE: sorted: no np.unique
    grp_lists = sorted_lists[grp_start]
    grp_ptr = np.append(grp_start, order.size).astype(np.int64)
    ks = topk.k.numpy()
    pair_k = ks[pair_q]
    # NOTE: pair buffers as wide as the largest k *scanned*, not the rows' capacity: the
    # engine's persistent batch keeps the widest k it ever held for every row.
    width = int(pair_k.max())
    out_s = np.empty((chunk.num_pairs, width), dtype=np.float32)
    out_i = np.empty((chunk.num_pairs, width), dtype=np.int64)
    aux = lists.aux.numpy() if lists.aux is not None else np.zeros((1, 1), dtype=np.float32)
    # NOTE: a candidate below its query's current k-th best can never enter the result;
    # after the first (best) probes this prunes most inserts of multi-iteration requests.
    top_s, top_i = topk.scores.numpy(), topk.ids.numpy()
    rows = np.arange(chunk.num_queries)
    kth = np.where(top_i[rows, ks - 1] >= 0, top_s[rows, ks - 1], -np.inf).astype(np.float32)
    # NOTE: list sizes and riders are skewed (a group can hold 10x the mean work): the
    # threads take groups one at a time, so neither waits on the other for a big list (or
    # for a core it lost to another thread for a moment).  Groups stay in list order: the
    # lists of a bulk-built index lie in that order in memory, and streaming them in
    # address order was ~15% faster than largest-first.
    with numba.parallel_chunksize(1):
        _scan_pairs(np.ascontiguousarray(queries.numpy()), pair_q, pair_k, kth[pair_q], b0.astype(np.int64),
                    b1.astype(np.int64), order, grp_ptr, grp_lists.astype(np.int64), lists.block_table,
                    lists.list_len, lists.vectors.numpy(), aux, lists.aux is not None,
                    lists.slot_ids.numpy(), out_s, out_i)
    _merge_pairs(top_s, top_i, ks, chunk.query_ptr, out_s, out_i)


@numba.njit(inline="always")
def _offer(row_s, row_i, k, thr, s, vid):
    # NOTE: ``s < thr`` (not <=): an equal score may still win on the smaller id.
    if s >= thr:
        insert_new(row_s, row_i, k, s, vid)


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _scan_pairs(q, pair_q, pair_k, pair_thr, pair_b0, pair_b1, order, grp_ptr, grp_lists, block_table,
                list_len, vecs, aux, use_aux, slot_ids, out_s, out_i):  # pragma: no cover
    bs = vecs.shape[1]
    dim = vecs.shape[2]
    for g in numba.prange(grp_lists.shape[0]):
        lst = grp_lists[g]
        n = list_len[lst]
        lo = n
        hi = 0
        g0 = grp_ptr[g]
        g1 = grp_ptr[g + 1]
        for t in range(g0, g1):
            p = order[t]
            out_s[p, :] = -np.inf
            out_i[p, :] = -1
            lo = min(lo, pair_b0[p])
            hi = max(hi, pair_b1[p])
        elig = np.empty(g1 - g0, dtype=np.int64)
        for b in range(lo, hi):
            ne = 0
            for t in range(g0, g1):
                p = order[t]
                if pair_b0[p] <= b < pair_b1[p]:
                    elig[ne] = p
                    ne += 1
            blk = block_table[lst, b]
            cnt = min(bs, n - b * bs)
            for j in range(cnt):
                vid = slot_ids[blk, j]
                extra = aux[blk, j] if use_aux else np.float32(0.0)
                # NOTE: a register tile of 4 queries per vector load: the vector is read once
                # for 4 dot products (~1.6x the single-query loop).  Each dot keeps the same
                # summation order as the single-query loop below, so results do not depend
                # on how queries are grouped (checked by the chunking property tests).
                t = 0
                while t + 4 <= ne:
                    p0 = elig[t]
                    p1 = elig[t + 1]
                    p2 = elig[t + 2]
                    p3 = elig[t + 3]
                    r0 = pair_q[p0]
                    r1 = pair_q[p1]
                    r2 = pair_q[p2]
                    r3 = pair_q[p3]
                    s0 = np.float32(0.0)
                    s1 = np.float32(0.0)
                    s2 = np.float32(0.0)
                    s3 = np.float32(0.0)
                    for d in range(dim):
                        x = vecs[blk, j, d]
                        s0 += q[r0, d] * x
                        s1 += q[r1, d] * x
                        s2 += q[r2, d] * x
                        s3 += q[r3, d] * x
                    _offer(out_s[p0], out_i[p0], pair_k[p0], pair_thr[p0], np.float32(s0 + extra), vid)
                    _offer(out_s[p1], out_i[p1], pair_k[p1], pair_thr[p1], np.float32(s1 + extra), vid)
                    _offer(out_s[p2], out_i[p2], pair_k[p2], pair_thr[p2], np.float32(s2 + extra), vid)
                    _offer(out_s[p3], out_i[p3], pair_k[p3], pair_thr[p3], np.float32(s3 + extra), vid)
                    t += 4
                while t < ne:
                    p = elig[t]
                    qr = pair_q[p]
                    s = np.float32(0.0)
                    for d in range(dim):
                        s += q[qr, d] * vecs[blk, j, d]
                    _offer(out_s[p], out_i[p], pair_k[p], pair_thr[p], np.float32(s + extra), vid)
                    t += 1


@numba.njit(parallel=True, cache=True)
def _merge_pairs(top_s, top_i, ks, query_ptr, out_s, out_i):  # pragma: no cover
    for r in numba.prange(top_s.shape[0]):
        k = ks[r]
        for p in range(query_ptr[r], query_ptr[r + 1]):
            for j in range(k):
                if out_i[p, j] < 0:
                    break
                insert(top_s[r], top_i[r], k, out_s[p, j], out_i[p, j])


# --------------------------------------------------------------------------- any device (torch)
def _scan_torch(lists: BlockedLists, queries: torch.Tensor, chunk: ProbeChunk, topk: RunningTopK) -> None:
    """Gather probed blocks, score with one batched matmul, merge with ``torch.topk``."""
    dev = lists.device
    bs = lists.block_size
    block_table, list_len = lists.device_tables()
    b0, b1 = (torch.from_numpy(a.astype(np.int64)).to(dev) for a in chunk.block_ranges(lists))
    counts = torch.from_numpy(np.diff(chunk.query_ptr)).to(dev)
    pair_q = torch.repeat_interleave(torch.arange(chunk.num_queries, device=dev), counts)
    pair_l = torch.from_numpy(chunk.list_ids).to(dev)
    nblk = (b1 - b0).clamp_min(0)
    e_pair = torch.repeat_interleave(torch.arange(chunk.num_pairs, device=dev), nblk)
    if e_pair.numel() == 0:
        return
    first = torch.cumsum(nblk, 0) - nblk
    e_col = b0[e_pair] + torch.arange(e_pair.numel(), device=dev) - first[e_pair]
    e_list = pair_l[e_pair]
    e_blk = block_table[e_list, e_col].long()
    e_q = pair_q[e_pair]
    scores = torch.bmm(lists.vectors[e_blk], queries[e_q].to(lists.dtype).unsqueeze(-1)).squeeze(-1).float()
    if lists.aux is not None:
        scores += lists.aux[e_blk]
    pos = e_col[:, None] * bs + torch.arange(bs, device=dev)[None, :]
    valid = pos < list_len[e_list][:, None]
    ids = lists.slot_ids[e_blk].masked_fill(~valid, -1)
    scores = scores.masked_fill(~valid, SCORE_SENTINEL)
    # Entries are query-major, so each query's entries are contiguous: lay them out densely.
    q_entries = torch.bincount(e_q, minlength=chunk.num_queries)
    q_first = torch.cumsum(q_entries, 0) - q_entries
    slot = torch.arange(e_q.numel(), device=dev) - q_first[e_q]
    width = int(q_entries.max()) * bs
    dense_s = torch.full((chunk.num_queries, width), SCORE_SENTINEL, device=dev)
    dense_i = torch.full((chunk.num_queries, width), -1, dtype=torch.int64, device=dev)
    cols = slot[:, None] * bs + torch.arange(bs, device=dev)[None, :]
    dense_s[e_q[:, None].expand_as(cols), cols] = scores
    dense_i[e_q[:, None].expand_as(cols), cols] = ids
    merge_dense_torch(topk, dense_s, dense_i)
