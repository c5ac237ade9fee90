"""What every route module shares: the state, the name path parameters, request-array checks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
from fastapi import Path, Request

from trinity.errors import InvalidArgument
from trinity.pool.state import PoolState

__all__ = ["CACHE_NAME", "COLLECTION_NAME", "as_vectors", "check_finite", "pool_state", "when_all_done"]

COLLECTION_NAME = Path(description="Collection name", max_length=64)
CACHE_NAME = Path(description="Cache name", max_length=64)


def pool_state(request: Request) -> PoolState:
    return request.app.state.pool


def as_vectors(rows: list[list[float]], dim: int, field: str, single: bool = False) -> np.ndarray:
    """Rows as a float32 ``(n, dim)`` array; the error names the first bad row (``field.i``)."""
    for i, row in enumerate(rows):
        if len(row) != dim:
            raise InvalidArgument(f"wrong dimension {len(row)}, the dimension is {dim}",
                                  field if single else f"{field}.{i}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = np.asarray(rows, dtype=np.float32)
    return check_finite(arr, field, single)


def check_finite(arr: np.ndarray, field: str, single: bool = False) -> np.ndarray:
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
        raise InvalidArgument("values must be finite float32 numbers (no NaN, inf or |x| > 3.4e38)",
                              field if single else f"{field}.{bad}")
    return arr


def when_all_done(futures: list[Future], callback: Callable[[], None]) -> None:
    """Call ``callback`` once every future is done (immediately if there are none)."""
    remaining = [len(futures)]
    lock = threading.Lock()

    def _one(_f: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            callback()

    if not futures:
        callback()
    for f in futures:
        f.add_done_callback(_one)
