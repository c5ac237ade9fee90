"""Overload is refused, not queued; searches have server-side deadlines; a client that
leaves aborts its work; HTTP hygiene (strict types, JSON bodies, body timeout, 500s that
keep the connection)."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import error_of

from trinity.pool.config import PoolConfig
from trinity.pool.guard import Guard
from trinity.pool.state import PoolState
from trinity.stack.process import ServerProcess, free_port

DIM, N = 64, 100_000
HEAVY = 128  # queries per request: one request keeps the engine busy for a while


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("overload")
    proc = ServerProcess(root / "data", "--default-deadline-ms", "decode=100,prefill=300,background=1",
                         "--body-timeout-s", "1", log_path=root / "server.log").start()
    with httpx.Client(base_url=proc.url, timeout=60.0) as c:
        c.post("/v1/collections", json={"name": "big", "dim": DIM, "embedder": "none"}).raise_for_status()
        x = np.random.default_rng(0).standard_normal((N, DIM)).astype("<f4")
        for s in range(0, N, 10_000):
            c.put("/v1/collections/big/vectors", json={
                "ids": list(range(s, s + 10_000)),
                "vectors_b64": base64.b64encode(x[s:s + 10_000].tobytes()).decode()}).raise_for_status()
    yield proc
    proc.stop()


def _metric(text: str, name: str, **labels) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = r"(?m)^" + re.escape(name) + (r"\{" + re.escape(sel) + r"\}" if sel else "") + r" (\S+)$"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else float("nan")


def _queries(n: int, seed: int = 1) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, DIM)).round(4).tolist()


def test_a_search_without_deadline_gets_its_stages_default(pool):
    with httpx.Client(base_url=pool.url, timeout=60.0) as c:
        r = c.post("/v1/collections/big/search", json={"vectors": _queries(HEAVY), "k": 5, "stage": "background"})
        assert r.status_code == 200
        assert all(res["status"] != "complete" for res in r.json()["results"])  # 1 ms: no time to scan 100k
        r = c.post("/v1/collections/big/search", json={"vector": _queries(1)[0], "k": 5, "stage": "background",
                                                      "deadline_ms": 30_000})
        assert r.json()["results"][0]["status"] == "complete"


def test_overload_is_refused_not_queued(pool):
    statuses, latencies, retry_after = [], [], []
    body = {"vectors": _queries(HEAVY, seed=2), "k": 5}  # prefill, no deadline: the server's 300 ms

    async def client(stop: float) -> None:
        async with httpx.AsyncClient(base_url=pool.url, timeout=30.0) as c:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await c.post("/v1/collections/big/search", json=body)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                elif r.status_code == 429:
                    retry_after.append(r.headers.get("retry-after"))
                    await asyncio.sleep(0.05)

    async def main() -> None:
        stop = time.perf_counter() + 3.0
        await asyncio.gather(*(client(stop) for _ in range(24)))

    asyncio.run(main())
    assert statuses.count(429) > 0 and all(v is not None and int(v) >= 1 for v in retry_after), statuses
    assert set(statuses) <= {200, 429}
    assert latencies and max(latencies) < 0.3 + 1.5  # deadline + HTTP and scheduling slack on 2 shared cores
    with httpx.Client(base_url=pool.url, timeout=10.0) as c:  # right after the load: served at once
        t = time.perf_counter()
        r = c.post("/v1/collections/big/search", json={"vector": _queries(1)[0], "k": 5, "stage": "decode"})
        assert r.status_code == 200 and time.perf_counter() - t < 1.0


def test_a_client_that_leaves_aborts_its_searches(pool):
    with httpx.Client(base_url=pool.url, timeout=10.0) as c:
        before = c.get("/metrics").text
    body = httpx.Request("POST", "/", json={"vectors": _queries(256, seed=3), "k": 5, "stage": "background",
                                            "deadline_ms": 60_000}).read()
    socks = []
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", pool.port))
        s.sendall(b"POST /v1/collections/big/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        socks.append(s)
    time.sleep(0.3)
    for s in socks:
        s.close()
    time.sleep(1.0)
    with httpx.Client(base_url=pool.url, timeout=10.0) as c:
        after = c.get("/metrics").text
    assert _metric(after, "trinity_http_disconnects_total") - _metric(before, "trinity_http_disconnects_total") >= 1
    aborted = [_metric(t, "trinity_search_finished_total", stage="background", status="aborted")
               for t in (before, after)]
    assert aborted[1] - np.nan_to_num(aborted[0]) >= 256  # every query of a request that left


@pytest.mark.parametrize("body, field", [({"k": "3"}, "k"), ({"k": True}, "k"), ({"nprobe": "4"}, "nprobe")])
def test_wrong_types_are_refused_not_coerced(pool, body, field):
    with httpx.Client(base_url=pool.url, timeout=10.0) as c:
        r = c.post("/v1/collections/big/search", json={"vector": _queries(1)[0], "k": 3, **body})
        assert r.status_code == 422 and error_of(r)["field"] == field
        r = c.post("/v1/collections/big/vectors/get", json={"ids": ["7"]})
        assert r.status_code == 422 and error_of(r)["field"] == "ids.0"
        r = c.put("/v1/collections/big/vectors", json={"ids": [True], "vectors": _queries(1)})
        assert r.status_code == 422 and error_of(r)["field"] == "ids.0"


def test_bodies_must_be_json(pool):
    with httpx.Client(base_url=pool.url, timeout=10.0) as c:
        upsert = httpx.Request("PUT", "/", json={"ids": [1], "vectors": _queries(1)}).read()
        search = httpx.Request("POST", "/", json={"vector": _queries(1)[0], "k": 3}).read()
        for method, path, content in (("PUT", "/v1/collections/big/vectors", upsert),
                                      ("POST", "/v1/collections/big/search", search)):
            r = c.request(method, path, content=content, headers={"content-type": "text/plain"})
            assert r.status_code == 415 and error_of(r)["field"] == "content-type"
            r = c.request(method, path, content=content, headers={"content-type": "application/json; charset=utf-8"})
            assert r.status_code == 200


def test_a_stalled_body_is_answered_408_and_closed(pool):
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as s:
        s.sendall(b"POST /v1/collections/big/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"k\": 3")
        t = time.perf_counter()
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408") and b'"field":"body"' in data
        assert time.perf_counter() - t < 5.0


def test_an_internal_error_answers_500_and_keeps_the_connection(tmp_path):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/boom":
            raise RuntimeError("a bug")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Guard(app, PoolState(PoolConfig(data_dir=tmp_path))), port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            r = c.get("/boom")
            assert r.status_code == 500
            assert error_of(r) == {"code": "internal", "field": None, "message": "internal server error"}
            r = c.get("/fine")  # same keep-alive connection
            assert r.status_code == 200 and r.text == "ok"
    finally:
        server.should_exit = True
        thread.join(10)
