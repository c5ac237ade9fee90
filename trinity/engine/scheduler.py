"""Stage-aware, deadline-driven continuous-batching scheduler (policy only).

Each iteration :meth:`Scheduler.schedule` hands out a budget of (query, vector) scans
(sized by :class:`~trinity.engine.cost_model.IterationCostModel` so one iteration lasts
about ``target_iteration_ms``) in priority order -- (aged stage, deadline, arrival) when
stage-aware, arrival when FIFO; waiting requests stay ordered across iterations
(:mod:`trinity.engine.queue`), so a plan reads only the queue's head.  Newcomers join
(IVF: are assigned) and scan a capped best-first prefix; joined IVF requests claim lists
and ride along on others' claims -- their progress kept as one table per collection
(:mod:`trinity.engine.progress`), their work planned as one CSR per collection
(:class:`~trinity.engine.plan.RideWork`); flat requests ride a shared circular scan
(:mod:`trinity.engine.window`).  Work not scheduled keeps its progress and (in the runner)
its running top-k, so nothing is recomputed.  A request whose deadline falls before the
next iteration could end is finished with its best-so-far answer (``partial``); nothing
ever misses silently.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import defaultdict
from collections.abc import Callable
from operator import attrgetter, itemgetter

import numpy as np

from trinity.engine.collections import Collections, CollectionStats, UnknownCollectionError
from trinity.engine.config import SchedulerConfig
from trinity.engine.cost_model import IterationCostModel
from trinity.engine.overload import demote_hopeless
from trinity.engine.plan import IterationPlan, NewRequest, RideWork, RunnerOutput, ScanWork
from trinity.engine.progress import ProgressTable
from trinity.engine.queue import WaitQueue
from trinity.engine.request import RequestStatus, SearchRequest, Stage
from trinity.engine.urgency import Urgency
from trinity.engine.window import FlatWindows, open_list_windows
from trinity.errors import ErrorCode


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
        self.waiting = WaitQueue(config.stage_aware, config.aging_s, config.urgent_deadline_ms / 1e3)  # the others
        self.cost = IterationCostModel(config)
        self.urgency = Urgency(config, self.cost)
        self.iteration = 0
        self.num_admitted = 0
        self.num_finished = 0
        self.num_preemptions = 0
        self.flat = FlatWindows()
        self.tables: defaultdict[str, ProgressTable] = defaultdict(ProgressTable)  # IVF progress per collection
        self._to_free: list[str] = []
        self._saturated = False  # the last plan left wanted work for later (budget-bound)
        self._overloaded = False  # this plan demoted requests that can no longer make their deadline
        self._finished: list[Finished] = []

    # ------------------------------------------------------------------ admission
    def add_request(self, req: SearchRequest) -> None:
        """Admit ``req`` (or finish it at once as rejected / empty); see ``pop_finished``."""
        now = self.clock()
        req.admission_seq = self.num_admitted
        self.num_admitted += 1
        self.requests[req.request_id] = req
        try:
            stats = self.collections.stats(req.collection)
        except UnknownCollectionError as e:
            self._finish(req, RequestStatus.FINISHED_ERROR, message=str(e), code=ErrorCode.UNKNOWN_COLLECTION)
            return
        req.kind, req.generation = stats.kind, self.collections.generation(req.collection)
        if stats.kind == "ivf":
            req.num_units_total = min(req.nprobe or stats.default_nprobe, stats.num_units)
        else:
            req.num_units_total = stats.num_units
            req.seen = np.zeros(stats.num_units, dtype=bool)
        req.est_unit_cost = stats.unit_cost
        waiting = len(self.requests) - len(self.joined)
        if waiting > self.config.max_num_waiting:
            self._finish(req, RequestStatus.FINISHED_REJECTED, message="overloaded: admission queue is full",
                         code=ErrorCode.OVERLOADED)
        elif req.deadline is not None and req.deadline <= now:
            self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline already passed at admission",
                         code=ErrorCode.DEADLINE_EXCEEDED)
        elif self._clearly_infeasible(req, now):
            self._finish(req, RequestStatus.FINISHED_REJECTED, message="deadline infeasible at admission",
                         code=ErrorCode.DEADLINE_EXCEEDED)
        elif req.num_units_total == 0:
            self._finish(req, RequestStatus.FINISHED_COMPLETE)  # empty collection
        else:
            self.waiting.push(req, req.admission_seq, now)

    def _clearly_infeasible(self, req: SearchRequest, now: float) -> bool:
        if self.config.deadline_policy != "reject" or req.deadline is None or not self.scan_rate:
            return False
        return now + self.iteration_s + req.remaining_cost() / self.scan_rate > req.deadline

    def abort(self, request_id: str) -> bool:
        """Abort an active request; its runner state is freed at the next iteration."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        self._finish(req, RequestStatus.FINISHED_ABORTED, message="aborted", code=ErrorCode.CLIENT_GONE)
        return True

    def pop_finished(self) -> list[Finished]:
        """Requests finished outside an iteration (rejections, aborts, expiries)."""
        out, self._finished = self._finished, []
        return out

    # NOTE: the cost model owns these; the scheduler reads them every iteration.
    budget_vectors = property(lambda self: self.cost.budget_vectors, doc="Budget of the next iteration.")
    scan_rate = property(lambda self: self.cost.scan_rate, doc="Fitted (query, vector) pairs per second.")
    iteration_s = property(lambda self: self.cost.iteration_s, doc="Smoothed observed iteration duration.")
    read_weight = property(lambda self: self.cost.read_weight, doc="Fitted cost of a read per pair scan.")

    @property
    def has_work(self) -> bool:
        return bool(self.requests or self._to_free)

    # ------------------------------------------------------------------ one iteration
    def schedule(self) -> IterationPlan:
        """Plan the next iteration: work and list claims in priority order, then riders."""
        now = self.clock()
        self.iteration += 1
        self.flat.begin()
        free, self._to_free = tuple(self._to_free), []
        # NOTE: admission order, not the set's (string-hash) order: plans reproducible run to run.
        running = sorted((self.requests[rid] for rid in self.joined), key=attrgetter("admission_seq"))
        # NOTE: a partial answer leaves with the runner's output, one iteration from now;
        # scanning once more first would return it a second iteration later.
        finish_partial = [r.request_id for r in running if r.deadline is not None
                          and now + 2 * self.iteration_s >= r.deadline]
        for req in self.waiting.expiring(now + self.iteration_s):  # resolved before this iteration runs
            self._finish(req, RequestStatus.FINISHED_PARTIAL, message="deadline reached before any scan")
        closing = set(finish_partial)
        self.waiting.refresh(now)
        keyed = [((self.waiting.key(r, now), r.admission_seq), r) for r in running if r.request_id not in closing]
        keyed.sort(key=itemgetter(0))
        keyed = [(key, r) for (key, _), r in heapq.merge(keyed, self.waiting.head(self.config.max_num_waiting_considered),
                                                           key=itemgetter(0))]
        self._overloaded = False
        if self.config.stage_aware and self.scan_rate and self._saturated:
            # pair equivalents per second at the current budget; results due 2 iterations out
            ordered = demote_hopeless(keyed, self.budget_vectors / max(self.iteration_s, 1e-6),
                                      now + 2 * self.iteration_s)
            self._overloaded, keyed = ordered is not keyed, ordered
        candidates = [r for _, r in keyed]
        budget_left, planned = float(self.budget_vectors), 0.0
        work: list[ScanWork] = []
        new: list[NewRequest] = []
        lists, failed = open_list_windows(candidates, self.collections, self.tables, self.read_weight)
        for req, message in failed:
            self._fail(req, message)
        num_joined = len(self.joined) - len(closing)
        forced = exhausted = False
        for (aged, *_), req in keyed:
            joined = req.request_id in self.joined
            if budget_left <= 0:
                exhausted = True
                if num_joined >= self.config.max_num_running:
                    break  # nothing left to plan: no budget, no free running slot
                if joined or req.kind == "flat" or self.urgency.urgent(req, now, aged):
                    continue  # NOTE: a full budget still lets newcomers join (free: they only get assigned)
            first = not work and planned == 0
            if req.assigned:  # joined IVF: claim lists best-first; riders join below
                window = lists.get(req.collection)
                if window is None or (window.cut and not first):
                    continue  # NOTE: once the budget bound a window, lower priorities only ride
                if self._saturated and not first and not self.urgency.urgent(req, now, aged):
                    continue  # NOTE: under load a request with slack rides (and gets the fill)
                charge = window.claim(req, budget_left, force=first)
                if charge is None:
                    continue
                forced |= first and charge > budget_left
                planned += charge
                budget_left -= charge
                continue
            # NOTE: decode-stage and tight-deadline work (a cache lookup) may exceed
            # max_num_running: otherwise riders holding every slot would invert priorities
            # or run out a deadline only a few iterations long.  Aged work waits for a
            # slot: admitting a whole aged backlog would make the running set (and every
            # plan) as large as the backlog.
            if (not joined and num_joined >= self.config.max_num_running and req.stage is not Stage.DECODE
                    and not self.urgency.tight(req)):
                continue
            planned_item = self._plan_item(req, budget_left, first, now, aged)
            if planned_item is None:
                exhausted = True  # it did not fit
                continue
            item, cost = planned_item
            forced |= first and cost > budget_left
            work.append(item)
            planned += cost
            budget_left -= cost
            if not joined:
                num_joined += 1
                new.append(NewRequest(req.request_id, req.collection, req.query, req.k, req.num_units_total))
        rides = []
        for window in lists.values():
            charge = window.fill(budget_left)
            planned += charge
            budget_left -= charge
            ride = window.work()
            if ride is not None:
                rides.append(ride)
            exhausted |= window.cut
        rank = {r.request_id: i for i, r in enumerate(candidates)}
        work.sort(key=lambda w: rank[w.request_id])
        # NOTE: a join-only newcomer holds runner state but has not started scanning.
        scheduled = {w.request_id for w in work if w.max_vectors != 0}
        for ride in rides:
            scheduled.update(ride.request_ids)
        self._mark_scheduled(candidates, scheduled, now, exhausted)
        # NOTE: "under load" needs both a binding budget and iterations that actually run
        # long: at light load the cost fit extrapolates from tiny iterations, and a budget
        # it underestimates must not make requests with slack wait for company.
        self._saturated = exhausted and self.iteration_s >= 0.5 * self.config.target_iteration_ms / 1e3
        return IterationPlan(self.iteration, tuple(new), tuple(work), tuple(finish_partial), free,
                             self.budget_vectors, int(math.ceil(planned)), forced, tuple(rides),
                             tuple(rank[w.request_id] for w in work))

    def _mark_scheduled(self, candidates: list[SearchRequest], scheduled: set[str], now: float,
                        exhausted: bool) -> None:
        for req in candidates:
            if req.request_id in scheduled:
                req.status = RequestStatus.RUNNING
                if req.first_scan_time is None:
                    req.first_scan_time = now
            elif req.status is RequestStatus.RUNNING and req.request_id in self.joined:
                # NOTE: only a request displaced by a full budget counts as preempted; one
                # waiting for its lists to come round with other riders is just deferred.
                req.status = RequestStatus.PREEMPTED
                if exhausted:
                    req.num_preemptions += 1
                    self.num_preemptions += 1

    def _early(self, req: SearchRequest, aged: int) -> bool:
        """Whether a newcomer's lists go first in the scan and its result leaves early.

        Its lists are scanned first, with every rider of them, and its result leaves before
        the rest of the scan; under overload throughput comes first (no split).
        """
        return self.config.stage_aware and not self._overloaded and self.urgency.cannot_wait(req, aged)

    def _plan_item(self, req: SearchRequest, budget_left: float, first: bool, now: float,
                   aged: int) -> tuple[ScanWork, float] | None:
        """Work of a flat request, or of an IVF newcomer (its probes are not known yet)."""
        if req.kind == "flat":
            stats = self._stats_or_fail(req)
            return None if stats is None else self.flat.plan(req, stats, budget_left, first)
        if (self._saturated or budget_left <= 0) and not self.urgency.scans_on_join(req, now, aged):
            # NOTE: under load a request with slack joins only (assigned now, riding along
            # from the next iteration); at light load it scans at once, as nothing is gained
            # by waiting for company.
            return ScanWork(req.request_id, req.collection, max_vectors=0), 0.0
        per_vector = 1 + self.read_weight  # NOTE: a newcomer reads its lists alone
        if not first and budget_left < req.est_unit_cost * per_vector:
            return None
        # The cap is the size-biased estimate: larger lists finish next iteration; work that
        # cannot wait reserves decode_cap_factor x the estimate.
        factor = self.config.decode_cap_factor if self.urgency.cannot_wait(req, aged) else 1.0
        cap = int(min(budget_left / per_vector, math.ceil(req.remaining_cost() * factor) + 1))
        # NOTE: the most urgent item always progresses (>= 1 probe even past its cap), so
        # it is charged the worst case of one probe: the budget holds for the rest.
        charge = cap * per_vector
        if first:
            stats = self._stats_or_fail(req)
            if stats is None:
                return None
            charge = max(cap, stats.max_unit_cost) * per_vector
        return ScanWork(req.request_id, req.collection, max_vectors=cap, returns_result=True,
                        allow_overshoot=first, early=self._early(req, aged)), charge

    def _stats_or_fail(self, req: SearchRequest) -> CollectionStats | None:
        """The collection's stats, or ``None`` after failing ``req`` if it was dropped."""
        try:
            return self.collections.stats(req.collection)
        except UnknownCollectionError as e:
            self._fail(req, str(e))
            return None

    def update_from_output(self, plan: IterationPlan, out: RunnerOutput) -> list[Finished]:
        """Apply the runner's output; return every request that finished."""
        for w in plan.work:
            req = self.requests.get(w.request_id)
            if req is None:  # aborted while the iteration ran; the runner frees it next time
                self._to_free.append(w.request_id)
                continue
            self.joined.add(req.request_id)
            self.waiting.remove(req.request_id)
            if w.request_id in out.errors:
                self._fail(req, out.errors[w.request_id])
                continue
            if req.kind == "ivf" and not req.assigned:  # an IVF newcomer: its probes are known now
                req.attach(self.tables[req.collection], out.unit_ids[req.request_id],
                           out.unit_costs[req.request_id], out.units_end[req.request_id])
            else:
                req.mark_seen(w.units)
            req.count_iteration(out.vectors_scanned.get(req.request_id, 0))
            if w.request_id in out.results:
                assert req.num_units_done == req.num_units_total, f"{req.request_id}: result before completion"
                self._finish(req, RequestStatus.FINISHED_COMPLETE, *out.results[w.request_id])
            else:
                assert req.num_units_done < req.num_units_total, f"{req.request_id}: complete without a result"
        for ride in plan.rides:
            self._update_ride(ride, out)
        for rid in plan.finish_partial:
            req = self.requests.get(rid)
            if req is not None:
                scores, ids = out.results.get(rid, (None, None))
                self._finish(req, RequestStatus.FINISHED_PARTIAL, scores, ids, message="deadline reached")
        self.flat.advance()
        self.cost.observe(plan, out, self.iteration, saturated=self._saturated)
        self._check_invariants(plan)
        return self.pop_finished()

    def _update_ride(self, ride: RideWork, out: RunnerOutput) -> None:
        """Apply the scans of one collection's riders: one scatter into its progress table."""
        reqs = [self.requests.get(rid) for rid in ride.request_ids]
        vectors = out.ride_vectors_scanned[ride.collection]  # per rider of the plan's ride
        keep = [r is not None and r.request_id not in out.errors for r in reqs]
        if not all(keep):
            for r, rid in zip(reqs, ride.request_ids):
                if r is None:  # aborted while the iteration ran; the runner frees it next time
                    self._to_free.append(rid)
                elif rid in out.errors:
                    self._fail(r, out.errors[rid])
            mask = np.array(keep, dtype=bool)
            ride, vectors, reqs = ride.subset(mask), vectors[mask], [r for r, k in zip(reqs, keep) if k]
        rows = np.fromiter((r.progress_row for r in reqs), dtype=np.int64, count=len(reqs))
        self.tables[ride.collection].apply(rows, ride.ptr, ride.units, ride.completes, vectors)
        for req, done in zip(reqs, ride.completes.tolist()):
            if done:
                self._finish(req, RequestStatus.FINISHED_COMPLETE, *out.results[req.request_id])

    # ------------------------------------------------------------------ internals
    def _fail(self, req: SearchRequest, message: str) -> None:
        gone = self.collections.generation(req.collection) != req.generation
        self._finish(req, RequestStatus.FINISHED_ERROR, message=message,
                     code=ErrorCode.UNKNOWN_COLLECTION if gone else ErrorCode.INTERNAL)

    def _finish(self, req: SearchRequest, status: RequestStatus, scores=None, ids=None, message: str = "",
                code: ErrorCode | None = None) -> None:
        req.status, req.code = status, code
        req.finish_time = self.clock()
        req.message = message
        req.detach()
        del self.requests[req.request_id]
        self.waiting.remove(req.request_id)
        if req.request_id in self.joined:
            self.joined.discard(req.request_id)
            if status is not RequestStatus.FINISHED_COMPLETE and status is not RequestStatus.FINISHED_PARTIAL:
                self._to_free.append(req.request_id)
        self.num_finished += 1
        self._finished.append((req, scores, ids))

    def _check_invariants(self, plan: IterationPlan) -> None:
        assert plan.planned_vectors <= plan.budget_vectors or plan.forced, "budget exceeded"
        assert self.requests.keys() >= self.joined, "runner state for a finished request"
        assert len(self.waiting) + len(self.joined) == len(self.requests), "a request is neither waiting nor joined"
        assert len(self.requests) + self.num_finished == self.num_admitted, "a request was lost"
