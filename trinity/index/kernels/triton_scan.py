"""Triton scan, the module :mod:`trinity.index.kernels` imports lazily (needs triton): it
gathers the kernels (:mod:`~trinity.index.kernels.triton_kernels`), the host launcher and
buffers (:mod:`~trinity.index.kernels.triton_launch`) and the CUDA-graph replay
(:mod:`~trinity.index.kernels.scan_graph`) under the names callers, tests and benchmarks
import from here.
"""

# The private names are re-exported for compile_check and the kernel tests.
# ruff: noqa: F401
from __future__ import annotations

from trinity.index.kernels.scan_graph import ScanGraph
from trinity.index.kernels.triton_kernels import (
    _interpreting,
    _merge_kernel,
    _scan_kernel,
)
from trinity.index.kernels.triton_launch import (
    LAST_COMPILED,
    _check,
    _flat_pairs,
    _Workspace,
    _workspace,
    flat_scan,
    launch,
    run_plan,
    scan,
)

__all__ = ["LAST_COMPILED", "ScanGraph", "flat_scan", "launch", "run_plan", "scan"]
