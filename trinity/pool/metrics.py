"""The pool's own Prometheus series (the engine's live in the same registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["HttpMetrics", "StoreCollector"]

_HTTP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("trinity_http_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=registry)
        self.latency = Histogram("trinity_http_request_seconds", "HTTP handling time by route",
                                 ["method", "route"], buckets=_HTTP_BUCKETS, registry=registry)
        self.disconnects = Counter("trinity_http_disconnects_total", "Requests whose client left before the "
                                   "answer (their searches are aborted)", registry=registry)


class StoreCollector:
    """Scrape-time gauges and counters read from the collections (no bookkeeping on writes)."""

    def __init__(self, collections: Callable[[], Mapping[str, Any]]) -> None:
        self.collections = collections

    def describe(self) -> list[Metric]:  # NOTE: empty, so that registering does not call collect()
        return []

    def collect(self) -> Iterator[Metric]:
        vectors = GaugeMetricFamily("trinity_collection_vectors", "Vectors per collection", labels=["collection"])
        payload = GaugeMetricFamily("trinity_collection_payload_bytes", "Payload JSON bytes", labels=["collection"])
        fsyncs = CounterMetricFamily("trinity_wal_fsyncs", "WAL fsyncs (group commits)", labels=["collection"])
        records = CounterMetricFamily("trinity_wal_synced_records", "WAL records made durable", labels=["collection"])
        for name, coll in list(self.collections().items()):
            vectors.add_metric([name], coll.index.ntotal)
            payload.add_metric([name], coll.payload_bytes)
            fsyncs.add_metric([name], coll.wal.num_fsyncs)
            records.add_metric([name], coll.wal.num_synced_records)
        yield from (vectors, payload, fsyncs, records)
