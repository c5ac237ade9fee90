"""Auth, overload (429 + Retry-After while /health stays ok) and the loopback-only rule."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import numpy as np
import pytest
from conftest import error_of

from trinity.stack.process import ServerProcess

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    """A server with an API key, 2 searches in flight at most and an admission queue of 1."""
    root = tmp_path_factory.mktemp("restricted")
    proc = ServerProcess(root / "data", "--max-inflight", "2", "--max-queue", "1", api_keys=KEY,
                         log_path=root / "server.log").start()
    yield proc
    proc.stop()


def test_auth(restricted):
    url = restricted.url
    assert httpx.get(f"{url}/health").status_code == 200  # liveness never needs a key
    for headers in ({}, {"Authorization": "Bearer wrong-key-000000"}, {"Authorization": f"Basic {KEY}"},
                    {"X-API-Key": "nope"}):
        r = httpx.get(f"{url}/v1/collections", headers=headers)
        assert r.status_code == 401 and error_of(r)["field"] == "authorization"
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/v1/collections", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{url}/v1/collections", headers={"X-API-Key": KEY}).status_code == 200


def test_overload_answers_429_and_health_stays_ok(restricted):
    headers = {"Authorization": f"Bearer {KEY}"}
    dim, n = 64, 60_000
    with httpx.Client(base_url=restricted.url, headers=headers, timeout=120) as c:
        c.post("/v1/collections", json={"name": "big", "dim": dim}).raise_for_status()
        x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
        import base64
        for s in range(0, n, 10_000):
            c.put("/v1/collections/big/vectors", json={"ids": list(range(s, s + 10_000)), "vectors_b64":
                  base64.b64encode(x[s:s + 10_000].tobytes()).decode()}).raise_for_status()

    async def storm() -> tuple[list[httpx.Response], list[int]]:
        async with httpx.AsyncClient(base_url=restricted.url, headers=headers, timeout=120) as ac:
            searches = [ac.post("/v1/collections/big/search", json={"vector": x[i].tolist(), "k": 10})
                        for i in range(48)]
            health = [ac.get("/health") for _ in range(8)]
            out = await asyncio.gather(*searches, *health)
            return out[:48], [r.status_code for r in out[48:]]

    results, health = asyncio.run(storm())
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) > 0, codes
    for r in results:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 0 and error_of(r)["message"].startswith("overloaded")
    assert health == [200] * 8
    assert httpx.get(f"{restricted.url}/health").json()["status"] == "ok"
    r = httpx.post(f"{restricted.url}/v1/collections/big/search", json={"vector": x[0].tolist(), "k": 1},
                   headers=headers)
    assert r.status_code == 200 and r.json()["results"][0]["ids"] == [0]  # and it recovers


def test_refuses_public_bind_without_keys(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trinity.pool", "--host", "0.0.0.0", "--port", "0",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 2 and "refusing to bind" in r.stderr
