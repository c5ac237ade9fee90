"""glibc heap hygiene for the pool server: its RSS should track the data it holds."""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import torch

_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt parameters (malloc.h)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc() -> None:
    """Keep glibc from hoarding freed buffers in per-thread arenas (no-op elsewhere; see docs/api.md)."""
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

    Loading the embedding model imports ``torch._dynamo``, which imports triton only to ask
    whether it is installed (docs/api.md, "Memory").  Without a CUDA device nothing in the pool
    runs triton, so a ``None`` entry in ``sys.modules`` makes ``import triton`` fail and torch
    take its no-triton path.  Kept where triton may run: CUDA, or ``TRITON_INTERPRET=1``.
    """
    if "triton" in sys.modules or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True
