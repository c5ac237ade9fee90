"""A replicated and a 2-shard collection on two replicas answer what the single-process pool
answers: searches (flat and IVF, every metric), point reads, deletes, counts and errors."""

from __future__ import annotations

import numpy as np
import pytest

DIM = 16


def _data(seed: int, n: int = 600) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _load(client, name: str, x: np.ndarray, **create) -> None:
    r = client.post("/v1/collections", json={"name": name, "dim": DIM, **create})
    assert r.status_code == 201, r.text
    half = len(x) // 2
    r = client.put(f"/v1/collections/{name}/vectors", json={"vectors": x[:half].tolist()})  # server-assigned ids
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == list(range(half))
    ids = list(range(10_000, 10_000 + len(x) - half))
    r = client.put(f"/v1/collections/{name}/vectors", json={
        "ids": ids, "vectors": x[half:].tolist(), "payloads": [{"n": i} for i in ids]})
    assert r.status_code == 200, r.text
    r = client.put(f"/v1/collections/{name}/vectors", json={"vectors": _data(99, 2).tolist()})  # past the ids
    assert r.json()["ids"] == [ids[-1] + 1, ids[-1] + 2], r.text


def _search(client, name: str, q: np.ndarray, k: int = 10) -> list[dict]:
    r = client.post(f"/v1/collections/{name}/search", json={
        "vectors": q.tolist(), "k": k, "stage": "background", "deadline_ms": 30_000})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert not x["partial"] and not y["partial"]
        assert x["ids"] == y["ids"]
        np.testing.assert_allclose(x["scores"], y["scores"], rtol=1e-5, atol=1e-5)
        assert x["payloads"] == y["payloads"]


@pytest.mark.parametrize("placement", ["replicated", "sharded"])
@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_flat_search_matches_single_process(ray_pool, single, placement, metric):
    name = f"flat-{placement}-{metric}"
    x = _data(1)
    _load(single, name, x, metric=metric)
    _load(ray_pool.client, name, x, metric=metric, placement=placement)
    q = _data(2, 8)
    _same(_search(ray_pool.client, name, q), _search(single, name, q))
    desc = ray_pool.client.get(f"/v1/collections/{name}").json()
    assert desc["count"] == len(x) + 2 and desc["placement"]["mode"] == placement
    if placement == "sharded":
        assert [s["count"] for s in desc["shards"]] != [len(x), 0]  # both shards hold points
        assert sum(s["count"] for s in desc["shards"]) == len(x) + 2


def test_replicated_ivf_matches_single_process(ray_pool, single):
    name, x = "ivf-replicated", _data(3, 800)
    create = {"metric": "ip", "index": "ivf", "nlist": 8, "nprobe": 3, "train_size": 400}
    _load(single, name, x, **create)
    _load(ray_pool.client, name, x, **create, placement="replicated")
    for client in (single, ray_pool.client):
        assert client.post(f"/v1/collections/{name}/train").status_code == 200
    q = _data(4, 8)
    _same(_search(ray_pool.client, name, q), _search(single, name, q))


def test_points_deletes_and_errors_match(ray_pool, single):
    name, x = "points-sharded", _data(5, 200)
    _load(single, name, x)
    _load(ray_pool.client, name, x, placement="sharded", num_shards=2)
    ids = [0, 3, 10_050, 10_099, 777, 3]
    get = {"ids": ids, "with_vectors": True}
    a = ray_pool.client.post(f"/v1/collections/{name}/vectors/get", json=get).json()
    b = single.post(f"/v1/collections/{name}/vectors/get", json=get).json()
    assert a == b
    dele = {"ids": [0, 1, 10_000, 5_000]}
    a = ray_pool.client.post(f"/v1/collections/{name}/vectors/delete", json=dele).json()
    b = single.post(f"/v1/collections/{name}/vectors/delete", json=dele).json()
    assert a["deleted"] == b["deleted"] == 3
    q = _data(6, 4)
    _same(_search(ray_pool.client, name, q, k=20), _search(single, name, q, k=20))
    for method, path, body in (("POST", "/v1/collections/nope/search", {"vector": [0.0] * DIM}),
                               ("PUT", f"/v1/collections/{name}/vectors", {"vectors": [[1.0, 2.0]]}),
                               ("POST", f"/v1/collections/{name}/search", {"vector": [0.0] * DIM, "k": 0}),
                               ("POST", f"/v1/collections/{name}/search", {"vector": [0.0] * DIM, "deadline_ms": -1}),
                               ("POST", f"/v1/collections/{name}/search", {"vectors": [[0.0] * DIM], "stage": "x"}),
                               ("POST", "/v1/collections", {"name": name, "dim": DIM})):
        ra, rb = ray_pool.client.request(method, path, json=body), single.request(method, path, json=body)
        assert (ra.status_code, ra.json()) == (rb.status_code, rb.json()), path


def test_list_drop_health_and_metrics(ray_pool):
    c = ray_pool.client
    assert c.post("/v1/collections", json={"name": "to-drop", "dim": DIM, "placement": "sharded"}).status_code == 201
    assert "to-drop" in [x["name"] for x in c.get("/v1/collections").json()["collections"]]
    assert c.delete("/v1/collections/to-drop").json() == {"dropped": "to-drop"}
    assert c.get("/v1/collections/to-drop").status_code == 404
    bad = c.post("/v1/collections", json={"name": "x", "dim": DIM, "placement": "sharded", "num_shards": 3})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "num_shards"
    health = c.get("/health").json()
    assert health["status"] == "ok" and [r["up"] for r in health["replicas"]] == [True, True]
    text = c.get("/metrics").text
    assert 'replica="0"' in text and 'replica="1"' in text and "trinity_ray_inflight" in text


def test_caches_live_on_one_home_replica(ray_pool, single):
    v = [1.0] + [0.0] * (DIM - 1)
    for client in (ray_pool.client, single):
        r = client.post("/v1/caches", json={"name": "answers", "kind": "answer", "dim": DIM})
        assert r.status_code == 201, r.text
        assert client.post("/v1/caches/answers/insert", json={"tenant": "t", "vector": v, "value": {"a": 1}}
                           ).status_code == 201
    hits = [c.post("/v1/caches/answers/lookup", json={"tenant": "t", "vector": v}).json()
            for c in (ray_pool.client, single)]
    assert hits[0]["hit"] and hits[0]["value"] == hits[1]["value"] == {"a": 1}
    assert [c["name"] for c in ray_pool.client.get("/v1/caches").json()["caches"]] == ["answers"]
    assert ray_pool.client.get("/v1/caches/nope").status_code == single.get("/v1/caches/nope").status_code == 404
