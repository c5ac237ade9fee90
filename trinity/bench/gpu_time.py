"""How long the GPU was busy during a block of code.

:class:`GpuBusy` traces the device side only (``torch.profiler`` with CUDA activity:
CUPTI records every kernel, copy and memset, the host side is not traced) and reports the
union of those intervals.  A benchmark compares it with the wall time of the loop that
issued the work: what is left is time the GPU waited for the host.  On a machine without
CUDA it measures nothing (``seconds`` stays ``None``).
"""

from __future__ import annotations

import torch


class GpuBusy:
    """``with GpuBusy() as g: ...`` then ``g.seconds`` (union of device intervals) and
    ``g.num_events``; ``g.error`` says why nothing was measured, if so."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and torch.cuda.is_available()
        self.seconds: float | None = None
        self.num_events = 0
        self.error: str | None = None
        self._prof = None

    def __enter__(self) -> GpuBusy:
        if self.enabled:
            from torch.profiler import ProfilerActivity, profile

            try:
                self._prof = profile(activities=[ProfilerActivity.CUDA])
                self._prof.__enter__()
            except Exception as e:  # noqa: BLE001 - a run without the figure, not a failed run
                self._prof, self.error = None, f"{type(e).__name__}: {e}"
        return self

    def __exit__(self, *exc) -> None:
        if self._prof is None:
            return
        try:
            torch.cuda.synchronize()
            self._prof.__exit__(None, None, None)
            spans = sorted((e.start_ns(), e.end_ns()) for e in self._prof.profiler.kineto_results.events()
                           if e.device_type() == torch.autograd.DeviceType.CUDA)
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"
            return
        self.num_events = len(spans)
        self.seconds = union_ns(spans) / 1e9


def union_ns(spans: list[tuple[int, int]]) -> int:
    """Total length of the union of sorted ``(start, end)`` intervals."""
    total, cur_s, cur_e = 0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0)
