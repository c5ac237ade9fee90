"""The cyclic GC and the loop: freeze what start-up created, and measure every pause.

A full collection walks every tracked object -- torch, numba and the index code make
that about 200k objects and 0.27 s on the 2-core VM -- and the loop thread stalls for
it.  After :func:`freeze_heap` a collection walks only what was created since (per-request
objects), which takes microseconds (vLLM calls ``gc.freeze()`` after start-up for the
same reason).
"""

from __future__ import annotations

import gc
import threading
import time

_lock = threading.Lock()
_collected = False


def freeze_heap() -> None:
    """Collect once per process, then move every tracked object to the permanent generation."""
    global _collected
    with _lock:
        if not _collected:
            gc.collect()
            _collected = True
        gc.freeze()


class GcPauses:
    """Every collection's duration while installed: ``max_s``, ``total_s`` and ``count``
    per generation (the pause of the slowest one is the loop's worst stall)."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self.total_s = 0.0
        self.count = [0, 0, 0]
        self._start = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        pause = time.perf_counter() - self._start
        self.max_s = max(self.max_s, pause)
        self.total_s += pause
        self.count[info["generation"]] += 1

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)
