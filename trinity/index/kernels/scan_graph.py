"""CUDA-graph replay of the Triton scan: :class:`ScanGraph` captures the two kernel
launches of :func:`trinity.index.kernels.triton_launch.launch` with capacity grids over
static buffers it owns (queries, running top-k, metadata, candidate scratch) and replays
them for any chunk that fits, re-capturing when the lists change storage.  On CPU tensors
(the interpreter tests) the same capacity-grid launch runs eagerly.  Imports triton
(through the launcher), so it is only imported lazily.
"""

from __future__ import annotations

import numpy as np
import torch

from trinity.index.kernels.plan import (
    META_FIELDS,
    ScanPlan,
    TritonScanConfig,
    plan_scan,
)
from trinity.index.kernels.triton_launch import launch


class ScanGraph:
    """A scan captured in a CUDA graph, replayed for any chunk that fits its capacity.

    The graph holds the two kernel launches with capacity grids; their arguments are
    static buffers owned here: ``queries`` (``max_rows x dim``, storage dtype), the running
    top-k ``topk`` (``max_rows x max_k``), the metadata buffer and the candidate scratch.
    A call packs the plan into pinned memory, issues one async copy, and replays: one
    launch instead of two, and no per-launch Python argument handling.  A caller that keeps
    its batch's queries and running rows in :attr:`queries` / :attr:`topk` copies nothing
    else; :meth:`run` with other tensors copies them in and the rows back out.

    Shape parameters (``qm``, ``tile_n``, ``seg_tiles``; ``kp`` from ``max_k``) are fixed at
    capture.  The graph is re-captured when the lists change storage (pool growth or a
    new block table), which the engine's writes do; reads between writes replay.

    On CPU tensors (tests, under the interpreter) the "graph" is the same capacity-grid
    launch run eagerly: everything but the capture itself is exercised.
    """

    def __init__(self, lists, *, max_rows: int, max_k: int, max_pairs: int, max_items: int,
                 max_cand: int | None = None, config: TritonScanConfig | None = None) -> None:
        from trinity.index.topk import RunningTopK

        cfg = config or TritonScanConfig()
        if cfg.qm is None or cfg.seg_tiles is None:
            raise ValueError("ScanGraph: fix config.qm and config.seg_tiles (shape parameters of the graph)")
        self.cuda = lists.device.type == "cuda"
        self.lists, self.config = lists, cfg
        self.max_rows, self.max_pairs, self.max_items = max_rows, max_pairs, max_items
        self.queries = torch.zeros((max_rows, lists.dim), dtype=lists.dtype, device=lists.device)
        self.topk = RunningTopK.empty(max_rows, max_k, device=lists.device)
        probe = plan_scan(np.zeros(1, dtype=np.int64), lists.block_size, np.zeros(1, dtype=np.int64),
                          np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                          max_k, cfg)
        self.kp, self.tile_n, self.seg_blocks = probe.kp, probe.tile_n, probe.seg_blocks
        self.max_cand = max_cand or max_items * cfg.qm * self.kp
        cap = 16 + 2 + 2 * max_items + 5 * max_pairs + 6 * max_pairs + (max_rows + 1) + max_rows
        self.host = torch.zeros(cap, dtype=torch.int64, pin_memory=self.cuda)
        self.meta = torch.zeros(cap, dtype=torch.int64, device=lists.device)
        self.ck = torch.empty(self.max_cand, dtype=torch.int32, device=lists.device)
        self.ci = torch.empty(self.max_cand, dtype=torch.int64, device=lists.device)
        self.copied = torch.cuda.Event() if self.cuda else None
        self.graph = None  # torch.cuda.CUDAGraph, or on CPU a callable
        self._key = None

    def _storage_key(self):
        bt, llen = self.lists.device_tables()
        aux = self.lists.aux
        return (self.lists.vectors.data_ptr(), self.lists.slot_ids.data_ptr(), 0 if aux is None else aux.data_ptr(),
                bt.data_ptr(), llen.data_ptr())

    def _capture(self) -> None:
        shape = ScanPlan(qm=self.config.qm, tile_n=self.tile_n, kp=self.kp, seg_blocks=self.seg_blocks,
                         num_items=self.max_items, num_rows=self.max_rows, total_cand=self.max_cand)
        # an empty plan in the metadata: the warm-up launches (which compile) do nothing
        self.meta[: len(META_FIELDS)] = len(META_FIELDS)
        self.meta[len(META_FIELDS):len(META_FIELDS) + 2] = 0
        args = (self.lists, self.queries, shape, self.topk, self.config, self.meta, self.ck, self.ci)
        self._key = self._storage_key()
        if not self.cuda:
            self.graph = lambda: launch(*args)
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            launch(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            launch(*args)
        self.graph = graph

    def plan(self, chunk) -> ScanPlan:
        b0, b1 = chunk.block_ranges(self.lists)
        plan = plan_scan(self.lists.list_len, self.lists.block_size, chunk.query_ptr, chunk.list_ids, b0, b1,
                         self.topk.max_k, self.config)
        if (plan.num_items > self.max_items or plan.num_rows > self.max_rows or chunk.num_pairs > self.max_pairs
                or plan.total_cand > self.max_cand or plan.packed_size > self.host.numel()):
            raise ValueError("ScanGraph: chunk exceeds the graph's capacity")
        return plan

    def replay(self, plan: ScanPlan) -> None:
        """Scan ``plan`` over :attr:`queries` / :attr:`topk` (rows ``:plan.num_rows``)."""
        if self.graph is None or self._key != self._storage_key():
            self._capture()
        total = plan.packed_size
        if not self.cuda:
            plan.pack(self.meta.numpy())
            self.graph()
            return
        self.copied.synchronize()  # the previous replay's metadata copy is done with the host buffer
        plan.pack(self.host.numpy())
        self.meta[:total].copy_(self.host[:total], non_blocking=True)
        self.copied.record()
        self.graph.replay()

    def run(self, queries: torch.Tensor, chunk, topk) -> None:
        """Same contract as :func:`scan`, through the graph (copies rows in and out)."""
        n = queries.shape[0]
        plan = self.plan(chunk)
        if topk.max_k > self.topk.max_k:
            raise ValueError("ScanGraph: running top-k wider than max_k")
        self.queries[:n].copy_(queries)
        self.topk.scores[:n, : topk.max_k].copy_(topk.scores)
        self.topk.scores[:n, topk.max_k:] = float("-inf")
        self.topk.ids[:n, : topk.max_k].copy_(topk.ids)
        self.topk.ids[:n, topk.max_k:] = -1
        self.topk.k[:n].copy_(topk.k)
        self.replay(plan)
        topk.scores.copy_(self.topk.scores[:n, : topk.max_k])
        topk.ids.copy_(self.topk.ids[:n, : topk.max_k])
