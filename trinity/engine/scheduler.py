"""Stage-aware, deadline-driven continuous-batching scheduler (policy only).

Each iteration :meth:`Scheduler.schedule` hands out a budget of *vectors scanned*
(adapted so one iteration lasts about ``target_iteration_ms``) to active requests in
priority order -- (aged stage, deadline, arrival) when stage-aware, arrival when FIFO.
Requests that got work last iteration but not this one are *preempted*: they keep their
probe cursor and (in the runner) their running top-k, so nothing is recomputed.  A
request whose deadline falls before the next iteration could end is finished with its
best-so-far answer (``partial``); nothing ever misses silently.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from trinity.engine.collections import Collections, CollectionStats, UnknownCollectionError
from trinity.engine.config import SchedulerConfig
from trinity.engine.plan import IterationPlan, NewRequest, RunnerOutput, ScanWork
from trinity.engine.request import RequestStatus, SearchRequest

#: Below this many vectors per iteration the cost fit says nothing about scanning.
_MIN_FIT_VECTORS = 1024

Finished = tuple[SearchRequest, "np.ndarray | None", "np.ndarray | None"]  # (request, scores, ids)


class Scheduler:
    """Owns request progress and policy; never touches index data."""

    def __init__(self, config: SchedulerConfig, collections: Collections,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.collections = collections
        self.clock = clock
        self.requests: dict[str, SearchRequest] = {}  # active, in admission order
        self.joined: set[str] = set()  # the runner holds state for these
        self.budget_vectors = config.initial_budget_vectors
        self.scan_rate: float | None = None  # vectors per second, EWMA over full iterations
        self.iteration_s = config.target_iteration_ms / 1e3  # EWMA of observed iteration durations
        self._samples: deque[tuple[int, int, float]] = deque(maxlen=64)  # (vectors, items, seconds)
        self._items = 0.0  # EWMA of work items per iteration
        self.iteration = 0
        self.num_admitted = 0
        self.num_finished = 0
        self.num_preemptions = 0
        self._flat_cursor: dict[str, int] = {}
        self._windows: dict[str, tuple[int, ...]] = {}
        self._to_free: list[str] = []
        self._finished: list[Finished] = []

    # ------------------------------------------------------------------ admission
    def add_request(self, req: SearchRequest) -> None:
        """Admit ``req`` (or finish it at once as rejected / empty); see ``pop_finished``."""
        now = self.clock()
        self.num_admitted += 1
        self.requests[req.request_id] = req
        try:
            stats = self.collections.stats(req.collection)
        except UnknownCollectionError as e:
            self._finish(req, RequestStatus.FINISHED_ERROR, message=str(e))
            return
        if stats.kind == "ivf":
            req.num_units_total = min(req.nprobe or stats.default_nprobe, stats.num_units)
        else:
            req.num_units_total = stats.num_units
            req.seen_chunks = np.zeros(stats.num_units, dtype=bool)
        req.est_unit_cost = stats.unit_cost
        waiting = len(self.requests) - len(self.joined)
        if waiting > self.config.max_num_waiting:
            self._finish(req, RequestStatus.FINISHED_REJECTED, message="overloaded: admission queue is full")
        elif req.deadline is not None and req.deadline <= now:
            self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline already passed at admission")
        elif self._clearly_infeasible(req, now):
            self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline infeasible at admission")
        elif req.num_units_total == 0:
            self._finish(req, RequestStatus.FINISHED_COMPLETE)  # empty collection

    def _clearly_infeasible(self, req: SearchRequest, now: float) -> bool:
        if self.config.deadline_policy != "reject" or req.deadline is None or not self.scan_rate:
            return False
        return now + self.iteration_s + req.remaining_cost() / self.scan_rate > req.deadline

    def abort(self, request_id: str) -> bool:
        """Abort an active request; its runner state is freed at the next iteration."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        self._finish(req, RequestStatus.FINISHED_ABORTED, message="aborted")
        return True

    def pop_finished(self) -> list[Finished]:
        """Requests finished outside an iteration (rejections, aborts, expiries)."""
        out, self._finished = self._finished, []
        return out

    @property
    def has_work(self) -> bool:
        return bool(self.requests or self._to_free)

    # ------------------------------------------------------------------ one iteration
    def schedule(self) -> IterationPlan:
        """Plan the next iteration."""
        now = self.clock()
        self.iteration += 1
        self._windows = {}
        free, self._to_free = tuple(self._to_free), []
        finish_partial = []
        for req in list(self.requests.values()):
            if req.deadline is None:
                continue
            if req.request_id in self.joined:
                # NOTE: a partial answer leaves with the runner's output, one iteration from
                # now; scanning once more first would return it a second iteration later.
                if now + 2 * self.iteration_s >= req.deadline:
                    finish_partial.append(req.request_id)
            elif now + self.iteration_s >= req.deadline:  # resolved before this iteration runs
                self._finish(req, RequestStatus.FINISHED_PARTIAL, message="deadline reached before any scan")
        closing = set(finish_partial)
        candidates = [r for r in self.requests.values() if r.request_id not in closing]
        candidates.sort(key=lambda r: self._priority(r, now))
        budget_left, planned = self.budget_vectors, 0
        work: list[ScanWork] = []
        new: list[NewRequest] = []
        num_joined = len(self.joined) - len(closing)
        for req in candidates:
            if budget_left <= 0:
                break
            joined = req.request_id in self.joined
            # NOTE: decode-level work may exceed max_num_running; otherwise preempted
            # prefill requests holding every slot would invert priorities.
            if not joined and num_joined >= self.config.max_num_running and self._priority(req, now)[0] > 0:
                continue
            planned_item = self._plan_item(req, budget_left, first=not work)
            if planned_item is None:
                continue
            item, cost = planned_item
            work.append(item)
            planned += cost
            budget_left -= cost
            if not joined:
                num_joined += 1
                new.append(NewRequest(req.request_id, req.collection, req.query, req.k, req.num_units_total))
        scheduled = {w.request_id for w in work}
        for req in candidates:
            if req.request_id in scheduled:
                req.status = RequestStatus.RUNNING
                if req.first_scan_time is None:
                    req.first_scan_time = now
            elif req.status is RequestStatus.RUNNING:
                req.status = RequestStatus.PREEMPTED
                req.num_preemptions += 1
                self.num_preemptions += 1
        return IterationPlan(self.iteration, tuple(new), tuple(work), tuple(finish_partial), free,
                             self.budget_vectors, planned)

    def _priority(self, req: SearchRequest, now: float) -> tuple[float, ...]:
        if not self.config.stage_aware:
            return (req.arrival_time,)
        aged = max(0, int(req.stage) - int((now - req.arrival_time) / self.config.aging_s))
        # NOTE: a request without a deadline gets a virtual one (when it would age into the
        # top stage); otherwise, once aged, it would still sort after every deadline-bearing
        # request of that stage and starve under a steady decode stream.
        deadline = req.deadline
        if deadline is None:
            deadline = req.arrival_time + self.config.aging_s * (int(req.stage) + 1)
        return (aged, deadline, req.arrival_time)

    def _plan_item(self, req: SearchRequest, budget_left: int, first: bool) -> tuple[ScanWork, int] | None:
        if req.seen_chunks is not None:
            return self._plan_flat(req, budget_left, first)
        start, total = req.num_units_done, req.num_units_total
        if req.unit_costs is None:  # not assigned yet: cap by vectors, the runner cuts the prefix
            if not first and budget_left < req.est_unit_cost:
                return None
            # NOTE: the cap is the size-biased estimate itself: a request whose probed lists
            # run larger finishes next iteration, instead of every newcomer reserving
            # headroom that other work then cannot use.
            cap = int(min(budget_left, math.ceil(req.remaining_cost()) + 1))
            # NOTE: the most urgent item always progresses (>= 1 probe even past its cap), so
            # it is charged the worst case of one probe: the budget holds for the rest.
            charge = cap
            if first:
                stats = self._stats_or_fail(req)
                if stats is None:
                    return None
                charge = max(cap, stats.max_unit_cost)
            return ScanWork(req.request_id, req.collection, start, total, max_vectors=cap, returns_result=True,
                            allow_overshoot=first), charge
        cum = np.cumsum(req.unit_costs[start:total])
        n = int(np.searchsorted(cum, budget_left, side="right"))
        if n == 0:
            if not first:
                return None
            n = 1  # NOTE: progress guarantee: one unit even if it alone exceeds the budget
        end = start + n
        return ScanWork(req.request_id, req.collection, start, end, returns_result=end == total), int(cum[n - 1])

    def _plan_flat(self, req: SearchRequest, budget_left: int, first: bool) -> tuple[ScanWork, int] | None:
        stats = self._stats_or_fail(req)
        if stats is None:
            return None
        seen = req.seen_chunks
        seen[stats.num_units:] = True  # the collection shrank: those chunks no longer exist
        window = self._windows.get(req.collection)
        if window is None and stats.num_units:
            n = stats.num_units
            cursor = self._flat_cursor.get(req.collection, 0) % n
            # NOTE: the window opens at the first rider's next unseen chunk, so the most
            # urgent flat request always makes progress (a preempted rider may have seen
            # the chunks right after the shared cursor already).
            unseen = np.flatnonzero(~seen[:n])
            if unseen.size:
                after = unseen[unseen >= cursor]
                cursor = int(after[0]) if after.size else int(unseen[0])
            width = int(min(max(1, budget_left // stats.unit_cost), n))
            window = tuple((cursor + i) % n for i in range(width))
            self._windows[req.collection] = window
        chunks = tuple(c for c in window or () if c < seen.size and not seen[c])
        fits = int(budget_left // stats.unit_cost) if stats.unit_cost else len(chunks)
        if len(chunks) > fits:
            if not first and fits == 0:
                return None
            chunks = chunks[: max(fits, 1)]
        left = int(seen.size - seen.sum())
        if not chunks and left:
            return None  # waits for the shared cursor to come round to its unseen chunks
        cost = int(len(chunks) * stats.unit_cost)
        return ScanWork(req.request_id, req.collection, chunks=chunks, returns_result=len(chunks) == left), cost

    def _stats_or_fail(self, req: SearchRequest) -> CollectionStats | None:
        """The collection's stats, or ``None`` after failing ``req`` if it was dropped."""
        try:
            return self.collections.stats(req.collection)
        except UnknownCollectionError as e:
            self._finish(req, RequestStatus.FINISHED_ERROR, message=str(e))
            return None

    def update_from_output(self, plan: IterationPlan, out: RunnerOutput) -> list[Finished]:
        """Apply the runner's output; return every request that finished."""
        for w in plan.work:
            req = self.requests.get(w.request_id)
            if req is None:  # aborted while the iteration ran; the runner frees it next time
                self._to_free.append(w.request_id)
                continue
            self.joined.add(req.request_id)
            if w.request_id in out.errors:
                self._finish(req, RequestStatus.FINISHED_ERROR, message=out.errors[w.request_id])
                continue
            if req.seen_chunks is not None:
                req.seen_chunks[list(w.chunks)] = True
                req.num_units_done = int(req.seen_chunks.sum())
            else:
                if req.unit_costs is None:
                    req.unit_costs = out.unit_costs[req.request_id]
                    req.num_units_total = len(req.unit_costs)
                req.num_units_done = out.units_end[req.request_id]
            req.num_vectors_scanned += out.vectors_scanned.get(req.request_id, 0)
            req.num_iterations += 1
            if w.request_id in out.results:
                assert req.num_units_done == req.num_units_total, f"{req.request_id}: result before completion"
                self._finish(req, RequestStatus.FINISHED_COMPLETE, *out.results[w.request_id])
            else:
                assert req.num_units_done < req.num_units_total, f"{req.request_id}: complete without a result"
        for rid in plan.finish_partial:
            req = self.requests.get(rid)
            if req is not None:
                scores, ids = out.results.get(rid, (None, None))
                self._finish(req, RequestStatus.FINISHED_PARTIAL, scores, ids, message="deadline reached")
        for col, window in self._windows.items():
            self._flat_cursor[col] = window[-1] + 1
        self._adapt_budget(plan, out)
        self._check_invariants(plan)
        return self.pop_finished()

    # ------------------------------------------------------------------ internals
    def _adapt_budget(self, plan: IterationPlan, out: RunnerOutput) -> None:
        """Fit ``duration ~ a + b * vectors + c * items`` over recent iterations and size
        the budget so a full iteration lasts ``target_iteration_ms``.

        NOTE: a plain vectors/duration rate charges fixed per-iteration and per-request
        costs to the scan, so a smaller budget looks slower still and the budget spirals
        down; separating the terms keeps it stable at light and heavy load alike.
        """
        if out.duration_s <= 0 or plan.is_empty:
            return
        target = self.config.target_iteration_ms / 1e3
        items = len(plan.work) + len(plan.new_requests)
        scanned = sum(out.vectors_scanned.values())
        # NOTE: clamp outliers (a JIT compile, a page-in after idling) before fitting or
        # smoothing: one slow iteration must not make every deadline look unreachable.
        sample = min(out.duration_s, 4 * target)
        self._samples.append((scanned, items, sample))
        a = self.config.budget_ewma
        self._items = (1 - a) * self._items + a * items
        # NOTE: deadlines are checked against observed iteration times, not against the
        # fit's prediction: with tiny collections the fit is degenerate (a clamped budget
        # would "predict" iterations hundreds of ms long and expire every request).
        self.iteration_s = (1 - a) * self.iteration_s + a * sample
        if len(self._samples) < 8:
            return
        data = np.asarray(self._samples, dtype=np.float64)
        scale = np.maximum(data[:, :2].max(axis=0), 1.0)
        design = np.column_stack([np.ones(len(data)), data[:, 0] / scale[0], data[:, 1] / scale[1]])
        (fixed, per_vec, per_item), *_ = np.linalg.lstsq(design, data[:, 2], rcond=None)
        per_vec /= scale[0]
        per_item /= scale[1]
        if not per_vec > 0 or data[:, 0].max() < _MIN_FIT_VECTORS:
            return  # degenerate window (constant or tiny scans): keep the current budget
        fixed, per_item = max(fixed, 0.0), max(per_item, 0.0)
        self.scan_rate = 1.0 / per_vec
        budget = (target - fixed - per_item * self._items) / per_vec
        self.budget_vectors = int(min(max(budget, self.config.min_budget_vectors), self.config.max_budget_vectors))

    def _finish(self, req: SearchRequest, status: RequestStatus, scores=None, ids=None, message: str = "") -> None:
        req.status = status
        req.finish_time = self.clock()
        req.message = message
        del self.requests[req.request_id]
        if req.request_id in self.joined:
            self.joined.discard(req.request_id)
            if status is not RequestStatus.FINISHED_COMPLETE and status is not RequestStatus.FINISHED_PARTIAL:
                self._to_free.append(req.request_id)
        self.num_finished += 1
        self._finished.append((req, scores, ids))

    def _check_invariants(self, plan: IterationPlan) -> None:
        assert plan.planned_vectors <= plan.budget_vectors or len(plan.work) == 1, "budget exceeded"
        assert self.requests.keys() >= self.joined, "runner state for a finished request"
        assert len(self.requests) + self.num_finished == self.num_admitted, "a request was lost"
