"""The runner's persistent batch: one row per slot of one collection.

A request's device state -- its prepared query, query offset and running top-k -- lives
in the row of its scheduler slot, in preallocated arrays that grow by doubling (vLLM's
persistent input batch).  An iteration scans rows in place: the CSR of units it hands
the scan kernel names rows of the whole batch, so nothing is gathered or scattered back.
"""

from __future__ import annotations

import numpy as np
import torch

from trinity.index import RunningTopK
from trinity.index.base import BaseIndex
from trinity.index.metric import SCORE_SENTINEL


class RunningRows:
    """Rows of the requests of one collection (one index object).

    On CPU the arrays are torch tensors sharing memory with numpy views (row writes and fancy
    indexing through numpy cost a fraction of torch's dispatch); on a GPU, device tensors.
    """

    def __init__(self, index: BaseIndex) -> None:
        self.index = index
        self.device = index.device
        self._alloc(64, 1)

    def _alloc(self, num_rows: int, max_k: int) -> None:
        """(Re)allocate for ``num_rows`` rows and ``max_k`` results, keeping existing rows."""
        old = getattr(self, "topk", None)
        queries = torch.zeros((num_rows, self.index.dim), dtype=torch.float32, device=self.device)
        offsets = torch.zeros(num_rows, dtype=torch.float32, device=self.device)
        topk = RunningTopK.empty(num_rows, max_k, device=self.device)  # free rows: k = max_k, never read
        if old is not None:
            n, k = self.num_rows, old.max_k
            queries[:n], offsets[:n] = self.queries, self.offsets
            topk.scores[:n, :k], topk.ids[:n, :k], topk.k[:n] = old.scores, old.ids, old.k
        self.queries, self.offsets, self.topk = queries, offsets, topk
        cpu = self.device.type == "cpu"
        self._q, self._off = (queries.numpy(), offsets.numpy()) if cpu else (queries, offsets)
        self._s, self._i, self._k = (topk.scores.numpy(), topk.ids.numpy(), topk.k.numpy()) if cpu else (
            topk.scores, topk.ids, topk.k)

    @property
    def num_rows(self) -> int:
        return self.queries.shape[0]

    def add(self, slots: np.ndarray, queries: torch.Tensor, offsets: torch.Tensor, ks: np.ndarray) -> None:
        """Fill rows ``slots``: prepared queries, offsets, ``k``, an empty running top-k."""
        num_rows, max_k = self.num_rows, max(int(ks.max()), self.topk.max_k)
        while num_rows <= int(slots.max()):
            num_rows *= 2
        if num_rows > self.num_rows or max_k > self.topk.max_k:
            self._alloc(num_rows, max_k)
        cpu = self.device.type == "cpu"
        idx = slots if cpu else torch.from_numpy(slots).to(self.device)
        self._q[idx] = queries.numpy() if cpu else queries
        self._off[idx] = offsets.numpy() if cpu else offsets
        self._s[idx] = SCORE_SENTINEL
        self._i[idx] = -1
        self._k[idx] = ks if cpu else torch.from_numpy(ks.astype(np.int32)).to(self.device)

    def results(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, ids, k)`` of rows ``slots`` in user units (row ``n``'s answer: its first ``k[n]``)."""
        d, i = self.topk.to_results(self.index.metric, self.offsets, rows=slots)
        return d, i, self._k[slots] if self.device.type == "cpu" else self.topk.k[torch.from_numpy(slots).to(
            self.device)].cpu().numpy()

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, RunningTopK]:
        """A copy of ``rows`` (queries, running top-k), for kernels that take a dense batch."""
        return self.queries[torch.from_numpy(rows).to(self.device)], self.topk.rows(rows)

    def scatter(self, rows: np.ndarray, topk: RunningTopK) -> None:
        """Write a gathered batch's running top-k back into ``rows``."""
        sel = torch.from_numpy(rows).to(self.device)
        self.topk.scores[sel] = topk.scores
        self.topk.ids[sel] = topk.ids
