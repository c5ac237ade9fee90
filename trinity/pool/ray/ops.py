"""Operations over replicas: health (every replica's), Prometheus metrics (each replica's series
labelled ``replica="i"``, plus the router's own), memory stats summed; semantic caches, each on one
home replica (picked by a hash of its name)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from trinity.pool.ray.asgi import Exchange
from trinity.pool.ray.links import STAGES, ReplicaDown, Replicas, json_exchange
from trinity.pool.ray.router import Router, body_of

__all__ = ["cache_home", "health", "list_caches", "merge_metrics", "metrics", "stats"]


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class RouterCollector(_Fixed):
    """The router's own series: requests in flight per replica and stage, failed replica calls."""

    def __init__(self, replicas: Replicas) -> None:
        super().__init__([])
        self.replicas = replicas

    def collect(self) -> Iterator[Metric]:
        inflight = GaugeMetricFamily("trinity_ray_inflight", "Requests the router has in flight per replica and "
                                     "stage", labels=["replica", "stage"])
        for i, row in enumerate(self.replicas.load()):
            for stage in STAGES:
                inflight.add_metric([str(i), stage], row[stage])
        failures = CounterMetricFamily("trinity_ray_replica_failures", "Replica calls that failed (dead, "
                                       "restarting, back pressure)")
        failures.add_metric([], self.replicas.failures)
        yield from (inflight, failures)


def merge_metrics(texts: dict[int, str]) -> bytes:
    """Every replica's exposition as one, each sample labelled with its replica."""
    families: dict[str, Metric] = {}
    for i, text in texts.items():
        for fam in text_string_to_metric_families(text):
            into = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
            into.samples += [s._replace(labels={**s.labels, "replica": str(i)}) for s in fam.samples]
    registry = CollectorRegistry()
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


async def metrics(router: Router, own: CollectorRegistry) -> bytes:
    got = await router.gather(range(len(router.replicas)), "GET", "/metrics", timeout=5.0)
    texts = {i: ex.body.decode() for i, ex in got.items() if ex is not None and ex.status == 200}
    return merge_metrics(texts) + generate_latest(own)


async def health(router: Router) -> Exchange:
    rows: list[dict[str, Any]] = []
    for i in range(len(router.replicas)):
        try:
            load = await router.replicas.call(i, "load", timeout=2.0)
            rows.append({"replica": i, "up": True, "inflight": load["inflight"]})
        except ReplicaDown as exc:
            rows.append({"replica": i, "up": False, "error": str(exc)})
    up = sum(r["up"] for r in rows)
    status = "ok" if up == len(rows) else ("degraded" if up else "down")
    return json_exchange({"status": status, "replicas": rows, "collections": len(router.placements)},
                         200 if up else 503)


async def stats(router: Router) -> Exchange:
    got = await router.gather(range(len(router.replicas)), "GET", "/v1/stats")
    per = {str(i): body_of(ex) if ex is not None and ex.status == 200 else None for i, ex in got.items()}
    live = [s for s in per.values() if s is not None]
    return json_exchange({key: sum(s[key] for s in live) for key in ("rss_bytes", "vector_bytes", "index_bytes")}
                         | {"replicas": per})


def cache_home(router: Router, name: str) -> int:
    return zlib.crc32(name.encode()) % len(router.replicas)


def cache_name(raw: bytes) -> str | None:
    try:
        name = json.loads(raw).get("name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


async def list_caches(router: Router) -> Exchange:
    got = await router.gather(range(len(router.replicas)), "GET", "/v1/caches")
    caches = [c for ex in got.values() if ex is not None and ex.status == 200 for c in body_of(ex)["caches"]]
    return json_exchange({"caches": caches})
