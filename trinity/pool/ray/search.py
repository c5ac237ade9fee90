"""Searches over replicas, always answered by the deadline (plus ``deadline_grace_ms``).

Replicated: the least-loaded holder for the request's stage; if it fails, the next one with what
is left of the deadline; with none left, every query comes back partial and empty.  Sharded: every
shard with the same stage and deadline, top-k lists merged; a shard that is partial, fails or
runs late makes the merged answer partial (``fraction_scanned`` counts what was scanned).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from trinity.pool.ray.asgi import Exchange
from trinity.pool.ray.links import ReplicaDown, json_exchange, stage_index
from trinity.pool.ray.placement import Placement
from trinity.pool.ray.router import Router, body_of

__all__ = ["merge_results", "search"]


def _num_queries(data: dict[str, Any]) -> int:
    many = data.get("vectors") or data.get("texts")
    return len(many) if isinstance(many, list) else 1


def _empty(with_payloads: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"ids": [], "scores": [], "status": "partial", "partial": True, "fraction_scanned": 0.0,
                           "timings": {"queue_ms": 0.0, "engine_ms": 0.0}}
    if with_payloads:
        out["payloads"] = []
    return out


def _answer(results: list[dict[str, Any]], embed_ms: float, t0: float) -> Exchange:
    return json_exchange({"results": results, "timings": {"embed_ms": round(embed_ms, 3),
                                                          "total_ms": round((time.perf_counter() - t0) * 1e3, 3)}})


async def search(router: Router, name: str, p: Placement, raw: bytes) -> Exchange:
    t0 = time.perf_counter()
    try:
        data = json.loads(raw)
        stage = stage_index(data.get("stage", "prefill"))
        deadline_ms = float(data.get("deadline_ms") or router.default_deadline_ms(stage))
        if not 0 < deadline_ms <= 600_000:
            raise ValueError(deadline_ms)
    except (ValueError, TypeError, AttributeError):  # malformed: the pool's own answer says why
        return await router.read_one(router.holders(p), "POST", f"/v1/collections/{name}/search", raw)
    deadline = time.monotonic() + deadline_ms / 1e3
    grace = router.cfg.deadline_grace_ms / 1e3
    path = f"/v1/collections/{name}/search"
    if p.sharded:
        return await _fan_out(router, p, path, data, stage, deadline, grace, t0)
    tried: list[int] = []
    while (i := router.replicas.pick(router.holders(p), stage, exclude=tried)) is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        body = raw if not tried else json.dumps({**data, "deadline_ms": left * 1e3}).encode()
        try:
            ex = await router.replicas.http(i, "POST", path, body, timeout=left + grace, stage=stage)
        except ReplicaDown:
            tried.append(i)
            continue
        if ex.status != 503:  # NOTE: 503: shutting down or quarantined there; another copy may serve
            return ex
        tried.append(i)
    with_payloads = data.get("with_payloads", True) is not False
    return _answer([_empty(with_payloads) for _ in range(_num_queries(data))], 0.0, t0)


async def _fan_out(router: Router, p: Placement, path: str, data: dict[str, Any], stage: int, deadline: float,
                   grace: float, t0: float) -> Exchange:
    left = deadline - time.monotonic()
    body = json.dumps({**data, "deadline_ms": max(left, 1e-3) * 1e3}).encode()
    shards = router.holders(p)
    got = await asyncio.gather(*(router.replicas.http(i, "POST", path, body, timeout=left + grace, stage=stage)
                                 for i in shards), return_exceptions=True)
    answers: list[dict[str, Any] | None] = []
    for ex in got:
        if isinstance(ex, BaseException) and not isinstance(ex, ReplicaDown):
            raise ex
        if isinstance(ex, Exchange) and ex.status == 200:
            answers.append(body_of(ex))
        elif isinstance(ex, Exchange) and ex.status < 500:
            return ex  # NOTE: the request itself is wrong (every shard says the same)
        else:
            answers.append(None)
    with_payloads = data.get("with_payloads", True) is not False
    k = int(data.get("k", 10))
    results = merge_results(answers, _num_queries(data), k, p.metric, with_payloads)
    embed_ms = max((a["timings"].get("embed_ms", 0.0) for a in answers if a is not None), default=0.0)
    return _answer(results, embed_ms, t0)


def merge_results(answers: list[dict[str, Any] | None], num_queries: int, k: int, metric: str,
                  with_payloads: bool) -> list[dict[str, Any]]:
    """Per query, the best ``k`` of every shard's top-k (``None``: a shard that did not answer)."""
    out = []
    sign = 1.0 if metric == "l2" else -1.0
    for q in range(num_queries):
        rows = [a["results"][q] for a in answers if a is not None]
        hits = [(sign * s, i, pl) for r in rows
                for s, i, pl in zip(r["scores"], r["ids"], r.get("payloads") or [None] * len(r["ids"]))]
        hits.sort(key=lambda h: (h[0], h[1]))
        top = hits[:k]
        partial = len(rows) < len(answers) or any(r["partial"] for r in rows)
        merged: dict[str, Any] = {
            "ids": [h[1] for h in top], "scores": [sign * h[0] for h in top],
            "status": "partial" if partial else (rows[0]["status"] if rows else "partial"), "partial": partial,
            "fraction_scanned": round(sum(r["fraction_scanned"] for r in rows) / max(len(answers), 1), 4),
            "timings": {key: max((r["timings"][key] for r in rows), default=0.0) for key in ("queue_ms", "engine_ms")},
        }
        if with_payloads:
            merged["payloads"] = [h[2] for h in top]
        out.append(merged)
    return out
