"""Overload policy: serve requests that can still make their deadline first."""

from __future__ import annotations

import numba
import numpy as np


def demote_hopeless(order: np.ndarray, aged: np.ndarray, cost: np.ndarray, deadline: np.ndarray, rate: float,
                    start: float) -> np.ndarray:
    """Move requests that cannot finish by their deadline behind those that can.

    ``order`` is request slots in priority order, with their aged level, remaining work and
    deadline (``inf``: none); ``rate`` is the work per second the engine gets through;
    ``start`` when results of the next iteration are out.

    NOTE: plain EDF collapses under overload (the domino effect): the oldest requests,
    already too late, take the budget and then the next ones miss too.  Walking the
    priority order with the cumulative remaining work, a request that would finish after
    its deadline is served only after every request that still can -- it keeps riding
    along and ends with its best-so-far answer.  Decode-level requests are never demoted.
    """
    late = _late(aged, cost.astype(np.float64), deadline, float(rate), float(start))
    return np.concatenate((order[~late], order[late])) if late.any() else order


@numba.njit(cache=True)
def _late(aged, cost, deadline, rate, start):
    late = np.zeros(aged.size, np.bool_)
    ahead = 0.0
    for i in range(aged.size):
        if aged[i] > 0 and start + (ahead + cost[i]) / rate > deadline[i]:
            late[i] = True
        else:
            ahead += cost[i]
    return late


def compile_overload() -> None:
    _late(np.zeros(1, np.int64), np.zeros(1), np.zeros(1), 1.0, 0.0)
