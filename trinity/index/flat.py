"""Exact (brute-force) index.

Vectors live in one blocked list; a search walks it in fixed-size chunks of blocks,
scoring each chunk with one GEMM and merging into a running top-k, so no buffer grows
with the index size.  The same chunk scan is what the engine's circular flat scan runs.
"""

from __future__ import annotations

import numpy as np
import torch

from trinity.index.base import BaseIndex
from trinity.index.inputs import ArrayLike
from trinity.index.metric import Metric
from trinity.index.scan import resolve_backend
from trinity.index.topk import RunningTopK, merge_dense_shared_ids

DEFAULT_FLAT_BLOCK_SIZE = 256
DEFAULT_CHUNK_BLOCKS = 64  # 16k vectors per chunk


class FlatIndex(BaseIndex):
    """Exact search with a FAISS-style API: ``add``, ``search(q, k) -> (D, I)``, ``remove``."""

    kind = "flat"

    def __init__(self, dim: int, metric: str | Metric = "ip", device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None, block_size: int = DEFAULT_FLAT_BLOCK_SIZE,
                 chunk_blocks: int = DEFAULT_CHUNK_BLOCKS, scan_backend: str = "auto") -> None:
        if scan_backend not in ("auto", "numba", "torch", "triton"):
            raise ValueError(f"unknown scan backend {scan_backend!r}")
        if isinstance(chunk_blocks, bool) or not isinstance(chunk_blocks, (int, np.integer)) or chunk_blocks < 1:
            raise ValueError(f"chunk_blocks: must be a positive int, got {chunk_blocks!r}")
        super().__init__(dim, 1, block_size, metric, device, dtype)
        self.chunk_blocks = int(chunk_blocks)
        # "auto": GEMM + merge (CPU: numba merge); on CUDA the fused Triton kernel when
        # triton is importable.  "triton" forces the kernel (CPU under TRITON_INTERPRET=1).
        self.scan_backend = scan_backend

    def _assign_lists(self, vecs: torch.Tensor) -> np.ndarray:
        return np.zeros(vecs.shape[0], dtype=np.int64)

    @property
    def num_chunks(self) -> int:
        """Chunks a full scan visits (the unit of the engine's circular flat scan)."""
        nb = int(self.lists.num_list_blocks()[0])
        return (nb + self.chunk_blocks - 1) // self.chunk_blocks

    def search(self, q: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k``: ``(D, I)`` of shape ``(n, k)``, best first, ``I = -1`` padding."""
        queries, offset, k = self._prepare_search(q, k)
        topk = RunningTopK.empty(queries.shape[0], k, device=self.device)
        for c in range(self.num_chunks):
            self.scan_chunk(queries, c, topk)
        return topk.to_results(self.metric, offset)

    def chunk_num_vectors(self, chunk: int) -> int:
        """Vectors in chunk ``chunk`` (the last one may be short)."""
        start = chunk * self.chunk_blocks * self.lists.block_size
        return max(0, min(int(self.lists.list_len[0]) - start, self.chunk_blocks * self.lists.block_size))

    def scan_chunk(self, queries: torch.Tensor, chunk: int, topk: RunningTopK) -> None:
        """Score prepared ``queries`` against chunk ``chunk`` and merge into ``topk``."""
        lists = self.lists
        cnt = self.chunk_num_vectors(chunk)
        if cnt <= 0:
            return
        b0 = chunk * self.chunk_blocks
        nblk = (cnt + lists.block_size - 1) // lists.block_size
        backend = resolve_backend(self.device, self.dtype) if self.scan_backend == "auto" else self.scan_backend
        if backend == "triton":
            from trinity.index.kernels import flat_scan_triton

            flat_scan_triton(lists, queries, b0, b0 + nblk, topk)
            return
        blocks = lists.block_table[0, b0:b0 + nblk]
        if np.all(np.diff(blocks) == 1):  # the usual case: a view, no copy
            sl = slice(int(blocks[0]), int(blocks[0]) + nblk)
            x, ids, aux = lists.vectors[sl], lists.slot_ids[sl], None if lists.aux is None else lists.aux[sl]
        else:
            idx = torch.from_numpy(blocks.astype(np.int64)).to(self.device)
            x, ids = lists.vectors[idx], lists.slot_ids[idx]
            aux = None if lists.aux is None else lists.aux[idx]
        x = x.reshape(-1, self.dim)[:cnt]
        ids = ids.reshape(-1)[:cnt]
        scores = torch.mm(queries.to(self.dtype), x.t()).float()
        if aux is not None:
            scores += aux.reshape(-1)[:cnt]
        if self.device.type == "cpu":
            merge_dense_shared_ids(topk.scores.numpy(), topk.ids.numpy(), topk.k.numpy(),
                                   scores.numpy(), ids.numpy())
        else:
            topk.merge_candidates(scores, ids.expand(scores.shape[0], -1))

    def config(self) -> dict:
        return {**super().config(), "chunk_blocks": self.chunk_blocks}
