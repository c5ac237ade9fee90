"""Prometheus metrics of the gateway (``trinity_gateway_*``), in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["GatewayMetrics"]

disable_created_metrics()

_LAT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    """All gateway series. ``phase`` values: queue, embed, cache_lookup, retrieval_prefill,
    retrieval_decode, prefill, decode, total. An LLM instance is labelled ``upstream`` (its URL):
    ``instance`` is the label Prometheus itself puts on every scraped series."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("trinity_gateway_requests", "Finished requests by outcome "
                                "(ok, cache_hit, degraded, error, rejected, timeout, cancelled)", ["endpoint", "outcome"],
                                registry=r)
        self.active = Gauge("trinity_gateway_requests_active", "Requests being served", registry=r)
        self.phase = Histogram("trinity_gateway_phase_seconds", "Per-request time spent in each phase", ["phase"],
                               buckets=_LAT, registry=r)
        self.retrieval = Histogram(
            "trinity_gateway_retrieval_seconds", "One retrieval that returned passages, by stage (prefill, decode): "
            "from its first step (embedding the query) to the passages in hand = embed + cache + search + network",
            ["stage"], buckets=_LAT, registry=r)
        self.retrieval_part = Histogram(
            "trinity_gateway_retrieval_part_seconds", "The parts of trinity_gateway_retrieval_seconds: embed "
            "(gateway or embedding server), cache (semantic-cache lookups on the way; none at decode), search "
            "(the pool's queue + scan), network (HTTP, JSON and routing between gateway and pool)",
            ["stage", "part"], buckets=_LAT, registry=r)
        self.ttft = Histogram("trinity_gateway_ttft_seconds", "Arrival to first token sent", buckets=_LAT, registry=r)
        self.itl = Histogram("trinity_gateway_itl_seconds", "Gap between tokens sent", buckets=_LAT, registry=r)
        self.tpot = Histogram("trinity_gateway_tpot_seconds", "(e2e - ttft) / (tokens - 1) per request",
                              buckets=_LAT, registry=r)
        self.retrievals = Counter("trinity_gateway_retrievals", "Pool searches by stage and outcome "
                                  "(ok, partial, timeout, unavailable, error, skipped)", ["stage", "outcome"],
                                  registry=r)
        self.cache_lookups = Counter("trinity_gateway_cache_lookups", "Semantic cache lookups",
                                     ["cache", "result"], registry=r)
        self.cache_inserts = Counter("trinity_gateway_cache_inserts", "Semantic cache inserts by result",
                                     ["cache", "result"], registry=r)
        self.legs = Counter("trinity_gateway_legs", "Upstream LLM legs (prefill, decode, continuation)",
                            ["kind"], registry=r)
        self.no_kv_transfer = Counter(
            "trinity_gateway_decode_without_kv_transfer",
            "Prefill responses without kv_transfer_params (the decode instance re-prefills)",
            ["prefill_instance"], registry=r)
        self.upstream_errors = Counter("trinity_gateway_upstream_errors", "Failed LLM legs",
                                       ["phase", "upstream"], registry=r)
        self.inflight = Gauge("trinity_gateway_upstream_inflight", "Legs in flight per instance",
                              ["role", "upstream"], registry=r)
        self.degraded = Counter("trinity_gateway_degraded", "Requests answered with less retrieval than asked",
                                ["reason"], registry=r)
        self.disconnects = Counter("trinity_gateway_client_disconnects",
                                   "Clients that left before the answer ended (upstream work aborted)", registry=r)
        self.tokens = Counter("trinity_gateway_generated_tokens", "Completion tokens sent to clients", registry=r)
        self.deadline_exceeded = Counter("trinity_gateway_deadline_exceeded", "Requests failed (504) at their "
                                         "SLO-derived deadline, by leg (queue, prefill, decode, continuation)",
                                         ["leg"], registry=r)
