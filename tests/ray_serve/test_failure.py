"""Killing one replica mid-load: no acknowledged write is lost (on either replica, once Ray has
restarted the dead one and it has caught up from its WAL), and every search returns -- complete
or partial -- within its deadline."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

DIM, DEADLINE_MS = 16, 300
SLACK_S = 1.0  # loopback HTTP, the proxy and a loaded 2-core machine on top of the router's grace


def _kill_replica(i: int) -> None:
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#pool-replica-{i}#" in a["name"]]
    assert len(actors) == 1, actors
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]))


async def _load(url: str, x: np.ndarray, kill_after_s: float) -> tuple[list[int], list[tuple[float, dict]]]:
    acked: list[int] = []
    answers: list[tuple[float, dict]] = []
    stop = asyncio.Event()

    async def search(client: httpx.AsyncClient, name: str) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            r = await client.post(f"/v1/collections/{name}/search",
                                  json={"vector": x[7].tolist(), "k": 5, "stage": "decode", "deadline_ms": DEADLINE_MS})
            assert r.status_code == 200, r.text
            answers.append((time.monotonic() - t0, r.json()["results"][0]))

    async def write(client: httpx.AsyncClient, name: str, first: int) -> None:
        n = first
        while not stop.is_set():
            ids = list(range(n, n + 4))
            n += 4
            r = await client.put(f"/v1/collections/{name}/vectors", json={"ids": ids, "vectors": x[:4].tolist()})
            if r.status_code == 200:
                acked.extend((name, i) for i in ids)
            else:
                assert r.status_code == 503, r.text  # not acknowledged: the client may retry it

    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        tasks = [asyncio.create_task(search(client, n)) for n in ("kill-rep", "kill-shd", "kill-rep", "kill-shd")]
        tasks += [asyncio.create_task(write(client, "kill-rep", 100_000)),
                  asyncio.create_task(write(client, "kill-shd", 200_000))]
        await asyncio.sleep(kill_after_s)
        await asyncio.to_thread(_kill_replica, 1)
        await asyncio.sleep(3.0)
        for _ in range(120):
            if (await client.get("/health")).json()["status"] == "ok":
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # some load on the restarted replica too
        stop.set()
        await asyncio.gather(*tasks)
    return acked, answers


def test_kill_a_replica_mid_load(ray_pool):
    x = np.random.default_rng(9).standard_normal((400, DIM)).astype(np.float32)
    for name, placement in (("kill-rep", "replicated"), ("kill-shd", "sharded")):
        assert ray_pool.client.post("/v1/collections", json={"name": name, "dim": DIM, "metric": "ip",
                                                             "placement": placement}).status_code == 201
        r = ray_pool.client.put(f"/v1/collections/{name}/vectors", json={"vectors": x.tolist()})
        assert r.status_code == 200, r.text
    acked, answers = asyncio.run(_load(ray_pool.url, x, kill_after_s=1.5))
    assert ray_pool.client.get("/health").json()["status"] == "ok"
    assert len(acked) > 20 and len(answers) > 50
    slowest = max(t for t, _ in answers)
    assert slowest < DEADLINE_MS / 1e3 + SLACK_S, slowest
    assert all(r["status"] in ("complete", "partial") and r["partial"] == (r["status"] == "partial")
               for _, r in answers)
    assert any(not r["partial"] for _, r in answers)
    for name in ("kill-rep", "kill-shd"):
        ids = [i for n, i in acked if n == name]
        got = ray_pool.client.post(f"/v1/collections/{name}/vectors/get", json={"ids": ids, "with_payloads": False})
        assert got.json()["missing"] == [], name
    rep = [i for n, i in acked if n == "kill-rep"]
    for replica in (0, 1):  # both copies of the replicated collection, the restarted one included
        status, body = ray_pool.replica(replica, "POST", "/v1/collections/kill-rep/vectors/get",
                                        {"ids": rep, "with_payloads": False})
        assert status == 200 and body["missing"] == [], replica
