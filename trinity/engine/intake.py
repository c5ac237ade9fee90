"""The scheduler's intake: admission checks and unit assignment, one batch per step.

A request learns its units on admission -- its probed lists, best first, from the
collection's coarse quantizer (one batched call per collection), or every chunk of a flat
collection -- and takes a slot of the collection's progress table.  From then on the
scheduler plans it exactly, like any request that already scanned.
"""

from __future__ import annotations

import numpy as np

from trinity.engine.collections import UnknownCollectionError
from trinity.engine.graph_rows import graph_itopk, hop_limit
from trinity.engine.progress import ProgressTable
from trinity.engine.request import RequestStatus, SearchRequest
from trinity.errors import ErrorCode


class Intake:
    """The :class:`~trinity.engine.scheduler.Scheduler`'s admission half (a mixin: it uses the
    scheduler's requests, queue, tables and ``_finish``)."""

    def add_requests(self, reqs: list[SearchRequest]) -> None:
        """Admit ``reqs`` into the waiting queue, or finish them at once (rejected, failed,
        empty); see ``pop_finished``."""
        now = self.clock()
        by_collection: dict[str, list[SearchRequest]] = {}
        for req in reqs:
            req.admission_seq = self.num_admitted
            self.num_admitted += 1
            self.requests[req.request_id] = req
            try:
                stats = self.collections.stats(req.collection)
            except UnknownCollectionError as e:
                self._finish(req, RequestStatus.FINISHED_ERROR, message=str(e), code=ErrorCode.UNKNOWN_COLLECTION)
                continue
            req.kind, req.generation = stats.kind, self.collections.generation(req.collection)
            if len(self.requests) - len(self.joined) > self.config.max_num_waiting:
                self._finish(req, RequestStatus.FINISHED_REJECTED, message="overloaded: admission queue is full",
                             code=ErrorCode.OVERLOADED)
            elif req.deadline is not None and req.deadline <= now:
                self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline already passed at admission",
                             code=ErrorCode.DEADLINE_EXCEEDED)
            else:
                by_collection.setdefault(req.collection, []).append(req)
        for name, group in by_collection.items():
            self._assign(name, group, now)

    def _assign(self, name: str, group: list[SearchRequest], now: float) -> None:
        stats = self.collections.stats(name)
        table = self.tables.get(name)
        if table is None or table.generation != group[0].generation:
            if table is not None:
                self._fail_table(name)
            table = self.tables[name] = ProgressTable(generation=group[0].generation)
        if stats.kind == "graph":  # nprobe names the itopk (at least k, at most what a row holds); units are hops
            for r in group:
                r.nprobe = graph_itopk(r.nprobe or stats.default_nprobe, r.k)
            nprobes = np.array([hop_limit(r.nprobe, r.search_width) for r in group], dtype=np.int64)
        else:
            nprobes = np.array([min(r.nprobe or stats.default_nprobe, stats.num_units) for r in group], dtype=np.int64)
        try:
            units = self.collections.assign(name, np.stack([r.query for r in group]), nprobes,
                                             [r.request_id for r in group])
        except (UnknownCollectionError, ValueError) as e:
            for req in group:
                self._fail(req, str(e))
            return
        for req, row in zip(group, units):
            ids = row[row >= 0]
            req.attach(table, ids, stats.unit_sizes[ids] * (req.search_width if stats.kind == "graph" else 1))
            if self._clearly_infeasible(req, now):
                self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline infeasible at admission",
                             code=ErrorCode.DEADLINE_EXCEEDED)
            elif req.num_units_total == 0:
                self._finish(req, RequestStatus.FINISHED_COMPLETE)  # an empty collection
            else:
                self.waiting.push(req, req.admission_seq, now)

    def _fail_table(self, name: str) -> None:
        """Fail every request of ``name``'s table (its collection was dropped or re-created) and drop it."""
        table = self.tables.pop(name)
        message = f"collection {name!r} was dropped or re-created"
        for req in [r for r in self.requests.values() if r._table is table]:
            self._finish(req, RequestStatus.FINISHED_ERROR, message=message, code=ErrorCode.UNKNOWN_COLLECTION)

    def _clearly_infeasible(self, req: SearchRequest, now: float) -> bool:
        if self.config.deadline_policy != "reject" or req.deadline is None or not self.scan_rate:
            return False
        return now + self.iteration_s + req.remaining_cost() / self.scan_rate > req.deadline
