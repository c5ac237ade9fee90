"""Urgency: which work cannot wait for company (stage-aware policy predicates).

Under load the scheduler lets requests with slack ride along on lists read for others
(sharing reads) and lets urgent ones claim lists (or scan on joining) at once.  These
predicates decide which is which, from a request's stage, deadline window and remaining
work, and from the iteration cost model's scan rate and iteration time.
"""

from __future__ import annotations

import math

from trinity.engine.config import SchedulerConfig
from trinity.engine.cost_model import IterationCostModel
from trinity.engine.request import SearchRequest, Stage

class Urgency:
    """Stage-aware predicates over one scheduler's config and cost model."""

    def __init__(self, config: SchedulerConfig, cost: IterationCostModel) -> None:
        self.config, self.cost = config, cost

    def urgent(self, req: SearchRequest, now: float, aged: int) -> bool:
        """Whether ``req`` scans (claims) now even under load, rather than riding along.

        Urgent: FIFO mode, decode-level, no deadline, a tight deadline window, or less than
        ``urgent_share`` of it (or of what its remaining work needs) left.
        """
        if not self.config.stage_aware or aged == 0:
            return True  # FIFO mode and decode-level work never wait for company
        if req.deadline is None:
            # NOTE: without a deadline there is no slack to spend waiting for company: it
            # claims in priority order (virtual deadline, aging).  Riding-only would leave
            # it until aging lifts it to decode level, and then it would delay decodes.
            return True
        need = req.remaining_cost() / self.cost.scan_rate if self.cost.scan_rate else 0.0
        left, window = req.deadline - now, req.deadline - req.arrival_time
        return self.tight(req) or left <= max(self.config.urgent_share * window, 4 * self.cost.iteration_s + 2 * need)

    def scans_on_join(self, req: SearchRequest, now: float, aged: int) -> bool:
        """Whether an IVF newcomer scans in the iteration it joins even under load (reading
        its lists alone) rather than joining only and riding along from the next one.

        Aging lifts priority, not urgency (benchmarks/README.md, "Engine design notes").
        """
        if req.stage is Stage.DECODE or not self.config.stage_aware:
            return True
        return self.urgent(req, now, max(aged, 1))

    def cannot_wait(self, req: SearchRequest, aged: int) -> bool:
        """Decode-level or tight-deadline work: one more iteration would double its latency."""
        return aged == 0 or self.tight(req)

    def tight(self, req: SearchRequest) -> bool:
        """A deadline window only a few iterations long (a cache lookup): it cannot afford to wait."""
        window = math.inf if req.deadline is None else req.deadline - req.arrival_time
        return window <= self.config.tight_deadline_iterations * self.cost.iteration_s
