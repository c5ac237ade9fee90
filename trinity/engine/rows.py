"""The runner's persistent batch: one row per joined request of one collection.

A request's device state -- its prepared query, query offset, running top-k and (IVF)
its best-first probes -- lives in a row of preallocated arrays that grow by doubling,
the way vLLM's persistent input batch keeps per-request state across steps.  An
iteration scans the rows in place: the CSR of probes it hands the scan kernel simply
names rows of the whole batch (rows without work this iteration have no pairs), so
nothing is gathered into a per-iteration batch or scattered back.
"""

from __future__ import annotations

import numpy as np
import torch

from trinity.engine.slots import Slots
from trinity.index import RunningTopK
from trinity.index.base import BaseIndex
from trinity.index.metric import SCORE_SENTINEL


class RunningRows:
    """Rows of every joined request of one collection (one index object).

    On CPU the arrays are torch tensors sharing memory with numpy views (row writes and
    fancy indexing through numpy cost a fraction of torch's dispatch); on a GPU they are
    device tensors.  Probe lists are scheduling metadata and stay on the host.
    """

    def __init__(self, index: BaseIndex) -> None:
        self.index = index
        self.device = index.device
        self.slots = Slots()
        self.row_of = self.slots.slot_of
        self._alloc(self.slots.num_slots, 1, 1)

    def _alloc(self, num_rows: int, max_k: int, max_probes: int) -> None:
        """(Re)allocate for ``num_rows`` rows, ``max_k`` results and ``max_probes`` probes,
        keeping what the existing rows hold."""
        old = getattr(self, "topk", None)
        dim = self.index.dim
        queries = torch.zeros((num_rows, dim), dtype=torch.float32, device=self.device)
        offsets = torch.zeros(num_rows, dtype=torch.float32, device=self.device)
        topk = RunningTopK.empty(num_rows, max_k, device=self.device)  # free rows: k = max_k, never read
        probes = np.full((num_rows, max_probes), -1, dtype=np.int64)
        num_probes = np.zeros(num_rows, dtype=np.int64)
        if old is not None:
            n, k, p = self.num_rows, old.max_k, self.probes.shape[1]
            queries[:n] = self.queries
            offsets[:n] = self.offsets
            topk.scores[:n, :k] = old.scores
            topk.ids[:n, :k] = old.ids
            topk.k[:n] = old.k
            probes[:n, :p] = self.probes
            num_probes[:n] = self.num_probes
        self.queries, self.offsets, self.topk = queries, offsets, topk
        self.probes, self.num_probes = probes, num_probes
        cpu = self.device.type == "cpu"
        # numpy views of the CPU tensors: row writes without torch's dispatch.
        self._q = queries.numpy() if cpu else queries
        self._off = offsets.numpy() if cpu else offsets
        self._s, self._i, self._k = (topk.scores.numpy(), topk.ids.numpy(), topk.k.numpy()) if cpu else (
            topk.scores, topk.ids, topk.k)

    @property
    def num_rows(self) -> int:
        return self.queries.shape[0]

    def __len__(self) -> int:
        return len(self.slots)

    # ------------------------------------------------------------------ membership
    def add(self, rids: list[str], queries: torch.Tensor, offsets: torch.Tensor, ks: np.ndarray,
            probes: np.ndarray | None) -> np.ndarray:
        """Give each of ``rids`` a row: prepared queries, offsets, ``k``, probes (``-1`` padded)."""
        width = 1 if probes is None else max(probes.shape[1], 1)
        max_k = int(ks.max())
        num_rows = self.slots.needed(len(rids))
        if num_rows > self.num_rows or max_k > self.topk.max_k or width > self.probes.shape[1]:
            self._alloc(num_rows, max(max_k, self.topk.max_k), max(width, self.probes.shape[1]))
        rows = self.slots.acquire(rids)
        cpu = self.device.type == "cpu"
        idx = rows if cpu else torch.from_numpy(rows).to(self.device)
        self._q[idx] = queries.numpy() if cpu else queries
        self._off[idx] = offsets.numpy() if cpu else offsets
        self._s[idx] = SCORE_SENTINEL
        self._i[idx] = -1
        self._k[idx] = ks if cpu else torch.from_numpy(ks.astype(np.int32)).to(self.device)
        self.probes[rows] = -1
        if probes is not None:
            self.probes[rows, :probes.shape[1]] = probes
            self.num_probes[rows] = (probes >= 0).sum(axis=1)
        else:
            self.num_probes[rows] = 0
        return rows

    def remove(self, rids) -> None:
        """Free the rows of ``rids`` (unknown ids are ignored)."""
        self.slots.release(rids)

    # ------------------------------------------------------------------ results
    def take_results(self, rids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{id: (scores, ids)}`` in user units for ``rids``; frees their rows."""
        rows = np.array([self.row_of[r] for r in rids], dtype=np.int64)
        if self.device.type == "cpu":  # numpy fancy indexing, wrapped (cheaper than torch's)
            sub = RunningTopK(torch.from_numpy(self._s[rows]), torch.from_numpy(self._i[rows]),
                              torch.from_numpy(self._k[rows]))
            offsets = torch.from_numpy(self._off[rows])
        else:
            sub = self.topk.rows(rows)
            offsets = self.offsets[torch.from_numpy(rows).to(self.device)]
        d, i = sub.to_results(self.index.metric, offsets)
        ks = sub.k.cpu().numpy()
        self.remove(rids)
        return {rid: (d[n, :ks[n]], i[n, :ks[n]]) for n, rid in enumerate(rids)}

    # ------------------------------------------------------------------ flat chunks
    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, RunningTopK]:
        """A copy of ``rows`` (queries, running top-k), for kernels that take a dense batch."""
        return self.queries[torch.from_numpy(rows).to(self.device)], self.topk.rows(rows)

    def scatter(self, rows: np.ndarray, topk: RunningTopK) -> None:
        """Write a gathered batch's running top-k back into ``rows``."""
        sel = torch.from_numpy(rows).to(self.device)
        self.topk.scores[sel] = topk.scores
        self.topk.ids[sel] = topk.ids
