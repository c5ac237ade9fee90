"""GPU kernels for the scan primitives (Triton), importable without triton or a GPU.

* :func:`scan_triton` -- IVF scan that reads the blocked lists **in place** through the
  block table (no gather copy), scores with fp32 accumulation and merges straight into
  each query's :class:`~trinity.index.topk.RunningTopK`, for a CSR
  :class:`~trinity.index.probes.ProbeChunk` of mixed ``k``.
* :func:`flat_scan_triton` -- the flat (brute-force) chunk scan, the same kernel with one
  list and all queries of the call sharing each tile of vectors (a GEMM tile), fused
  k-selection (no score matrix in HBM).
* :func:`scan_reference` -- a pure-torch reference with the same total order (score,
  then smaller id) that the tests compare the kernels against.

Triton is imported lazily, on the first kernel call: this package imports on a machine
without triton, and :func:`triton_available` says whether the kernels can run.  Set
``TRITON_INTERPRET=1`` *before* the first kernel call to run them on CPU tensors under
the Triton interpreter (that is what the tests do).  ``python -m
trinity.index.kernels.compile_check`` compiles the kernels for a CUDA architecture
without a GPU (the real compiler, which the interpreter skips).  See ``docs/gpu.md``.
"""

from __future__ import annotations

import functools

from trinity.index.kernels.plan import ScanPlan, TritonScanConfig, plan_scan
from trinity.index.kernels.reference import scan_reference


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether ``import triton`` works (it does not say whether a GPU is present)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def scan_triton(lists, queries, chunk, topk, config: TritonScanConfig | None = None) -> None:
    """Triton IVF scan: ``chunk`` of ``lists`` for prepared ``queries``, merged into ``topk``.

    Same contract as :func:`trinity.index.scan.scan`.
    """
    from trinity.index.kernels import triton_scan

    triton_scan.scan(lists, queries, chunk, topk, config)


def flat_scan_triton(lists, queries, block_start: int, block_end: int, topk,
                     config: TritonScanConfig | None = None) -> None:
    """Triton flat scan of blocks ``[block_start, block_end)`` of list 0 for every query row."""
    from trinity.index.kernels import triton_scan

    triton_scan.flat_scan(lists, queries, block_start, block_end, topk, config)


__all__ = ["ScanPlan", "TritonScanConfig", "flat_scan_triton", "plan_scan", "scan_reference",
           "scan_triton", "triton_available"]
