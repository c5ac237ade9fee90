"""Overload policy: serve requests that can still make their deadline first."""

from __future__ import annotations

from trinity.engine.request import SearchRequest


def demote_hopeless(keyed: list[tuple[tuple, SearchRequest]], rate: float, start: float) -> list:
    """Move requests that cannot finish by their deadline behind those that can.

    ``keyed`` is ``[(priority key, request)]`` in priority order (the key starts with the
    aged stage); ``rate`` is the work per second the engine gets through; ``start`` when
    results of the next iteration are out.

    NOTE: plain EDF collapses under overload (the domino effect): the oldest requests,
    already too late, take the budget and then the next ones miss too.  Walking the
    priority order with the cumulative remaining work, a request that would finish after
    its deadline is served only after every request that still can -- it keeps riding
    along and ends with its best-so-far answer.  Decode-level requests are never demoted.
    """
    ahead = 0.0
    on_time, late = [], []
    for item in keyed:
        (aged, *_), req = item
        cost = req.remaining_cost()
        if aged > 0 and req.deadline is not None and start + (ahead + cost) / rate > req.deadline:
            late.append(item)
        else:
            ahead += cost
            on_time.append(item)
    return on_time + late if late else keyed
