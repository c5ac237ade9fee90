"""Prometheus metrics of one engine (own registry, so several engines can coexist)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from trinity.engine.request import RequestStatus, SearchRequest, Stage

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.012, 0.016, 0.02, 0.03, 0.05,
                      0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_ITERATION_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.012, 0.02, 0.05, 0.1)


class EngineMetrics:
    """Per-stage latency, queue depth, iteration time and scan volume, preemptions,
    partial results, rejections and deadline misses."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.latency = Histogram("trinity_search_latency_seconds", "Arrival to result, per stage",
                                 ["stage"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.queue_time = Histogram("trinity_search_queue_seconds", "Arrival to first scan, per stage",
                                    ["stage"], buckets=_LATENCY_BUCKETS_S, registry=r)
        self.finished = Counter("trinity_search_finished_total", "Finished requests by stage and status",
                                ["stage", "status"], registry=r)
        self.deadline_misses = Counter("trinity_search_deadline_misses_total",
                                       "Results delivered after their deadline", ["stage"], registry=r)
        self.queue_depth = Gauge("trinity_engine_queue_depth", "Active requests by stage and state",
                                 ["stage", "state"], registry=r)
        self.iteration_time = Histogram("trinity_engine_iteration_seconds", "Duration of one iteration",
                                        buckets=_ITERATION_BUCKETS_S, registry=r)
        self.vectors_scanned = Counter("trinity_engine_vectors_scanned_total", "Query-vector pairs scanned",
                                       registry=r)
        self.vectors_read = Counter("trinity_engine_vectors_read_total",
                                    "Distinct vectors read (one read of a list serves all its riders)", registry=r)
        self.iteration_vectors = Histogram("trinity_engine_iteration_vectors", "Vectors scanned per iteration",
                                           buckets=(1e3, 4e3, 1.6e4, 6.4e4, 2.56e5, 1e6, 4e6), registry=r)
        self.budget = Gauge("trinity_engine_budget_vectors", "Current per-iteration scan budget", registry=r)
        self.preemptions = Counter("trinity_engine_preemptions_total", "Requests deferred at an iteration boundary",
                                   registry=r)
        self.iterations = Counter("trinity_engine_iterations_total", "Iterations run", registry=r)
        self.admission_rejected = Counter("trinity_engine_admission_rejected_total",
                                          "Requests refused at submission by sojourn time", ["stage"], registry=r)

        # NOTE: label lookups take a lock and a dict probe; resolve the per-stage children
        # once, since every finished request touches them.
        self._stage_latency = {st: self.latency.labels(st.name.lower()) for st in Stage}
        self._stage_queue = {st: self.queue_time.labels(st.name.lower()) for st in Stage}
        self._stage_misses = {st: self.deadline_misses.labels(st.name.lower()) for st in Stage}
        self._finished_children: dict[tuple[Stage, RequestStatus], object] = {}

    def observe_iteration(self, outs: list, budget: int, num_preempted: int) -> None:
        """One iteration that ran ``outs`` (its parts' RunnerOutputs)."""
        scanned = sum(out.num_vectors_scanned for out in outs)
        self.iterations.inc()
        self.iteration_time.observe(sum(out.duration_s for out in outs))
        self.vectors_scanned.inc(scanned)
        self.vectors_read.inc(sum(out.vectors_read for out in outs))
        self.iteration_vectors.observe(scanned)
        self.budget.set(budget)
        self.preemptions.inc(num_preempted)

    def observe_finished(self, req: SearchRequest, deadline_missed: bool) -> None:
        key = (req.stage, req.status)
        child = self._finished_children.get(key)
        if child is None:
            child = self._finished_children[key] = self.finished.labels(req.stage.name.lower(), req.status.value)
        child.inc()
        if req.status in (RequestStatus.FINISHED_COMPLETE, RequestStatus.FINISHED_PARTIAL):
            self._stage_latency[req.stage].observe(req.finish_time - req.arrival_time)
        if req.first_scan_time is not None:
            self._stage_queue[req.stage].observe(req.first_scan_time - req.arrival_time)
        if deadline_missed:
            self._stage_misses[req.stage].inc()

    def bind_queue_depth(self, active: Callable[[], list[SearchRequest]]) -> None:
        """Compute queue depths at scrape time from ``active()`` (no per-iteration cost)."""
        for stage in Stage:
            for state in (RequestStatus.WAITING, RequestStatus.RUNNING, RequestStatus.PREEMPTED):
                self.queue_depth.labels(stage.name.lower(), state.value).set_function(
                    lambda stage=stage, state=state: sum(
                        1 for r in active() if r.stage is stage and r.status is state))
