"""The scheduler's output half: the runner's results in, finished requests out.

Every request leaves through :meth:`Completion._finish` -- complete, partial, aborted,
rejected or failed -- which copies its counters out of the progress table, frees its slots
and queues it for ``pop_finished``: one result path.
"""

from __future__ import annotations

import numpy as np

from trinity.engine.cost_model import IterationSample
from trinity.engine.plan import IterationPlan, RideWork, RunnerOutput
from trinity.engine.request import RequestStatus, SearchRequest
from trinity.errors import ErrorCode

Finished = tuple[SearchRequest, "np.ndarray | None", "np.ndarray | None"]  # (request, scores, ids)


class Completion:
    """The :class:`~trinity.engine.scheduler.Scheduler`'s output half (a mixin: it uses the
    scheduler's requests, slots, cost model and counters)."""

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
        vectors = out.vectors_scanned[ride.collection]
        early = out.converged.get(ride.collection, np.zeros(len(ride.request_ids), dtype=bool))
        alive = np.fromiter(map(self.requests.__contains__, ride.request_ids), bool, len(ride.request_ids))
        if not alive.all():  # failed by the runner's errors, or aborted, just now
            ride, vectors, early = ride.subset(alive), vectors[alive], early[alive]
            if not ride.request_ids:
                return
        table = self.requests[ride.request_ids[0]]._table
        table.apply(ride.slots, ride.ptr, ride.units, ride.completes, vectors, self.iteration)
        for i in np.flatnonzero(ride.completes | early).tolist():
            rid = ride.request_ids[i]
            self._finish(self.requests[rid], RequestStatus.FINISHED_COMPLETE, *out.results[rid])

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
        if req.request_slot >= 0:
            self.slots.release(req.request_slot)
            req.request_slot = -1
        self.num_finished += 1
        self._finished.append((req, scores, ids))

    def _check_invariants(self) -> None:
        s = self.slots
        assert s.num_active == len(self.requests), "a request is active without a slot, or the reverse"
        assert s.num_joined <= s.num_active, "runner state for a finished request"
        assert len(self.requests) + self.num_finished == self.num_admitted, "a request was lost"
