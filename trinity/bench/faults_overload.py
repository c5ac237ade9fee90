"""Overload scenarios of ``trinity bench faults``: the pool at 2x and 5x its capacity.

A real server (``trinity.stack.process``) with a 50k x 384 flat collection.  Capacity
is measured first (closed loop, one connection per client); then a Poisson stream at 2x
and 5x that rate runs open loop, each request on its own connection with a 10 s client
timeout, as impatient clients would.  A refused request is a 429 with ``Retry-After``;
a served one is a 200 (complete, or partial at its deadline).  After the stream a probe
search measures how long the pool takes to answer at its unloaded latency again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import httpx
import numpy as np

from trinity.bench.pool_bench import RawClient
from trinity.stack.process import ServerProcess

DIM = 384
QUERIES_PER_REQUEST = 8  # heavier requests: the client must outrun the server on the same cores
PREFILL_DEADLINE_MS = 1000.0  # the server's default for prefill-stage searches
CLIENT_TIMEOUT_S = 10.0


def _load(url: str, n: int) -> None:
    x = np.random.default_rng(0).standard_normal((n, DIM)).astype("<f4")
    with httpx.Client(base_url=url, timeout=120.0) as c:
        c.post("/v1/collections", json={"name": "load", "dim": DIM, "embedder": "none"}).raise_for_status()
        for s in range(0, n, 10_000):
            c.put("/v1/collections/load/vectors", json={
                "ids": list(range(s, min(n, s + 10_000))),
                "vectors_b64": base64.b64encode(x[s:s + 10_000].tobytes()).decode()}).raise_for_status()


def _bodies(n: int) -> list[bytes]:
    q = np.random.default_rng(1).standard_normal((n, QUERIES_PER_REQUEST, DIM)).round(4)
    return [json.dumps({"vectors": qi.tolist(), "k": 10}).encode() for qi in q]


async def _one(port: int, body: bytes) -> tuple[int, float, bool]:
    """(status, seconds, complete) of one request on a fresh connection; status 0 = timed out."""
    client, t = RawClient(port), time.perf_counter()
    try:
        status, raw = await asyncio.wait_for(client.post("/v1/collections/load/search", body), CLIENT_TIMEOUT_S)
        complete = status == 200 and all(r["status"] == "complete" for r in json.loads(raw)["results"])
        return status, time.perf_counter() - t, complete
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return 0, time.perf_counter() - t, False
    finally:
        client.close()  # NOTE: a client that gives up closes its connection: the server sees it leave


async def _capacity(port: int, bodies: list[bytes], seconds: float, clients: int = 8) -> float:
    done, stop = [0], time.perf_counter() + seconds

    async def worker(i: int) -> None:
        client, j = RawClient(port), i
        try:
            while time.perf_counter() < stop:
                status, _ = await client.post("/v1/collections/load/search", bodies[j % len(bodies)])
                done[0] += status == 200
                j += clients
        finally:
            client.close()

    t = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return done[0] / (time.perf_counter() - t)


async def _open_loop(port: int, bodies: list[bytes], rate: float, seconds: float) -> list[tuple[int, float, bool]]:
    gaps = np.random.default_rng(2).exponential(1.0 / rate, int(rate * seconds * 1.5) + 1)
    start, tasks = time.perf_counter(), []
    for i, at in enumerate(np.cumsum(gaps)):
        if at > seconds:
            break
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(_one(port, bodies[i % len(bodies)])))
    return await asyncio.gather(*tasks)


async def _recovery_s(port: int, body: bytes, unloaded_s: float, limit_s: float = 30.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        status, took, complete = await _one(port, body)
        if status == 200 and complete and took <= 2 * unloaded_s + 0.05:
            return time.perf_counter() - t0
        await asyncio.sleep(0.05)
    return float("inf")


def overload(workdir: Path, quick: bool) -> list[dict]:
    server = ServerProcess(workdir / "data", log_path=workdir / "server.log").start()
    rows: list[dict] = []
    try:
        _load(server.url, 20_000 if quick else 50_000)
        bodies = _bodies(64)
        capacity = asyncio.run(_capacity(server.port, bodies, 2.0 if quick else 5.0))
        unloaded = float(np.median([asyncio.run(_one(server.port, bodies[0]))[1] for _ in range(5)]))
        rows.append(_row("capacity", "requests/s served (closed loop, 8 clients)", round(capacity, 1), "> 0",
                         capacity > 0))
        for factor in (2, 5):
            results = asyncio.run(_open_loop(server.port, bodies, factor * capacity, 3.0 if quick else 10.0))
            recovery = asyncio.run(_recovery_s(server.port, bodies[0], unloaded))
            rows += _judge(f"overload-{factor}x", results, recovery)
    finally:
        server.kill()
    return rows


def _judge(name: str, results: list[tuple[int, float, bool]], recovery_s: float) -> list[dict]:
    status = np.array([r[0] for r in results])
    served = [r[1] for r in results if r[0] == 200]
    p99 = float(np.percentile(served, 99)) * 1e3 if served else float("nan")
    n = max(len(results), 1)
    return [
        _row(name, "requests sent", len(results), "> 0", len(results) > 0),
        _row(name, "share refused with 429 (what cannot be served in time)", round(float((status == 429).mean()), 3),
             "-", True),
        _row(name, "share served (200)", round(len(served) / n, 3), "> 0", bool(served)),
        _row(name, "share complete", round(sum(r[2] for r in results) / n, 3), "-", True),
        _row(name, "client timeouts (10 s) or resets", int((status == 0).sum()), "== 0", not (status == 0).any()),
        _row(name, "other statuses", int(((status != 200) & (status != 429) & (status != 0)).sum()), "== 0",
             not ((status != 200) & (status != 429) & (status != 0)).any()),
        _row(name, "p99 of served requests (ms)", round(p99, 1), f"<= {PREFILL_DEADLINE_MS:g} + 250",
             p99 <= PREFILL_DEADLINE_MS + 250),
        _row(name, "seconds to unloaded latency after the stream", round(recovery_s, 2), "<= 2", recovery_s <= 2.0),
    ]


def _row(scenario: str, check: str, value, expect: str, ok: bool) -> dict:
    return {"scenario": scenario, "check": check, "value": value, "expect": expect, "ok": bool(ok)}


SCENARIOS = {"overload": overload}
