"""Stage-aware, deadline-driven continuous-batching scheduler (policy only).

The policy, in full:

1. Order requests by (aged stage, deadline, arrival): decode-stage work first; a waiting
   request rises one stage per ``aging_s`` (bounded starvation), a deadline window of at
   most ``urgent_deadline_ms`` ranks with decode work.  FIFO mode orders by arrival.
2. Each iteration spends a budget of (query, vector) scans sized so it lasts about
   ``target_iteration_ms`` (:mod:`~trinity.engine.cost_model`).
3. Requests claim their unseen units best first in that order (:mod:`~trinity.engine.window`);
   under load only *urgent* ones claim -- decode level, no deadline, or less than
   ``urgent_share`` of the window left -- and the rest ride along on units read for
   others, then get the budget's fill.  Under overload requests that can no longer make
   their deadline yield to those that can (:mod:`~trinity.engine.overload`).
4. Claims that complete a decode-level request (by stage or deadline window, not by aging)
   form the *head*: run first, their answers leave before the rest of the iteration scans.
5. Work not scheduled keeps its progress and running top-k: nothing is recomputed.  A
   request whose deadline falls before the next iteration could end is finished with its
   best-so-far answer (``partial``); nothing ever misses silently.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from operator import attrgetter, itemgetter

import numpy as np

from trinity.engine.collections import Collections
from trinity.engine.config import SchedulerConfig
from trinity.engine.cost_model import IterationCostModel, IterationSample
from trinity.engine.intake import Intake
from trinity.engine.overload import demote_hopeless
from trinity.engine.plan import Expiry, IterationPlan, NewRequest, RideWork, RunnerOutput
from trinity.engine.progress import ProgressTable
from trinity.engine.queue import WaitQueue, level
from trinity.engine.request import RequestStatus, SearchRequest
from trinity.engine.window import Claims, Riders, Window
from trinity.errors import ErrorCode

Finished = tuple[SearchRequest, "np.ndarray | None", "np.ndarray | None"]  # (request, scores, ids)


class Scheduler(Intake):
    """Owns request progress and policy; never touches vectors."""

    def __init__(self, config: SchedulerConfig, collections: Collections,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.collections = collections
        self.clock = clock
        self.requests: dict[str, SearchRequest] = {}  # active, in admission order
        self.joined: set[str] = set()  # the runner holds state for these
        self.waiting = WaitQueue(config.stage_aware, config.aging_s, config.urgent_deadline_ms / 1e3)  # the others
        self.tables: dict[str, ProgressTable] = {}  # per collection (of its current generation)
        self.cost = IterationCostModel(config)
        self.iteration = 0
        self.num_admitted = 0
        self.num_finished = 0
        self.num_preemptions = 0
        self._saturated = False  # the last plan left wanted work for later (budget-bound)
        self._finished: list[Finished] = []
        self._head_sample: IterationSample | None = None
        self._started = 0.0  # when the current iteration's planning began

    # ------------------------------------------------------------------ admission
    def add_request(self, req: SearchRequest) -> None:
        self.add_requests([req])

    def abort(self, request_id: str) -> bool:
        """Abort an active request; its slot is free at once."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        self._finish(req, RequestStatus.FINISHED_ABORTED, message="aborted", code=ErrorCode.CLIENT_GONE)
        return True

    def pop_finished(self) -> list[Finished]:
        """Requests finished so far and not yet handed out."""
        out, self._finished = self._finished, []
        return out

    # NOTE: the cost model owns these; the scheduler reads them every iteration.
    budget_vectors = property(lambda self: self.cost.budget_vectors, doc="Budget of the next iteration.")
    scan_rate = property(lambda self: self.cost.scan_rate, doc="Fitted (query, vector) pairs per second.")
    iteration_s = property(lambda self: self.cost.iteration_s, doc="Smoothed observed iteration duration.")
    read_weight = property(lambda self: self.cost.read_weight, doc="Fitted cost of a read per pair scan.")

    @property
    def has_work(self) -> bool:
        return bool(self.requests)

    def _head_horizon(self, now: float):
        """When a waiting request's answer could be out: a decode-level claim runs first, in the head."""
        if not self.config.stage_aware or not self.scan_rate:
            return None
        rate = self.scan_rate
        return lambda req: now + req.remaining_cost() / rate if self.level(req) == 0 else now + self.iteration_s

    def level(self, req: SearchRequest) -> int:
        return level(req, self.config.urgent_deadline_ms / 1e3)

    # ------------------------------------------------------------------ one iteration
    def schedule(self) -> IterationPlan:
        """Plan the next iteration: claims in priority order, then the fill."""
        now = self._started = self.clock()
        self.iteration += 1
        for req in self.waiting.expiring(now + self.iteration_s, self._head_horizon(now)):
            self._finish(req, RequestStatus.FINISHED_PARTIAL, message="deadline reached before any scan")
        self.waiting.refresh(now)
        running = sorted((self.requests[rid] for rid in self.joined), key=attrgetter("admission_seq"))
        keyed = sorted((((self.waiting.key(r, now), r.admission_seq), r) for r in running), key=itemgetter(0))
        keyed = [(key, r) for (key, _), r in heapq.merge(
            keyed, self.waiting.head(self.config.max_num_waiting_considered), key=itemgetter(0))]
        if self.config.stage_aware and self.scan_rate and self._saturated:
            rate = self.budget_vectors / max(self.iteration_s, 1e-6)
            keyed = demote_hopeless(keyed, rate, now + 2 * self.iteration_s)
        candidates = [r for _, r in self._admissible(keyed)]
        closing: list[SearchRequest] = []
        window = self._open_window(candidates, closing)
        planned, forced = window.plan(self._claims(candidates, window.groups, now), self.budget_vectors)
        head_rides, rides = window.work()
        exhausted = window.exhausted
        new = self._mark_scheduled(candidates, head_rides + rides, now, exhausted)
        # NOTE: "under load" needs a binding budget and iterations that actually run long: at
        # light load the fit extrapolates from tiny iterations and must not make slack wait.
        self._saturated = exhausted and self.iteration_s >= 0.5 * self.config.target_iteration_ms / 1e3
        expiries = self._closing(candidates + closing, now + 2 * self.iteration_s)
        budget, total = self.budget_vectors, int(math.ceil(planned))
        assert total <= budget or forced, "budget exceeded"
        if not head_rides or not (rides or expiries):
            return IterationPlan(self.iteration, new, expiries, budget, total, forced, tuple(head_rides + rides))
        head = IterationPlan(self.iteration, new, (), budget, 0, False, tuple(head_rides), is_head=True)
        return IterationPlan(self.iteration, (), expiries, budget, total, forced, tuple(rides), head)

    def _closing(self, reqs: list[SearchRequest], horizon: float) -> tuple[Expiry, ...]:
        """Requests whose deadline falls before the next iteration could end: they leave with
        this one -- complete, or partial with their best so far (``Expiry``)."""
        out = {}
        for req in reqs:
            if req.deadline is None or req.deadline > horizon or req.is_finished or req.request_id in out:
                continue
            if req.request_id in self.joined:
                out[req.request_id] = Expiry(req.request_id, req.collection, req.slot)
            else:
                self._finish(req, RequestStatus.FINISHED_PARTIAL, message="deadline reached before any scan")
        return tuple(out.values())

    def _admissible(self, keyed: list) -> list:
        """The running requests and the waiting ones that may join: decode level always
        (riders holding every slot must not invert priorities), others while a slot is free."""
        free = self.config.max_num_running - len(self.joined)
        out = []
        for item in keyed:
            req = item[1]
            if req.request_id not in self.joined:
                if self.level(req) > 0 and free <= 0:
                    continue
                free -= 1
            out.append(item)
        return out

    def _open_window(self, candidates: list[SearchRequest], closing: list[SearchRequest]) -> Window:
        """The iteration's window over its candidates; requests on a collection that is gone
        fail, and those left without units by a flat collection that shrank close."""
        riders: dict[str, tuple[list[SearchRequest], list[int]]] = {}
        for rank, req in enumerate(candidates):
            group = riders.setdefault(req.collection, ([], []))
            group[0].append(req)
            group[1].append(rank)
        groups = []
        for name, (reqs, ranks) in riders.items():
            table = self.tables.get(name)
            if table is None or table.generation != self.collections.generation(name):
                if table is not None:
                    self._fail_table(name)
                continue
            stats = self.collections.stats(name)
            slots = np.fromiter((r.slot for r in reqs), dtype=np.int64, count=len(reqs))
            if table.skip_missing(slots, stats.unit_sizes.size):  # a flat collection shrank under its scans
                for r in [r for r in reqs if r.num_units_left == 0]:
                    if r.request_id in self.joined:
                        closing.append(r)
                    else:
                        self._finish(r, RequestStatus.FINISHED_PARTIAL, message="collection shrank before any scan")
                ranks = [k for k, r in zip(ranks, reqs) if r.num_units_left]
                reqs = [r for r in reqs if r.num_units_left]
                slots = np.fromiter((r.slot for r in reqs), dtype=np.int64, count=len(reqs))
            if reqs:
                groups.append(Riders(name, stats.unit_sizes, table, tuple(r.request_id for r in reqs), slots,
                                     np.asarray(ranks, dtype=np.int64), stats.kind == "flat" or not self._saturated))
        return Window(groups, self.read_weight)

    def _claims(self, candidates: list[SearchRequest], groups: list[Riders], now: float) -> Claims:
        """How each candidate may claim.  *Urgent* ones claim even under load (rather than
        riding along): FIFO mode, decode level (by stage or deadline window; aging lifts
        priority, not urgency), no deadline (no slack to spend), or less than ``urgent_share``
        of the window left (at least 4 iterations plus twice its remaining scan)."""
        n, cfg = len(candidates), self.config
        window = np.full(n, -1, dtype=np.int64)
        remaining = np.zeros(n)
        for i, g in enumerate(groups):
            window[g.ranks] = i
            remaining[g.ranks] = g.table.remaining[g.slots]
        deadline = np.fromiter((math.inf if r.deadline is None else r.deadline for r in candidates), float, n)
        span = deadline - np.fromiter((r.arrival_time for r in candidates), float, n)
        top = (span <= cfg.urgent_deadline_ms / 1e3) | (np.fromiter((r.stage for r in candidates), np.int64, n) == 0)
        if not cfg.stage_aware:
            return Claims(window, np.ones(n, dtype=bool), np.zeros(n, dtype=bool))
        need = remaining / self.scan_rate if self.scan_rate else 0.0
        urgent = top | np.isinf(deadline) | (deadline - now <= np.maximum(cfg.urgent_share * span,
                                                                          4 * self.iteration_s + 2 * need))
        return Claims(window, urgent | (not self._saturated), top)

    def _mark_scheduled(self, candidates: list[SearchRequest], rides: list[RideWork], now: float,
                        exhausted: bool) -> tuple[NewRequest, ...]:
        """Statuses after planning; newcomers with work join now (the runner builds their state)."""
        scheduled = {rid for ride in rides for rid in ride.request_ids}
        new = []
        for req in candidates:
            rid = req.request_id
            if rid in scheduled:
                if rid not in self.joined:
                    self.joined.add(rid)
                    self.waiting.remove(rid)
                    new.append(NewRequest(rid, req.collection, req.query, req.k, req.slot,
                                          req.nprobe if req.kind == "graph" else 0, req.search_width))
                req.status = RequestStatus.RUNNING
                if req.first_scan_time is None:
                    req.first_scan_time = now
            elif req.status is RequestStatus.RUNNING:
                # NOTE: only a request displaced by a full budget counts as preempted; one
                # waiting for its lists to come round with other riders is just deferred.
                req.status = RequestStatus.PREEMPTED
                if exhausted:
                    req.num_preemptions += 1
                    self.num_preemptions += 1
        return tuple(new)

    def update_from_output(self, plan: IterationPlan, out: RunnerOutput) -> list[Finished]:
        """Apply the runner's output for one plan (or head); return every request that finished."""
        for rid, message in out.errors.items():
            req = self.requests.get(rid)
            if req is not None:
                self._fail(req, message)
        for ride in plan.rides:
            self._update_ride(ride, out)
        for e in plan.finish_partial:
            req = self.requests.get(e.request_id)
            if req is not None:
                scores, ids = out.results.get(e.request_id, (None, None))
                self._finish(req, RequestStatus.FINISHED_PARTIAL, scores, ids, message="deadline reached")
        sample = IterationSample.of(plan, out, self._head_sample)
        self._head_sample = sample if plan.is_head else None
        if not plan.is_head:
            self.cost.observe(sample, self.iteration, saturated=self._saturated, step_s=self.clock() - self._started)
            self._check_invariants()
        return self.pop_finished()

    def _update_ride(self, ride: RideWork, out: RunnerOutput) -> None:
        """One collection's riders: one scatter into its progress table, then the finished (last
        planned unit scanned, or a graph search converged before it)."""
        reqs = [self.requests.get(rid) for rid in ride.request_ids]
        vectors = out.vectors_scanned[ride.collection]
        early = out.converged.get(ride.collection, np.zeros(len(reqs), dtype=bool))
        if not all(reqs):  # failed by the runner's errors just now
            keep = np.array([r is not None for r in reqs], dtype=bool)
            ride, vectors, early = ride.subset(keep), vectors[keep], early[keep]
            reqs = [r for r in reqs if r is not None]
            if not reqs:
                return
        done = ride.completes | early
        reqs[0]._table.apply(ride.slots, ride.ptr, ride.units, ride.completes, vectors)
        for i in np.flatnonzero(done).tolist():
            self._finish(reqs[i], RequestStatus.FINISHED_COMPLETE, *out.results[reqs[i].request_id])

    # ------------------------------------------------------------------ internals
    def _fail(self, req: SearchRequest, message: str) -> None:
        gone = self.collections.generation(req.collection) != req.generation
        self._finish(req, RequestStatus.FINISHED_ERROR, message=message,
                     code=ErrorCode.UNKNOWN_COLLECTION if gone else ErrorCode.INTERNAL)

    def _finish(self, req: SearchRequest, status: RequestStatus, scores=None, ids=None, message: str = "",
                code: ErrorCode | None = None) -> None:
        req.status, req.code, req.message = status, code, message
        req.finish_time = self.clock()
        req.detach()
        del self.requests[req.request_id]
        self.waiting.remove(req.request_id)
        self.joined.discard(req.request_id)
        self.num_finished += 1
        self._finished.append((req, scores, ids))

    def _check_invariants(self) -> None:
        assert self.requests.keys() >= self.joined, "runner state for a finished request"
        assert len(self.waiting) + len(self.joined) == len(self.requests), "a request is neither waiting nor joined"
        assert len(self.requests) + self.num_finished == self.num_admitted, "a request was lost"
