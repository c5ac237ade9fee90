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

import math
import time
from collections.abc import Callable

import numpy as np

from trinity.engine.collections import Collections
from trinity.engine.config import SchedulerConfig
from trinity.engine.cost_model import IterationCostModel, IterationSample
from trinity.engine.completion import Completion, Finished
from trinity.engine.intake import Intake
from trinity.engine.overload import compile_overload, demote_hopeless
from trinity.engine.plan import Expiry, IterationPlan, NewRequest, RideWork
from trinity.engine.progress import ProgressTable, compile_progress
from trinity.engine.request import RequestStatus, SearchRequest
from trinity.engine.slots import RequestSlots
from trinity.engine.window import Claims, Riders, Window, compile_window
from trinity.index.warmup import warmup

__all__ = ["Finished", "Scheduler", "compile_kernels"]


def compile_kernels() -> None:
    """Compile the index's and the scheduler's CPU kernels ahead of the first iteration."""
    for compile_ in (warmup, compile_window, compile_overload, compile_progress):
        compile_()


class Scheduler(Intake, Completion):
    """Owns request progress and policy; never touches vectors."""

    def __init__(self, config: SchedulerConfig, collections: Collections,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.collections = collections
        self.clock = clock
        self.requests: dict[str, SearchRequest] = {}  # active, in admission order
        self.slots = RequestSlots(config.aging_s, config.urgent_deadline_ms / 1e3, config.stage_aware)
        self.tables: dict[str, ProgressTable] = {}  # per collection (of its current generation)
        self._by_tid: dict[int, ProgressTable] = {}  # the same tables by id (``slots.table``)
        self._next_tid = 0
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

    # NOTE: the cost model owns these; the scheduler reads them every iteration.
    budget_vectors = property(lambda self: self.cost.budget_vectors, doc="Budget of the next iteration.")
    scan_rate = property(lambda self: self.cost.scan_rate, doc="Fitted (query, vector) pairs per second.")
    iteration_s = property(lambda self: self.cost.iteration_s, doc="Smoothed observed iteration duration.")
    read_weight = property(lambda self: self.cost.read_weight, doc="Fitted cost of a read per pair scan.")

    @property
    def has_work(self) -> bool:
        return bool(self.requests)

    @property
    def joined(self) -> set[str]:
        """Ids of the requests the runner holds state for (diagnostics, tests)."""
        s = self.slots
        return {s.reqs[i].request_id for i in np.flatnonzero(s.joined).tolist()}

    def _remaining(self, slots: np.ndarray) -> np.ndarray:
        """Vectors each request still has to scan (one gather per collection)."""
        out = np.zeros(slots.size, dtype=np.int64)
        tids = self.slots.table[slots]
        for tid in np.unique(tids).tolist():
            sel = tids == tid
            out[sel] = self._by_tid[tid].remaining[self.slots.row[slots[sel]]]
        return out

    # ------------------------------------------------------------------ one iteration
    def schedule(self) -> IterationPlan:
        """Plan the next iteration: claims in priority order, then the fill."""
        now = self._started = self.clock()
        self.iteration += 1
        self._expire_waiting(now)
        order = self.slots.order(now, self.config.max_num_waiting_considered)
        if self.config.stage_aware and self.scan_rate and self._saturated:
            rate = self.budget_vectors / max(self.iteration_s, 1e-6)
            order = demote_hopeless(order, self.slots.aged(order, now), self._remaining(order),
                                    self.slots.deadline[order], rate, now + 2 * self.iteration_s)
        cand = self._admissible(order)
        window, closing = self._open_window(cand)
        planned, forced = window.plan(self._claims(cand, window.groups, now), self.budget_vectors)
        head_rides, rides = window.work()
        exhausted = window.exhausted
        new = self._mark_scheduled(cand, head_rides + rides, now, exhausted)
        # NOTE: "under load" needs a binding budget and iterations that actually run long: at
        # light load the fit extrapolates from tiny iterations and must not make slack wait.
        self._saturated = exhausted and self.iteration_s >= 0.5 * self.config.target_iteration_ms / 1e3
        expiries = self._closing(cand, closing, now + 2 * self.iteration_s)
        budget, total = self.budget_vectors, int(math.ceil(planned))
        assert total <= budget or forced, "budget exceeded"
        if not head_rides or not (rides or expiries):
            return IterationPlan(self.iteration, new, expiries, budget, total, forced, tuple(head_rides + rides))
        head = IterationPlan(self.iteration, new, (), budget, 0, False, tuple(head_rides), is_head=True)
        return IterationPlan(self.iteration, (), expiries, budget, total, forced, tuple(rides), head)

    def _expire_waiting(self, now: float) -> None:
        """Finish the waiting requests whose answer cannot be out before their deadline: by
        the end of the next iteration, or -- decode level, which runs first, in the head --
        by the end of their own scan."""
        s = self.slots
        waiting = s.waiting()
        due = waiting[s.deadline[waiting] <= now + self.iteration_s]
        if due.size and self.config.stage_aware and self.scan_rate:
            own = now + self._remaining(due) / self.scan_rate
            due = due[(s.level[due] > 0) | (s.deadline[due] <= own)]
        for slot in due[np.lexsort((s.seq[due], s.deadline[due]))].tolist():
            self._finish(s.reqs[slot], RequestStatus.FINISHED_PARTIAL, message="deadline reached before any scan")

    def _closing(self, cand: np.ndarray, closing: np.ndarray, horizon: float) -> tuple[Expiry, ...]:
        """Requests whose deadline falls before the next iteration could end (and those left
        without units): they leave with this one -- complete, or partial with their best so
        far (``Expiry``)."""
        s = self.slots
        due = cand[s.active[cand] & (s.deadline[cand] <= horizon)]
        if closing.size:
            due = np.concatenate((due, np.setdiff1d(closing, due)))
        out = []
        for slot in due.tolist():
            req = s.reqs[slot]
            if s.joined[slot]:
                out.append(Expiry(req.request_id, req.collection, req.slot))
            else:
                self._finish(req, RequestStatus.FINISHED_PARTIAL, message="deadline reached before any scan")
        return tuple(out)

    def _admissible(self, order: np.ndarray) -> np.ndarray:
        """The running requests and the waiting ones that may join: decode level always
        (riders holding every slot must not invert priorities), others while a slot is free."""
        s = self.slots
        joined = s.joined[order]
        free = self.config.max_num_running - s.num_joined
        keep = joined | (s.level[order] == 0) | (np.cumsum(~joined) <= free)
        return order if keep.all() else order[keep]

    def _open_window(self, cand: np.ndarray) -> tuple[Window, np.ndarray]:
        """The iteration's window over its candidates (``cand``, slots in priority order);
        requests on a collection that is gone fail, and those left without units by a flat
        collection that shrank close (returned: the joined ones leave with this iteration)."""
        s = self.slots
        tids = s.table[cand]
        uniq, first = np.unique(tids, return_index=True)
        groups, closing = [], []
        for tid in uniq[np.argsort(first)].tolist():
            table = self._by_tid.get(tid)
            if table is None:
                continue  # failed earlier in this pass
            if table.generation != self.collections.generation(table.name):
                self._fail_table(table.name)
                continue
            stats = self.collections.stats(table.name)
            ranks = np.flatnonzero(tids == tid)
            rows = s.row[cand[ranks]]
            if stats.kind == "flat" and table.skip_missing(rows, stats.unit_sizes.size):  # it shrank under its scans
                empty = (~table.seen[rows]).sum(axis=1) == 0
                for slot in cand[ranks[empty]].tolist():
                    if s.joined[slot]:
                        closing.append(slot)
                    else:
                        self._finish(s.reqs[slot], RequestStatus.FINISHED_PARTIAL,
                                     message="collection shrank before any scan")
                ranks, rows = ranks[~empty], rows[~empty]
            if ranks.size:
                ids = tuple(map(s.ids.__getitem__, cand[ranks].tolist()))
                groups.append(Riders(table.name, stats.unit_sizes, table, ids, rows, ranks,
                                     stats.kind == "flat" or not self._saturated))
        return Window(groups, self.read_weight), np.array(closing, dtype=np.int64)

    def _claims(self, cand: np.ndarray, groups: list[Riders], now: float) -> Claims:
        """How each candidate may claim.  *Urgent* ones claim even under load (rather than
        riding along): FIFO mode, decode level (by stage or deadline window; aging lifts
        priority, not urgency), no deadline (no slack to spend), or less than ``urgent_share``
        of the window left (at least 4 iterations plus twice its remaining scan)."""
        n, cfg, s = cand.size, self.config, self.slots
        window = np.full(n, -1, dtype=np.int64)
        remaining = np.zeros(n)
        for i, g in enumerate(groups):
            window[g.ranks] = i
            remaining[g.ranks] = g.table.remaining[g.slots]
        if not cfg.stage_aware:
            return Claims(window, np.ones(n, dtype=bool), np.zeros(n, dtype=bool))
        deadline = s.deadline[cand]
        span = deadline - s.arrival[cand]
        top = (span <= cfg.urgent_deadline_ms / 1e3) | (s.stage[cand] == 0)
        need = remaining / self.scan_rate if self.scan_rate else 0.0
        urgent = top | np.isinf(deadline) | (deadline - now <= np.maximum(cfg.urgent_share * span,
                                                                          4 * self.iteration_s + 2 * need))
        return Claims(window, urgent | (not self._saturated), top)

    def _mark_scheduled(self, cand: np.ndarray, rides: list[RideWork], now: float,
                        exhausted: bool) -> tuple[NewRequest, ...]:
        """Statuses after planning; newcomers with work join now (the runner builds their state)."""
        s = self.slots
        scheduled = np.zeros(cand.size, dtype=bool)
        for ride in rides:
            scheduled[ride.ranks] = True
        live = s.active[cand]
        was_running = s.running[cand]
        joining = cand[scheduled & ~s.joined[cand]]
        new = []
        for slot in joining.tolist():
            req = s.reqs[slot]
            new.append(NewRequest(req.request_id, req.collection, req.query, req.k, req.slot,
                                  req.nprobe if req.kind == "graph" else 0, req.search_width))
            req.first_scan_time = now
        s.joined[joining] = True
        s.num_joined += joining.size
        s.set_status(cand[scheduled & ~was_running], RequestStatus.RUNNING)
        # NOTE: only a request displaced by a full budget counts as preempted; one
        # waiting for its lists to come round with other riders is just deferred.
        preempted = cand[live & was_running & ~scheduled]
        s.set_status(preempted, RequestStatus.PREEMPTED)
        if exhausted:
            for slot in preempted.tolist():
                s.reqs[slot].num_preemptions += 1
            self.num_preemptions += preempted.size
        s.running[cand[live]] = scheduled[live]
        return tuple(new)
