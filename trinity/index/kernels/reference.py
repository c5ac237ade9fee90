"""Pure-torch reference of the Triton scan (slow, any device; for tests).

It scores every candidate of every pair with the query cast to the storage dtype and
fp32 accumulation -- what the kernel computes -- and keeps each row's best ``k`` under
the total order of :mod:`trinity.index.topk` (higher score, then smaller id).
"""

from __future__ import annotations

import numpy as np
import torch

from trinity.index.metric import SCORE_SENTINEL
from trinity.index.probes import ProbeChunk


def total_order_topk(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of 1-D ``(scores, ids)`` by (score desc, id asc); ids ``< 0`` are dropped."""
    keep = ids >= 0
    scores, ids = scores[keep], ids[keep]
    o1 = torch.argsort(ids, stable=True)
    o2 = torch.argsort(-scores[o1], stable=True)
    order = o1[o2][:k]
    return scores[order], ids[order]


def scan_reference(lists, queries: torch.Tensor, chunk, topk) -> None:
    """Reference for :func:`trinity.index.kernels.scan_triton` (same contract)."""
    bs = lists.block_size
    b0, b1 = chunk.block_ranges(lists)
    vecs = lists.vectors.reshape(-1, lists.dim)
    sid = lists.slot_ids.reshape(-1)
    aux = None if lists.aux is None else lists.aux.reshape(-1)
    q = queries.to(lists.dtype).float()
    for r in range(chunk.num_queries):
        lo, hi = int(chunk.query_ptr[r]), int(chunk.query_ptr[r + 1])
        if lo == hi:
            continue
        s_parts = [topk.scores[r]]
        i_parts = [topk.ids[r]]
        for p in range(lo, hi):
            lst = int(chunk.list_ids[p])
            start = int(b0[p]) * bs
            end = min(int(b1[p]) * bs, int(lists.list_len[lst]))
            if end <= start:
                continue
            pos = np.arange(start, end)
            slots = lists.block_table[lst, pos // bs].astype(np.int64) * bs + pos % bs
            idx = torch.from_numpy(slots).to(vecs.device)
            s = vecs[idx].float() @ q[r]
            if aux is not None:
                s = s + aux[idx]
            s_parts.append(s)
            i_parts.append(sid[idx])
        k = int(topk.k[r])
        best_s, best_i = total_order_topk(torch.cat(s_parts), torch.cat(i_parts), k)
        topk.scores[r] = SCORE_SENTINEL
        topk.ids[r] = -1
        topk.scores[r, : best_s.numel()] = best_s
        topk.ids[r, : best_i.numel()] = best_i


def flat_reference(lists, queries: torch.Tensor, block_start: int, block_end: int, topk) -> None:
    """Reference for :func:`trinity.index.kernels.flat_scan_triton`."""
    nq = queries.shape[0]
    chunk = ProbeChunk(np.arange(nq + 1, dtype=np.int64), np.zeros(nq, dtype=np.int64),
                       np.full(nq, block_start, dtype=np.int64), np.full(nq, block_end, dtype=np.int64))
    scan_reference(lists, queries, chunk, topk)
