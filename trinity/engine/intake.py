"""The scheduler's intake: admission checks and unit assignment, one batch per step.

A request learns its units on admission -- its probed lists, best first, from the
collection's coarse quantizer (one batched call per collection), or every chunk of a flat
collection -- and takes a row of the collection's progress table and a request slot.  From
then on the scheduler plans it exactly, like any request that already scanned.
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
    scheduler's requests, slots, tables and ``_finish``)."""

    def add_requests(self, reqs: list[SearchRequest]) -> None:
        """Admit ``reqs`` into the waiting set, or finish them at once (rejected, failed,
        empty); see ``pop_finished``."""
        now = self.clock()
        by_collection: dict[str, list[SearchRequest]] = {}
        num_waiting = self.slots.num_active - self.slots.num_joined
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
            if num_waiting >= self.config.max_num_waiting:
                self._finish(req, RequestStatus.FINISHED_REJECTED, message="overloaded: admission queue is full",
                             code=ErrorCode.OVERLOADED)
            elif req.deadline is not None and req.deadline <= now:
                self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline already passed at admission",
                             code=ErrorCode.DEADLINE_EXCEEDED)
            else:
                num_waiting += 1
                by_collection.setdefault(req.collection, []).append(req)
        for name, group in by_collection.items():
            self._assign(name, group, now)

    def _table(self, name: str, generation: int) -> ProgressTable:
        table = self.tables.get(name)
        if table is None or table.generation != generation:
            if table is not None:
                self._fail_table(name)
            table = self.tables[name] = ProgressTable(generation=generation, name=name, tid=self._next_tid)
            self._by_tid[table.tid] = table
            self._next_tid += 1
        return table

    def _assign(self, name: str, group: list[SearchRequest], now: float) -> None:
        stats = self.collections.stats(name)
        table = self._table(name, group[0].generation)
        graph = stats.kind == "graph"
        if graph:  # nprobe names the itopk (at least k, at most what a row holds); units are hops
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
        valid = units >= 0  # a prefix of each row (-1 padded at the end)
        counts = valid.sum(axis=1)
        costs = np.where(valid, stats.unit_sizes[np.maximum(units, 0)], 0)
        if graph:
            costs *= np.array([r.search_width for r in group], dtype=np.int64)[:, None]
        rows = table.add([r.request_id for r in group], units, costs)
        infeasible = self._clearly_infeasible(group, costs.sum(axis=1), now)
        for i, (req, row, n) in enumerate(zip(group, rows.tolist(), counts.tolist())):
            req.attach(table, row, units[i, :n])
            req.request_slot = self.slots.add(req, req.admission_seq, table.tid, row)
            if infeasible[i]:
                self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline infeasible at admission",
                             code=ErrorCode.DEADLINE_EXCEEDED)
            elif n == 0:
                self._finish(req, RequestStatus.FINISHED_COMPLETE)  # an empty collection

    def _fail_table(self, name: str) -> None:
        """Fail every request of ``name``'s table (its collection was dropped or re-created) and drop it."""
        table = self.tables.pop(name)
        del self._by_tid[table.tid]
        message = f"collection {name!r} was dropped or re-created"
        for req in [r for r in self.requests.values() if r._table is table]:
            self._finish(req, RequestStatus.FINISHED_ERROR, message=message, code=ErrorCode.UNKNOWN_COLLECTION)

    def _clearly_infeasible(self, group: list[SearchRequest], cost: np.ndarray, now: float) -> np.ndarray:
        if self.config.deadline_policy != "reject" or not self.scan_rate:
            return np.zeros(len(group), dtype=bool)
        deadline = np.array([np.inf if r.deadline is None else r.deadline for r in group])
        return now + self.iteration_s + cost / self.scan_rate > deadline
