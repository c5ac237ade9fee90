"""The runner: owns per-request device state and executes one plan on the indexes.

State per joined request -- its prepared query, its running top-k and (IVF) its
best-first probe list -- is a row of its collection's :class:`~trinity.engine.rows.RunningRows`
(a persistent batch).  Each iteration the runner prepares and assigns newcomers in one
batch per collection, then runs a single list-major ``scan`` (IVF) over the rows in place,
or one GEMM per flat chunk shared by all riders.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np
import torch

from trinity.engine.collections import Collections, UnknownCollectionError
from trinity.engine.plan import IterationPlan, NewRequest, RideWork, RunnerOutput, ScanWork, prefix_ends
from trinity.engine.rows import RunningRows
from trinity.index import FlatIndex, IVFIndex, ProbeChunk

#: Error of planned work (a ScanWork or a rider) for a request the runner holds no state for.
_NO_STATE = "runner holds no state for this request"
#: ``on_early`` of :meth:`SearchRunner.run`: receives ``{request_id: (scores, ids)}``.
EarlyResults = Callable[[dict[str, tuple[np.ndarray, np.ndarray]]], None]


class SearchRunner:
    """Executes :class:`IterationPlan` s against the collections' indexes."""

    def __init__(self, collections: Collections) -> None:
        self.collections = collections
        self.states: dict[str, RunningRows] = {}  # request id -> the rows holding its state
        self._rows: dict[str, RunningRows] = {}  # collection -> rows of its current index
        # NOTE: all GPU work of the engine goes to one stream owned by the loop thread, so
        # it never serialises behind other work on the default stream.
        self._stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    def reset(self) -> None:
        """Drop every request's state (after a failed iteration left it inconsistent)."""
        self.states.clear()
        self._rows.clear()

    def run(self, plan: IterationPlan, on_early: EarlyResults | None = None) -> RunnerOutput:
        """Execute one plan; the only host sync is the one returning finished results.

        With ``on_early``, the lists of ``early`` work are scanned first (with all their
        riders) and the results that completes go to ``on_early`` before the rest of the
        scan; they are in the returned output too.
        """
        if self._stream is None:
            return self._run(plan, on_early)
        with torch.cuda.stream(self._stream):
            return self._run(plan, on_early)

    def _run(self, plan: IterationPlan, on_early: EarlyResults | None) -> RunnerOutput:
        t0 = time.perf_counter()
        out = RunnerOutput()
        self._drop(plan.free)
        self._join(plan.new_requests, out)
        by_collection: dict[str, list[ScanWork]] = {}
        for w in plan.work:
            if w.request_id in self.states:
                by_collection.setdefault(w.collection, []).append(w)
            else:  # NOTE: never drop planned work silently: the scheduler fails the request
                out.errors.setdefault(w.request_id, _NO_STATE)
        rides = {r.collection: r for r in plan.rides}
        for r in plan.rides:  # NOTE: per rider of the plan's ride, whatever happens below
            out.ride_vectors_scanned[r.collection] = np.zeros(len(r.request_ids), dtype=np.int64)
        for name in [*by_collection, *(c for c in rides if c not in by_collection)]:
            items, ride = by_collection.get(name, []), rides.get(name)
            subset_of = None
            try:
                index = self.collections.get(name)
            except UnknownCollectionError as e:
                rids = [w.request_id for w in items] + list(ride.request_ids if ride else ())
                out.errors.update((rid, str(e)) for rid in rids)
                self._drop(rids)
                continue
            replaced = [w.request_id for w in items if self.states[w.request_id].index is not index]
            if ride is not None:
                ok = np.fromiter((rid in self.states and self.states[rid].index is index for rid in ride.request_ids),
                                 dtype=bool, count=len(ride.request_ids))
                if not ok.all():
                    for rid in np.asarray(ride.request_ids)[~ok].tolist():
                        if rid in self.states:
                            replaced.append(rid)
                        else:
                            out.errors[rid] = _NO_STATE
                    ride = ride.subset(ok) if ok.any() else None
                    if ride is not None:  # NOTE: vectors are reported per rider of the plan's ride
                        subset_of = ok
            for rid in replaced:
                out.errors[rid] = f"collection {name!r} was dropped and re-created"
            self._drop(replaced)
            items = [w for w in items if w.request_id in self.states]
            if not items and ride is None:
                continue
            rows = self.states[items[0].request_id if items else ride.request_ids[0]]  # one RunningRows per index
            with index.write_lock:
                if isinstance(index, IVFIndex):
                    out.results.update(self._scan_ivf(index, rows, items, ride, out, on_early))
                else:
                    self._scan_flat(index, rows, items, out)
            done = [w.request_id for w in items
                    if w.returns_result and w.request_id not in out.results and self._completed(w, rows, out)]
            if ride is not None:
                done += [rid for rid, last in zip(ride.request_ids, ride.completes.tolist()) if last]
                if subset_of is not None:
                    full = np.zeros(subset_of.size, dtype=np.int64)
                    full[subset_of] = out.ride_vectors_scanned[name]
                    out.ride_vectors_scanned[name] = full
            if done:
                out.results.update(self._take(rows, done))
        partial: dict[int, list[str]] = {}
        for rid in plan.finish_partial:
            if rid in self.states:
                partial.setdefault(id(self.states[rid]), []).append(rid)
        for rids in partial.values():
            out.results.update(self._take(self.states[rids[0]], rids))
        out.duration_s = time.perf_counter() - t0
        return out

    def _drop(self, rids) -> None:
        for rid in rids:
            rows = self.states.pop(rid, None)
            if rows is not None:
                rows.remove((rid,))

    def _take(self, rows: RunningRows, rids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Results of ``rids`` (user units); their state is freed."""
        for rid in rids:
            del self.states[rid]
        return rows.take_results(rids)

    # ------------------------------------------------------------------ joining
    def _join(self, new: tuple[NewRequest, ...], out: RunnerOutput) -> None:
        by_collection: dict[str, list[NewRequest]] = {}
        for r in new:
            by_collection.setdefault(r.collection, []).append(r)
        for name, reqs in by_collection.items():
            try:
                index = self.collections.get(name)
                queries, offsets = index.prepare_validated(np.stack([r.query for r in reqs]))
            except (UnknownCollectionError, ValueError) as e:
                for r in reqs:
                    out.errors[r.request_id] = str(e)
                continue
            rows = self._rows.get(name)
            if rows is None or rows.index is not index:  # NOTE: old rows stay with their requests
                rows = self._rows[name] = RunningRows(index)
            probes = None
            if isinstance(index, IVFIndex):  # coarse assignment, batched for all newcomers
                probes = index.assign_prepared(queries, np.array([r.num_probes for r in reqs]))
            rids = [r.request_id for r in reqs]
            added = rows.add(rids, queries, offsets, np.array([r.k for r in reqs], dtype=np.int64), probes)
            for rid in rids:
                self.states[rid] = rows
            if probes is not None:
                costs = index.lists.list_len[np.maximum(probes, 0)]
                for i, (rid, n) in enumerate(zip(rids, rows.num_probes[added].tolist())):
                    out.unit_ids[rid] = probes[i, :n]
                    out.unit_costs[rid] = costs[i, :n]

    # ------------------------------------------------------------------ scanning
    def _scan_ivf(self, index: IVFIndex, rows: RunningRows, items: list[ScanWork], ride: RideWork | None,
                  out: RunnerOutput, on_early: EarlyResults | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """One list-major scan of every item's and rider's probes, in place on ``rows``;
        with ``on_early``, the lists of completing ``early`` items go first and their
        results are taken and handed out in between (returned too)."""
        list_len = index.lists.list_len
        row_of = rows.row_of
        joined = [w for w in items if w.max_vectors is None]
        # Joined requests: their planned positions, mapped to list ids in one gather.
        # Vectorised over all items: no numpy call per item.
        num_units = np.fromiter((len(w.units) for w in joined), dtype=np.int64, count=len(joined))
        item_rows = np.fromiter((row_of[w.request_id] for w in joined), dtype=np.int64, count=len(joined))
        units = np.fromiter(itertools.chain.from_iterable(w.units for w in joined), dtype=np.int64,
                            count=int(num_units.sum()))
        num_joined = len(joined)
        if ride is not None:
            num_units = np.concatenate([num_units, np.diff(ride.ptr)])
            item_rows = np.concatenate([item_rows, np.fromiter((row_of[rid] for rid in ride.request_ids),
                                                               dtype=np.int64, count=len(ride.request_ids))])
            units = np.concatenate([units, ride.units])
        pair_row = np.repeat(item_rows, num_units)
        pair_list = rows.probes[pair_row, units]
        early: list[tuple[int, str]] = []  # (row, id) of completing early work
        if item_rows.size:
            per_item = np.bincount(np.repeat(np.arange(item_rows.size), num_units), weights=list_len[pair_list],
                                   minlength=item_rows.size).astype(np.int64)
            out.vectors_scanned.update(zip((w.request_id for w in joined), per_item[:num_joined].tolist()))
            if ride is not None:
                out.ride_vectors_scanned[ride.collection] = per_item[num_joined:]
            early += [(r, w.request_id) for w, r in zip(joined, item_rows.tolist()) if w.early and w.returns_result]
        # Newcomers: the longest best-first prefix of their probes within the cap (0: join only).
        new = [w for w in items if w.max_vectors is not None]
        if new:
            new_rows = np.fromiter((row_of[w.request_id] for w in new), dtype=np.int64, count=len(new))
            probes, num_probes = rows.probes[new_rows], rows.num_probes[new_rows]
            costs = np.where(probes >= 0, list_len[np.maximum(probes, 0)], 0)
            ends = prefix_ends(costs, num_probes, np.fromiter((w.max_vectors for w in new), np.int64, len(new)),
                               np.fromiter((w.allow_overshoot for w in new), bool, len(new)))
            taken = np.arange(probes.shape[1])[None, :] < ends[:, None]
            scanned = (costs * taken).sum(axis=1)
            for w, end, n, vectors, row in zip(new, ends.tolist(), num_probes.tolist(), scanned.tolist(),
                                               new_rows.tolist()):
                out.units_end[w.request_id] = end
                out.vectors_scanned[w.request_id] = vectors
                if end and end == n and w.early and w.returns_result:
                    early.append((row, w.request_id))
            pair_row = np.concatenate([pair_row, np.repeat(new_rows, ends)])
            pair_list = np.concatenate([pair_list, probes[taken]])
        if not pair_list.size:
            return {}
        order = np.argsort(pair_row, kind="stable")  # NOTE: CSR rows of the persistent batch, ascending
        pair_row, flat = pair_row[order], pair_list[order]
        read = np.zeros(list_len.size, dtype=bool)  # NOTE: a mask, not np.unique's sort
        read[flat] = True
        out.vectors_read += int(list_len[read].sum())
        ptr = np.zeros(rows.num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_row, minlength=rows.num_rows), out=ptr[1:])
        if on_early is None or not early or len(early) == int(np.count_nonzero(np.diff(ptr))):
            index.scan(rows.queries, ProbeChunk(ptr, flat), rows.topk)
            return {}
        # NOTE: every rider of an early list scans it in the first part, so no list is
        # read twice; the two parts together are the same scan as one call.
        is_early = np.zeros(index.nlist, dtype=bool)
        is_early[np.concatenate([flat[ptr[r]:ptr[r + 1]] for r, _ in early])] = True
        first = is_early[flat]
        index.scan(rows.queries, _sub_chunk(ptr, flat, first), rows.topk)
        results = self._take(rows, [rid for _, rid in early])
        on_early(results)
        if not first.all():
            index.scan(rows.queries, _sub_chunk(ptr, flat, ~first), rows.topk)
        return results

    def _scan_flat(self, index: FlatIndex, rows: RunningRows, items: list[ScanWork], out: RunnerOutput) -> None:
        riders: dict[int, list[int]] = {}
        for w in items:
            out.vectors_scanned[w.request_id] = sum(index.chunk_num_vectors(c) for c in w.units)
            for c in w.units:
                riders.setdefault(c, []).append(rows.row_of[w.request_id])
        out.vectors_read += sum(index.chunk_num_vectors(c) for c in riders)
        for c, sel in riders.items():  # one GEMM per chunk, shared by every rider
            sel = np.asarray(sel, dtype=np.int64)
            queries, topk = rows.gather(sel)
            index.scan_chunk(queries, c, topk)
            rows.scatter(sel, topk)

    def _completed(self, w: ScanWork, rows: RunningRows, out: RunnerOutput) -> bool:
        """Planned to complete -- and, for a newcomer's capped prefix, it reached the end."""
        return w.max_vectors is None or out.units_end[w.request_id] == rows.num_probes[rows.row_of[w.request_id]]


def _sub_chunk(ptr: np.ndarray, flat: np.ndarray, keep: np.ndarray) -> ProbeChunk:
    """The pairs of the CSR ``(ptr, flat)`` where ``keep`` holds, rows kept (possibly empty)."""
    counts = np.diff(ptr)
    kept = np.bincount(np.repeat(np.arange(counts.size), counts)[keep], minlength=counts.size)
    sub_ptr = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(kept, out=sub_ptr[1:])
    return ProbeChunk(sub_ptr, flat[keep])
