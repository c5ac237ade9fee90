"""Host side of the Triton scan: reusable per-(device, stream) buffers (a ring of pinned
staging buffers, the device metadata buffer, the candidate scratch), :func:`launch` of
the two kernels of :mod:`trinity.index.kernels.triton_kernels` for an uploaded
:class:`~trinity.index.kernels.plan.ScanPlan`, and the entry points :func:`scan` /
:func:`flat_scan` that plan, upload and launch.  Imports triton (through the kernels),
so it is only imported lazily.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from trinity.index.kernels.plan import ScanPlan, TritonScanConfig, plan_scan
from trinity.index.kernels.triton_kernels import (
    _interpreting,
    _merge_kernel,
    _scan_kernel,
)


class _Workspace:
    """Reusable per-(device, stream) buffers, grown geometrically: metadata staging (a ring
    of pinned host buffers on CUDA), the device metadata buffer and the candidate scratch."""

    RING = 2

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.host_t: list[torch.Tensor | None] = [None] * self.RING
        self.events: list[torch.cuda.Event | None] = [None] * self.RING
        self.turn = 0
        self.meta = torch.empty(0, dtype=torch.int64, device=device)
        self.ck = torch.empty(0, dtype=torch.int32, device=device)
        self.ci = torch.empty(0, dtype=torch.int64, device=device)

    def upload(self, plan: ScanPlan) -> torch.Tensor:
        """The packed plan on the device (one async copy from pinned memory on CUDA)."""
        if not self.cuda:
            return torch.from_numpy(plan.pack())
        total = plan.packed_size
        j = self.turn
        self.turn = (j + 1) % self.RING
        if self.events[j] is not None:
            # NOTE: waits for the copy out of this slot, issued RING calls ago (normally long
            # done) -- not for the kernels; the only full sync stays the caller's.
            self.events[j].synchronize()
        if self.host_t[j] is None or self.host_t[j].numel() < total:
            size = max(total, 2 * (0 if self.host_t[j] is None else self.host_t[j].numel()))
            self.host_t[j] = torch.empty(size, dtype=torch.int64, pin_memory=True)
        plan.pack(self.host_t[j].numpy())
        if self.meta.numel() < total:
            self.meta = torch.empty(max(total, 2 * self.meta.numel()), dtype=torch.int64, device=self.device)
        self.meta[:total].copy_(self.host_t[j][:total], non_blocking=True)
        ev = self.events[j] or torch.cuda.Event()
        ev.record()
        self.events[j] = ev
        return self.meta

    def scratch(self, total: int) -> tuple[torch.Tensor, torch.Tensor]:
        total = max(total, 1)
        if self.ck.numel() < total:
            grow = max(total, int(1.5 * self.ck.numel()))
            self.ck = torch.empty(grow, dtype=torch.int32, device=self.device)
            self.ci = torch.empty(grow, dtype=torch.int64, device=self.device)
        return self.ck, self.ci


_local = threading.local()


def _workspace(device: torch.device) -> _Workspace:
    cache = getattr(_local, "ws", None)
    if cache is None:
        cache = _local.ws = {}
    key = (device.type, device.index, torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    ws = cache.get(key)
    if ws is None:
        ws = cache[key] = _Workspace(device)
    return ws


#: The compiled kernels of the last launch (registers, spills: see benchmarks/gpu_kernels.py).
LAST_COMPILED: dict = {}


def _log2(n: int) -> int:
    return int(n).bit_length() - 1


def _block_d(config: TritonScanConfig, dim: int) -> int:
    return config.block_d or max(16, min(64, 1 << (max(1, dim) - 1).bit_length()))


def launch(lists, q: torch.Tensor, plan: ScanPlan, topk, config: TritonScanConfig, meta: torch.Tensor,
           ck: torch.Tensor, ci: torch.Tensor, grid_items: int | None = None, grid_rows: int | None = None) -> None:
    """Launch the two kernels for an uploaded plan; ``q`` in the storage dtype, contiguous.

    Only ``plan``'s shape parameters (qm, tile_n, kp, seg_blocks) are baked into the launch
    (all but seg_blocks are compile-time constants);
    its arrays are read from ``meta``.  Grids may be padded past the plan's item and row
    counts (programs past them exit): a capture with capacity grids replays any plan of
    the same shape parameters.
    """
    bt, llen = lists.device_tables()
    aux = lists.aux if lists.aux is not None else lists.vectors
    n_items = plan.num_items if grid_items is None else grid_items
    n_rows = plan.num_rows if grid_rows is None else grid_rows
    if n_items == 0 or n_rows == 0:
        return
    LAST_COMPILED["scan"] = _scan_kernel[(n_items,)](
        q, q.stride(0), lists.vectors, aux, lists.slot_ids, bt, bt.stride(0), llen, meta,
        topk.scores, topk.ids, topk.k, topk.scores.stride(0), ck, ci, plan.seg_blocks,
        D=lists.dim, BS=lists.block_size, QM=plan.qm, TN=plan.tile_n,
        BD=_block_d(config, lists.dim), KP=plan.kp, LOG_QM=_log2(plan.qm), LOG_TN=_log2(plan.tile_n),
        LOG_KP=_log2(plan.kp), FAST_M=config.fast_m, HAS_AUX=lists.aux is not None,
        IEEE=lists.dtype == torch.float32, UPCAST=_interpreting() and lists.dtype == torch.bfloat16,
        USE_THRESH=config.use_threshold,
        num_warps=config.num_warps or (4 if plan.qm * plan.tile_n <= 2048 else 8), num_stages=config.num_stages,
    )
    LAST_COMPILED["merge"] = _merge_kernel[(n_rows,)](
        topk.scores, topk.ids, topk.k, topk.scores.stride(0), topk.max_k, meta, ck, ci,
        KP=plan.kp, LOG_KP=_log2(plan.kp), num_warps=config.merge_num_warps,
    )


def _check(lists, queries: torch.Tensor, topk) -> None:
    if queries.device != lists.device or topk.scores.device != lists.device:
        raise ValueError("triton scan: queries, lists and running top-k must be on the same device")
    if queries.ndim != 2 or queries.shape[1] != lists.dim:
        raise ValueError(f"triton scan: expected queries of shape (n, {lists.dim}), got {tuple(queries.shape)}")
    if not (topk.scores.is_contiguous() and topk.ids.is_contiguous() and topk.k.is_contiguous()):
        raise ValueError("triton scan: the running top-k tensors must be contiguous")
    if topk.k.dtype != torch.int32 or topk.ids.dtype != torch.int64 or topk.scores.dtype != torch.float32:
        raise ValueError("triton scan: running top-k must be float32 scores, int64 ids, int32 k")


def run_plan(lists, queries: torch.Tensor, plan: ScanPlan, topk, config: TritonScanConfig) -> None:
    if plan.num_items == 0:
        return
    ws = _workspace(lists.device)
    meta = ws.upload(plan)
    ck, ci = ws.scratch(plan.total_cand)
    launch(lists, queries.to(lists.dtype).contiguous(), plan, topk, config, meta, ck, ci)


def _flat_pairs(lists, nq: int, block_start: int, block_end: int):
    nb = int(lists.num_list_blocks(np.zeros(1, dtype=np.int64))[0])
    b0 = np.full(nq, min(max(block_start, 0), nb), dtype=np.int64)
    b1 = np.full(nq, min(max(block_end, 0), nb), dtype=np.int64)
    return np.arange(nq + 1, dtype=np.int64), np.zeros(nq, dtype=np.int64), b0, b1


def scan(lists, queries: torch.Tensor, chunk, topk, config: TritonScanConfig | None = None) -> None:
    """See :func:`trinity.index.kernels.scan_triton`."""
    config = config or TritonScanConfig()
    if chunk.num_pairs == 0 or lists.num_blocks == 0:
        return
    _check(lists, queries, topk)
    b0, b1 = chunk.block_ranges(lists)
    plan = plan_scan(lists.list_len, lists.block_size, chunk.query_ptr, chunk.list_ids, b0, b1, topk.max_k, config)
    run_plan(lists, queries, plan, topk, config)


def flat_scan(lists, queries: torch.Tensor, block_start: int, block_end: int, topk,
              config: TritonScanConfig | None = None) -> None:
    """See :func:`trinity.index.kernels.flat_scan_triton`."""
    nq = queries.shape[0]
    if nq == 0 or lists.num_blocks == 0:
        return
    config = config or TritonScanConfig()
    _check(lists, queries, topk)
    plan = plan_scan(lists.list_len, lists.block_size, *_flat_pairs(lists, nq, block_start, block_end), topk.max_k,
                     config)
    run_plan(lists, queries, plan, topk, config)
