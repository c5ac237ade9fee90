"""The runner: owns per-request device state and executes one plan on the indexes.

A request's state -- prepared query, running top-k -- is the row of its slot in its
collection's :class:`~trinity.engine.rows.RunningRows` (a persistent batch).  Each plan
joins its newcomers in one batch per collection, then runs each collection's ride: one
list-major ``scan`` over the rows in place (IVF), or one GEMM per flat chunk shared by
every rider.  Finished riders' answers are read out in one batch.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numba
import numpy as np
import torch

from trinity.engine.collections import Collections, UnknownCollectionError
from trinity.engine.graph_rows import GraphRows
from trinity.engine.plan import IterationPlan, NewRequest, RideWork, RunnerOutput
from trinity.engine.rows import RunningRows
from trinity.index import GraphIndex, IVFIndex, ProbeChunk


class SearchRunner:
    """Executes :class:`IterationPlan` s against the collections' indexes."""

    def __init__(self, collections: Collections) -> None:
        self.collections = collections
        self._rows: dict[str, RunningRows] = {}  # collection -> rows of its current index
        # NOTE: all GPU work of the engine goes to one stream owned by the loop thread, so
        # it never serialises behind other work on the default stream.
        self._stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    def reset(self) -> None:
        """Drop every request's state (after a failed iteration left it inconsistent)."""
        self._rows.clear()

    def run(self, plan: IterationPlan) -> RunnerOutput:
        """Execute one plan; the only host sync is the one returning finished results."""
        if self._stream is None:
            return self._run(plan)
        with torch.cuda.stream(self._stream):
            return self._run(plan)

    def _run(self, plan: IterationPlan) -> RunnerOutput:
        t0 = time.perf_counter()
        out = RunnerOutput()
        by_collection: defaultdict[str, list[NewRequest]] = defaultdict(list)
        for r in plan.new_requests:
            by_collection[r.collection].append(r)
        for name, reqs in by_collection.items():
            self._join(name, reqs, out)
        for ride in plan.rides:
            self._ride(ride, out)
        expiring: defaultdict[str, list] = defaultdict(list)
        for e in plan.finish_partial:
            expiring[e.collection].append(e)
        for name, group in expiring.items():
            rows = self._rows.get(name)
            if rows is not None:
                self._results(rows, [e.request_id for e in group], np.array([e.slot for e in group]), out)
        out.duration_s = time.perf_counter() - t0
        return out

    def _join(self, name: str, reqs: list[NewRequest], out: RunnerOutput) -> None:
        try:
            index = self.collections.get(name)
            queries, offsets = index.prepare_validated(np.stack([r.query for r in reqs]))
        except (UnknownCollectionError, ValueError) as e:
            out.errors.update((r.request_id, str(e)) for r in reqs)
            return
        rows = self._rows.get(name)
        graph = isinstance(index, GraphIndex)
        if rows is None or rows.index is not index:
            rows = self._rows[name] = GraphRows(index) if graph else RunningRows(index)
        slots, ks = np.array([r.slot for r in reqs], dtype=np.int64), np.array([r.k for r in reqs], dtype=np.int64)
        if graph:
            rows.add(slots, queries, offsets, ks, np.array([r.itopk for r in reqs], dtype=np.int64),
                     np.array([r.search_width for r in reqs], dtype=np.int64))
        else:
            rows.add(slots, queries, offsets, ks)

    def _ride(self, ride: RideWork, out: RunnerOutput) -> None:
        counts = np.diff(ride.ptr)
        out.vectors_scanned[ride.collection] = np.zeros(counts.size, dtype=np.int64)
        try:
            index = self.collections.get(ride.collection)
        except UnknownCollectionError as e:
            out.errors.update((rid, str(e)) for rid in ride.request_ids)
            return
        rows = self._rows.get(ride.collection)
        if rows is None or rows.index is not index:
            message = f"collection {ride.collection!r} was dropped and re-created"
            out.errors.update((rid, message) for rid in ride.request_ids)
            return
        if isinstance(rows, GraphRows):
            with index.write_lock:
                evals, done = rows.advance(ride.slots, counts)
            out.vectors_scanned[ride.collection] = evals
            out.converged[ride.collection] = early = done & ~ride.completes
            finished = np.flatnonzero(ride.completes | early)
            if finished.size:
                self._results(rows, [ride.request_ids[i] for i in finished.tolist()], ride.slots[finished], out)
            return
        with index.write_lock:
            sizes = self.collections.stats(ride.collection).unit_sizes
            if isinstance(index, IVFIndex):
                row_ptr, lists, scanned, num_read = ride_csr(ride.slots, ride.ptr, ride.unit_ids, sizes, rows.num_rows)
                index.scan(rows.queries, ProbeChunk(row_ptr, lists), rows.topk)
            else:
                scanned, num_read = ride_volume(ride.ptr, ride.unit_ids, sizes)
                pair_row = np.repeat(ride.slots, counts)
                for chunk in np.unique(ride.unit_ids).tolist():  # one GEMM per chunk, shared by every rider
                    sel = pair_row[ride.unit_ids == chunk]
                    queries, topk = rows.gather(sel)
                    index.scan_chunk(queries, chunk, topk)
                    rows.scatter(sel, topk)
            out.vectors_read += num_read
            out.vectors_scanned[ride.collection] = scanned
            done = np.flatnonzero(ride.completes)
            if done.size:
                self._results(rows, [ride.request_ids[i] for i in done.tolist()], ride.slots[done], out)

    @staticmethod
    def _results(rows: RunningRows, rids: list[str], slots: np.ndarray, out: RunnerOutput) -> None:
        d, i, ks = rows.results(slots)
        out.results.update((rid, (d[n, :ks[n]], i[n, :ks[n]])) for n, rid in enumerate(rids))


@numba.njit(cache=True)
def ride_csr(slots, ptr, unit_ids, sizes, num_rows):
    """A ride's pairs as a CSR over the persistent batch's rows (ascending), the vectors each
    rider scans, and the distinct vectors read (:func:`ride_volume`)."""
    row_ptr = np.zeros(num_rows + 1, np.int64)
    for i in range(slots.size):
        row_ptr[slots[i] + 1] = ptr[i + 1] - ptr[i]
    row_ptr = np.cumsum(row_ptr)
    lists = np.empty(unit_ids.size, np.int64)
    for i in range(slots.size):
        at = row_ptr[slots[i]] - ptr[i]
        lists[at + ptr[i]:at + ptr[i + 1]] = unit_ids[ptr[i]:ptr[i + 1]]
    scanned, num_read = ride_volume(ptr, unit_ids, sizes)
    return row_ptr, lists, scanned, num_read


@numba.njit(cache=True)
def ride_volume(ptr, unit_ids, sizes):
    """The vectors rider ``i`` scans (the sizes of ``unit_ids[ptr[i]:ptr[i + 1]]``), and the
    distinct vectors the ride reads: a unit shared by several riders is read once."""
    scanned = np.zeros(ptr.size - 1, np.int64)
    read = np.zeros(sizes.size, np.bool_)
    num_read = 0
    for i in range(ptr.size - 1):
        for j in range(ptr[i], ptr[i + 1]):
            u = unit_ids[j]
            scanned[i] += sizes[u]
            if not read[u]:
                read[u] = True
                num_read += sizes[u]
    return scanned, num_read


def compile_runner() -> None:
    """Compile the runner's kernels ahead of the first iteration."""
    one = np.zeros(1, np.int64)
    ride_csr(one, np.zeros(2, np.int64), np.zeros(0, np.int64), one, 1)  # and ride_volume
