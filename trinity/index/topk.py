"""Running per-query top-k state and its merge kernels.

A :class:`RunningTopK` holds, for each query row, the best ``k`` internal similarities
seen so far (sorted best first) and their ids.  Rows may have different ``k`` (padded to
``max_k``).  Merges use a *total* order -- higher score first, then smaller id -- so the
top-k of a set of candidates is unique and does not depend on the order or the chunking
in which candidates arrive.  That is what lets the engine split a query's scan across
iterations and still return exactly what one full scan returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from trinity.index.metric import SCORE_SENTINEL, Metric


@dataclass
class RunningTopK:
    """Per-query running top-k (internal similarities, higher is better).

    Attributes:
        scores: ``(n, max_k)`` float32, sorted descending; empty slots hold ``-inf``.
        ids: ``(n, max_k)`` int64; empty slots hold ``-1``.
        k: ``(n,)`` int32, the number of results wanted per row (``<= max_k``).
    """

    scores: torch.Tensor
    ids: torch.Tensor
    k: torch.Tensor

    @classmethod
    def empty(cls, n: int, k: int | np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> RunningTopK:
        """Fresh state for ``n`` rows wanting ``k`` results each (an int or a per-row array)."""
        ks = np.full(n, k, dtype=np.int32) if np.ndim(k) == 0 else np.array(k, dtype=np.int32)
        if ks.shape != (n,) or (n and int(ks.min()) < 1):
            raise ValueError(f"k: expected {n} values >= 1, got {ks.tolist()}")
        max_k = int(ks.max()) if n else 1
        # NOTE: built in numpy and wrapped: the engine makes several of these per iteration
        # and torch.full/as_tensor dispatch costs dominate at these sizes.
        scores = torch.from_numpy(np.full((n, max_k), SCORE_SENTINEL, dtype=np.float32))
        ids = torch.from_numpy(np.full((n, max_k), -1, dtype=np.int64))
        ks_t = torch.from_numpy(ks)
        if torch.device(device).type != "cpu":
            scores, ids, ks_t = scores.to(device), ids.to(device), ks_t.to(device)
        return cls(scores=scores, ids=ids, k=ks_t)

    @property
    def num_rows(self) -> int:
        return self.scores.shape[0]

    @property
    def max_k(self) -> int:
        return self.scores.shape[1]

    def rows(self, index: torch.Tensor | np.ndarray | list[int]) -> RunningTopK:
        """A copy of the selected rows (used to gather a batch out of per-request state)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.scores.device)
        return RunningTopK(self.scores[idx], self.ids[idx], self.k[idx])  # NOTE: indexing by a tensor copies

    def num_valid(self) -> torch.Tensor:
        """Number of filled slots per row."""
        return (self.ids >= 0).sum(dim=1)

    def merge_candidates(self, cand_scores: torch.Tensor, cand_ids: torch.Tensor) -> None:
        """Merge dense candidates ``(n, m)`` (internal scores, ids; ``-1`` = none) in place."""
        if cand_scores.shape[0] != self.num_rows or cand_scores.shape != cand_ids.shape:
            raise ValueError("candidate shape does not match the running top-k rows")
        if self.scores.device.type == "cpu":
            merge_dense(self.scores.numpy(), self.ids.numpy(), self.k.numpy(),
                        cand_scores.contiguous().numpy(), cand_ids.contiguous().numpy())
        else:
            merge_dense_torch(self, cand_scores, cand_ids)

    def to_results(self, metric: Metric, query_offset: torch.Tensor,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Final ``(D, I)`` numpy arrays in user units, padded with ``-1`` / the metric sentinel;
        ``rows``: of these rows only (``query_offset`` still has one entry per row)."""
        if self.scores.device.type == "cpu":  # one compiled pass: a handful of small torch ops cost more
            rows = np.arange(self.num_rows) if rows is None else rows
            return _to_results(self.scores.numpy(), self.ids.numpy(), self.k.numpy(), query_offset.numpy(), rows,
                               metric.uses_norms, metric.sentinel)
        if rows is not None:
            sel = torch.from_numpy(rows).to(self.scores.device)
            return self.rows(rows).to_results(metric, query_offset.to(self.scores.device)[sel])
        valid = self.ids >= 0
        cols = torch.arange(self.max_k, device=self.ids.device)
        valid &= cols[None, :] < self.k[:, None].long()
        dist = metric.to_user(self.scores, query_offset.to(self.scores.device), valid)
        ids = self.ids.masked_fill(~valid, -1)
        return dist.cpu().numpy().astype(np.float32, copy=False), ids.cpu().numpy()


@numba.njit(cache=True)
def _to_results(scores, ids, ks, offsets, rows, uses_norms, sentinel):  # pragma: no cover - compiled
    width = scores.shape[1]
    d = np.empty((rows.size, width), np.float32)
    out = np.empty((rows.size, width), np.int64)
    pad = np.float32(sentinel)
    for r in range(rows.size):
        row = rows[r]
        for c in range(width):
            v = ids[row, c]
            if v >= 0 and c < ks[row]:
                out[r, c] = v
                d[r, c] = max(offsets[row] - scores[row, c], np.float32(0.0)) if uses_norms else scores[row, c]
            else:
                out[r, c] = -1
                d[r, c] = pad
    return d, out


def merge_dense_torch(topk: RunningTopK, cand_scores: torch.Tensor, cand_ids: torch.Tensor) -> None:
    """Device-agnostic merge by concatenation + ``torch.topk`` (ties are not ordered by id)."""
    s = torch.cat([topk.scores, cand_scores.float()], dim=1)
    i = torch.cat([topk.ids, cand_ids], dim=1)
    s = s.masked_fill(i < 0, SCORE_SENTINEL)
    best, pos = torch.topk(s, topk.max_k, dim=1)
    ids = torch.gather(i, 1, pos)
    cols = torch.arange(topk.max_k, device=s.device)
    keep = (cols[None, :] < topk.k[:, None].long()) & (best > SCORE_SENTINEL)
    topk.scores.copy_(best.masked_fill(~keep, SCORE_SENTINEL))
    topk.ids.copy_(ids.masked_fill(~keep, -1))


# --------------------------------------------------------------------------- numba kernels
@numba.njit(inline="always")
def better(s1: float, i1: int, s2: float, i2: int) -> bool:
    """Total order on candidates: higher score, then smaller id; empty slots (-1) lose."""
    if i2 < 0:
        return i1 >= 0
    return s1 > s2 or (s1 == s2 and 0 <= i1 < i2)


@numba.njit(inline="always")
def insert_new(row_s, row_i, k: int, s: float, vid: int) -> None:
    """:func:`insert` for an id known not to be in the row (one scan of one list)."""
    if not better(s, vid, row_s[k - 1], row_i[k - 1]):
        return
    j = k - 1
    while j > 0 and better(s, vid, row_s[j - 1], row_i[j - 1]):
        row_s[j] = row_s[j - 1]
        row_i[j] = row_i[j - 1]
        j -= 1
    row_s[j] = s
    row_i[j] = vid


@numba.njit(inline="always")
def insert(row_s, row_i, k: int, s: float, vid: int) -> None:
    """Insert ``(s, vid)`` into a row sorted best-first of length ``k`` if it beats the last slot."""
    if not better(s, vid, row_s[k - 1], row_i[k - 1]):
        return
    # NOTE: an id can reach the same row twice only if the index changed mid-scan (a
    # vector moved by a removal, or upserted); keep the better copy, never a duplicate.
    for t in range(k):
        if row_i[t] == vid:
            if not s > row_s[t]:
                return
            for u in range(t, k - 1):
                row_s[u] = row_s[u + 1]
                row_i[u] = row_i[u + 1]
            row_s[k - 1] = -np.inf
            row_i[k - 1] = -1
            break
    insert_new(row_s, row_i, k, s, vid)


@numba.njit(parallel=True, cache=True, nogil=True)
def merge_dense(top_s, top_i, ks, cand_s, cand_i):  # pragma: no cover - compiled
    """Merge candidate rows into the running rows (parallel over rows)."""
    for r in numba.prange(top_s.shape[0]):
        k = ks[r]
        for j in range(cand_s.shape[1]):
            if cand_i[r, j] >= 0:
                insert(top_s[r], top_i[r], k, cand_s[r, j], cand_i[r, j])


@numba.njit(parallel=True, cache=True, nogil=True)
def merge_dense_shared_ids(top_s, top_i, ks, cand_s, cand_i):  # pragma: no cover - compiled
    """Like :func:`merge_dense` but every row shares one 1-D id array (a flat chunk)."""
    for r in numba.prange(top_s.shape[0]):
        k = ks[r]
        row_s = top_s[r]
        row_i = top_i[r]
        for j in range(cand_s.shape[1]):
            insert(row_s, row_i, k, cand_s[r, j], cand_i[j])
