"""glibc heap hygiene for the pool server: its RSS should track the data it holds."""

from __future__ import annotations

import ctypes
import functools
import os
import sys

_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt parameters (malloc.h)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> None:
    """Keep glibc from hoarding freed buffers (no-op elsewhere).

    NOTE: glibc raises its mmap threshold after big buffers are freed (up to 32 MiB), so
    request bodies, WAL records and index-growth copies end up in per-thread arenas that
    are never returned to the OS.  A fixed 128 KiB threshold and two arenas cut the RSS
    added by a 50k x 384 bulk load from ~2.6x to ~1.3x the vector bytes.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
        libc.mallopt(_M_ARENA_MAX, 2)


def trim_heap() -> None:
    """Return freed heap pages to the OS (``malloc_trim``; no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def skip_unused_triton() -> bool:
    """Keep triton out of a CPU-only server process; return whether it was kept out.

    NOTE: loading the embedding model imports ``torch._dynamo``, which imports triton
    just to ask whether it is installed: ~75 MiB of shared-library pages plus its Python
    modules, ~80 MiB of RSS in all (measured: a bare process hosting all-MiniLM-L6-v2,
    575 -> 496 MiB).  Without a CUDA device nothing in the pool uses triton (the CPU
    scan kernels are numba), so the import is blocked the documented way, a ``None``
    entry in ``sys.modules``: ``import triton`` then raises ``ImportError`` and torch
    takes its no-triton path.  Kept as is where triton may run: a CUDA device, or
    ``TRITON_INTERPRET=1`` (the kernels' CPU interpreter).  Call before the model loads.
    """
    if "triton" in sys.modules or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    import torch

    if torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True
