"""The runner: owns per-request device state and executes one plan on the indexes.

State per joined request: its prepared query, its running top-k row, and (IVF) its
best-first probe list.  Each iteration the runner prepares and assigns newcomers in one
batch per collection, gathers the scheduled rows into one :class:`RunningTopK` per
collection, runs a single list-major ``scan`` (IVF) or one GEMM per flat chunk shared by
all riders, and scatters the rows back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from trinity.engine.collections import Collections, UnknownCollectionError
from trinity.engine.plan import IterationPlan, NewRequest, RunnerOutput, ScanWork
from trinity.index import FlatIndex, IVFIndex, ProbeChunk, RunningTopK


@dataclass
class _RequestState:
    collection: str
    query: torch.Tensor  # (dim,) prepared (internal scoring space)
    offset: torch.Tensor  # () query offset for user units
    scores: torch.Tensor  # (k,) running top-k, internal similarities
    ids: torch.Tensor  # (k,)
    probes: np.ndarray | None = None  # IVF: best-first list ids
    probe_costs: np.ndarray | None = None


class SearchRunner:
    """Executes :class:`IterationPlan` s against the collections' indexes."""

    def __init__(self, collections: Collections) -> None:
        self.collections = collections
        self.states: dict[str, _RequestState] = {}

    def run(self, plan: IterationPlan) -> RunnerOutput:
        t0 = time.perf_counter()
        out = RunnerOutput()
        for rid in plan.free:
            self.states.pop(rid, None)
        self._join(plan.new_requests, out)
        by_collection: dict[str, list[ScanWork]] = {}
        for w in plan.work:
            if w.request_id in self.states:
                by_collection.setdefault(w.collection, []).append(w)
        for name, items in by_collection.items():
            try:
                index = self.collections.get(name)
            except UnknownCollectionError as e:
                for w in items:
                    out.errors[w.request_id] = str(e)
                    self.states.pop(w.request_id, None)
                continue
            with index.write_lock:
                if isinstance(index, IVFIndex):
                    self._scan_ivf(index, items, out)
                else:
                    self._scan_flat(index, items, out)
            for w in items:
                if w.returns_result and self._completed(w, out):
                    out.results[w.request_id] = self._result(w.request_id)
        for rid in plan.finish_partial:
            if rid in self.states:
                out.results[rid] = self._result(rid)
        out.duration_s = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ joining
    def _join(self, new: tuple[NewRequest, ...], out: RunnerOutput) -> None:
        by_collection: dict[str, list[NewRequest]] = {}
        for r in new:
            by_collection.setdefault(r.collection, []).append(r)
        for name, reqs in by_collection.items():
            try:
                index = self.collections.get(name)
                queries, offsets = index.prepare_queries(np.stack([r.query for r in reqs]))
            except (UnknownCollectionError, ValueError) as e:
                for r in reqs:
                    out.errors[r.request_id] = str(e)
                continue
            probes = None
            if isinstance(index, IVFIndex):  # coarse assignment, batched for all newcomers
                probes = index.assign_prepared(queries, np.array([r.num_probes for r in reqs]))
            for i, r in enumerate(reqs):
                state = _RequestState(
                    name, queries[i], offsets[i],
                    torch.full((r.k,), -np.inf, dtype=torch.float32, device=index.device),
                    torch.full((r.k,), -1, dtype=torch.int64, device=index.device))
                if probes is not None:
                    state.probes = probes[i][probes[i] >= 0]
                    state.probe_costs = index.lists.list_len[state.probes].copy()
                    out.unit_costs[r.request_id] = state.probe_costs
                self.states[r.request_id] = state

    # ------------------------------------------------------------------ scanning
    def _gather(self, rids: list[str]) -> tuple[torch.Tensor, RunningTopK]:
        states = [self.states[r] for r in rids]
        max_k = max(s.scores.shape[0] for s in states)
        topk = RunningTopK.empty(len(states), [s.scores.shape[0] for s in states], device=states[0].query.device)
        for i, s in enumerate(states):
            topk.scores[i, : s.scores.shape[0]] = s.scores
            topk.ids[i, : s.ids.shape[0]] = s.ids
        assert topk.max_k == max_k
        return torch.stack([s.query for s in states]), topk

    def _scatter(self, rids: list[str], topk: RunningTopK) -> None:
        for i, rid in enumerate(rids):
            s = self.states[rid]
            s.scores.copy_(topk.scores[i, : s.scores.shape[0]])
            s.ids.copy_(topk.ids[i, : s.ids.shape[0]])

    def _scan_ivf(self, index: IVFIndex, items: list[ScanWork], out: RunnerOutput) -> None:
        rids, ptr, lists = [], [0], []
        for w in items:
            st = self.states[w.request_id]
            end = min(w.unit_end, len(st.probes))
            if w.max_vectors is not None:  # newly joined: longest prefix within the cap
                cum = np.cumsum(st.probe_costs[w.unit_start:end])
                end = w.unit_start + max(1, int(np.searchsorted(cum, w.max_vectors, side="right")))
                end = min(end, len(st.probes))
            rids.append(w.request_id)
            lists.append(st.probes[w.unit_start:end])
            ptr.append(ptr[-1] + end - w.unit_start)
            out.units_end[w.request_id] = end
            out.vectors_scanned[w.request_id] = int(index.lists.list_len[st.probes[w.unit_start:end]].sum())
        queries, topk = self._gather(rids)
        chunk = ProbeChunk(np.asarray(ptr, dtype=np.int64), np.concatenate(lists).astype(np.int64))
        index.scan(queries, chunk, topk)
        self._scatter(rids, topk)

    def _scan_flat(self, index: FlatIndex, items: list[ScanWork], out: RunnerOutput) -> None:
        riders: dict[int, list[str]] = {}
        for w in items:
            out.vectors_scanned[w.request_id] = sum(index.chunk_num_vectors(c) for c in w.chunks)
            for c in w.chunks:
                riders.setdefault(c, []).append(w.request_id)
        for c, rids in riders.items():  # one GEMM per chunk, shared by every rider
            queries, topk = self._gather(rids)
            index.scan_chunk(queries, c, topk)
            self._scatter(rids, topk)

    def _completed(self, w: ScanWork, out: RunnerOutput) -> bool:
        st = self.states[w.request_id]
        return st.probes is None or out.units_end[w.request_id] == len(st.probes)

    def _result(self, rid: str) -> tuple[np.ndarray, np.ndarray]:
        """Pop a request's state and return ``(scores, ids)`` in user units."""
        st = self.states.pop(rid)
        index = self.collections.get(st.collection)
        topk = RunningTopK(st.scores[None].clone(), st.ids[None].clone(),
                           torch.tensor([st.scores.shape[0]], dtype=torch.int32, device=st.scores.device))
        d, i = topk.to_results(index.metric, st.offset.reshape(1))
        return d[0], i[0]
