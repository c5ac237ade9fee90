"""The scheduler's intake: admission checks and unit assignment, one batch per step.

A request learns its units on admission -- its probed lists, best first, from the
collection's coarse quantizer (one batched call per collection), or every chunk of a flat
collection -- and takes a slot of the collection's progress table.  From then on the
scheduler plans it exactly, like any request that already scanned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from trinity.engine.collections import UnknownCollectionError
from trinity.engine.progress import ProgressTable
from trinity.engine.request import RequestStatus, SearchRequest
from trinity.errors import ErrorCode

if TYPE_CHECKING:
    from trinity.engine.scheduler import Scheduler


def admit_batch(sched: Scheduler, reqs: list[SearchRequest], now: float) -> None:
    """Admit ``reqs`` into ``sched``'s waiting queue, or finish them at once (rejected, failed, empty)."""
    by_collection: dict[str, list[SearchRequest]] = {}
    for req in reqs:
        req.admission_seq = sched.num_admitted
        sched.num_admitted += 1
        sched.requests[req.request_id] = req
        try:
            stats = sched.collections.stats(req.collection)
        except UnknownCollectionError as e:
            sched._finish(req, RequestStatus.FINISHED_ERROR, message=str(e), code=ErrorCode.UNKNOWN_COLLECTION)
            continue
        req.kind, req.generation = stats.kind, sched.collections.generation(req.collection)
        if len(sched.requests) - len(sched.joined) > sched.config.max_num_waiting:
            sched._finish(req, RequestStatus.FINISHED_REJECTED, message="overloaded: admission queue is full",
                          code=ErrorCode.OVERLOADED)
        elif req.deadline is not None and req.deadline <= now:
            sched._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline already passed at admission",
                          code=ErrorCode.DEADLINE_EXCEEDED)
        else:
            by_collection.setdefault(req.collection, []).append(req)
    for name, group in by_collection.items():
        _assign(sched, name, group, now)


def _assign(sched: Scheduler, name: str, group: list[SearchRequest], now: float) -> None:
    stats = sched.collections.stats(name)
    table = sched.tables.get(name)
    if table is None or table.generation != group[0].generation:
        if table is not None:
            fail_table(sched, name)
        table = sched.tables[name] = ProgressTable(generation=group[0].generation)
    nprobes = np.array([min(r.nprobe or stats.default_nprobe, stats.num_units) for r in group], dtype=np.int64)
    try:
        units = sched.collections.assign(name, np.stack([r.query for r in group]), nprobes,
                                         [r.request_id for r in group])
    except (UnknownCollectionError, ValueError) as e:
        for req in group:
            sched._fail(req, str(e))
        return
    for req, row in zip(group, units):
        ids = row[row >= 0]
        req.attach(table, ids, stats.unit_sizes[ids])
        if _clearly_infeasible(sched, req, now):
            sched._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline infeasible at admission",
                          code=ErrorCode.DEADLINE_EXCEEDED)
        elif req.num_units_total == 0:
            sched._finish(req, RequestStatus.FINISHED_COMPLETE)  # an empty collection
        else:
            sched.waiting.push(req, req.admission_seq, now)


def fail_table(sched: Scheduler, name: str) -> None:
    """Fail every request of ``name``'s table (its collection was dropped or re-created) and drop it."""
    table = sched.tables.pop(name)
    message = f"collection {name!r} was dropped or re-created"
    for req in [r for r in sched.requests.values() if r._table is table]:
        sched._finish(req, RequestStatus.FINISHED_ERROR, message=message, code=ErrorCode.UNKNOWN_COLLECTION)


def _clearly_infeasible(sched: Scheduler, req: SearchRequest, now: float) -> bool:
    if sched.config.deadline_policy != "reject" or req.deadline is None or not sched.scan_rate:
        return False
    return now + sched.iteration_s + req.remaining_cost() / sched.scan_rate > req.deadline
