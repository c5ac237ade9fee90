"""HTTP round trips against a real server process."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import error_of

DIM = 16


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_health_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/collections", "/v1/collections/{name}", "/v1/collections/{name}/vectors",
                  "/v1/collections/{name}/vectors/get", "/v1/collections/{name}/vectors/delete",
                  "/v1/collections/{name}/search", "/v1/caches", "/v1/caches/{name}/lookup",
                  "/v1/caches/{name}/insert"):
        assert route in paths


def test_flat_collection_round_trip(client, name):
    r = client.post("/v1/collections", json={"name": name, "dim": DIM, "metric": "cosine"})
    assert r.status_code == 201 and r.json()["count"] == 0 and r.json()["embedder"] is None
    assert client.post("/v1/collections", json={"name": name, "dim": DIM}).status_code == 409
    x = _vecs(200)
    payloads = [{"text": f"passage {i}", "n": i} for i in range(200)]
    r = client.put(f"/v1/collections/{name}/vectors", json={"ids": list(range(200)), "vectors": x.tolist(),
                                                             "payloads": payloads})
    assert r.status_code == 200 and r.json()["count"] == 200 and r.json()["lsn"] >= 1

    r = client.post(f"/v1/collections/{name}/search", json={"vector": x[17].tolist(), "k": 5, "stage": "decode"})
    res = r.json()["results"][0]
    assert res["ids"][0] == 17 and res["payloads"][0] == payloads[17] and res["status"] == "complete"
    assert not res["partial"] and res["fraction_scanned"] == 1.0 and len(res["scores"]) == 5
    assert res["scores"][0] == pytest.approx(1.0, abs=1e-4) and set(res["timings"]) == {"queue_ms", "engine_ms"}

    r = client.post(f"/v1/collections/{name}/search", json={"vectors": x[:3].tolist(), "k": 2, "stage": "background",
                                                            "deadline_ms": 5000, "with_payloads": False})
    batch = r.json()["results"]
    assert [b["ids"][0] for b in batch] == [0, 1, 2] and "payloads" not in batch[0]

    r = client.post(f"/v1/collections/{name}/search", json={"vector": x[1].tolist(), "deadline_ms": 0.001})
    late = r.json()["results"][0]  # a deadline that cannot be met is answered, flagged, never silent
    assert r.status_code == 200 and late["partial"] is True and late["status"] in ("partial", "rejected")

    r = client.post(f"/v1/collections/{name}/vectors/get", json={"ids": [5, 6, 10**6], "with_vectors": True})
    got = r.json()
    assert got["ids"] == [5, 6] and got["missing"] == [10**6] and got["payloads"] == payloads[5:7]
    np.testing.assert_allclose(got["vectors"][0], x[5], atol=1e-6)

    r = client.post(f"/v1/collections/{name}/vectors/delete", json={"ids": [5, 6, 7, 10**6]})
    assert r.json()["deleted"] == 3
    r = client.post(f"/v1/collections/{name}/search", json={"vector": x[5].tolist(), "k": 3})
    assert 5 not in r.json()["results"][0]["ids"]

    d = client.get(f"/v1/collections/{name}").json()
    assert d["count"] == 197 and d["dim"] == DIM and d["index"] == "flat"
    assert d["memory"]["raw_vectors"] == 197 * DIM * 4 and d["memory"]["total"] >= d["memory"]["raw_vectors"]
    assert d["memory"]["payloads"] > 0 and d["durable_lsn"] == d["lsn"]
    assert name in [c["name"] for c in client.get("/v1/collections").json()["collections"]]
    assert client.delete(f"/v1/collections/{name}").status_code == 200
    assert client.get(f"/v1/collections/{name}").status_code == 404


def test_graph_collection_searches_by_hops_and_rejects_ivf_options(client, name):
    body = {"name": name, "dim": DIM, "index": "graph", "graph_degree": 8}
    assert error_of(client.post("/v1/collections", json={**body, "nlist": 4}))["field"] == "nlist"
    flat_with_degree = {"name": name, "dim": DIM, "graph_degree": 8}
    assert error_of(client.post("/v1/collections", json=flat_with_degree))["field"] == "graph_degree"
    r = client.post("/v1/collections", json=body)
    assert r.status_code == 201 and r.json()["index"] == "graph" and r.json()["graph_degree"] == 8
    x = _vecs(300, seed=5)
    client.put(f"/v1/collections/{name}/vectors", json={"ids": list(range(300)), "vectors": x.tolist()})
    r = client.post(f"/v1/collections/{name}/search", json={"vectors": x[:20].tolist(), "k": 3, "nprobe": 64,
                                                            "search_width": 2, "stage": "decode"})
    assert [res["ids"][0] for res in r.json()["results"]] == list(range(20))
    assert all(res["status"] == "complete" for res in r.json()["results"])
    client.post(f"/v1/collections/{name}/vectors/delete", json={"ids": [3]})
    r = client.post(f"/v1/collections/{name}/search", json={"vector": x[3].tolist(), "k": 3, "nprobe": 64})
    assert 3 not in r.json()["results"][0]["ids"]


def test_ivf_collection_trains_after_the_buffer(client, name):
    r = client.post("/v1/collections", json={"name": name, "dim": DIM, "index": "ivf", "nlist": 4, "nprobe": 4,
                                             "train_size": 64})
    assert r.status_code == 201 and r.json()["state"] == "training_buffer"
    x = _vecs(100, seed=3)
    r = client.put(f"/v1/collections/{name}/vectors", json={"vectors": x[:50].tolist()})  # ids assigned
    assert r.json()["ids"] == list(range(50))
    assert client.post(f"/v1/collections/{name}/search", json={"vector": x[9].tolist(), "k": 1}).json()[
        "results"][0]["ids"] == [9]  # exact while buffered
    client.put(f"/v1/collections/{name}/vectors", json={"ids": list(range(50, 100)), "vectors": x[50:].tolist()})
    r = client.post(f"/v1/collections/{name}/train")  # already training or trained: idempotent
    assert r.status_code == 200
    for _ in range(100):
        if client.get(f"/v1/collections/{name}").json()["state"] == "trained":
            break
    assert client.get(f"/v1/collections/{name}").json()["state"] == "trained"
    res = client.post(f"/v1/collections/{name}/search", json={"vector": x[77].tolist(), "k": 1, "nprobe": 4})
    assert res.json()["results"][0]["ids"] == [77]
    client.delete(f"/v1/collections/{name}")


def test_texts_are_embedded(client, name):
    assert client.post("/v1/collections", json={"name": name}).json()["dim"] == 384  # default embedder
    texts = ["The cat sat on the mat.", "Stock markets fell sharply on Monday.",
             "A recipe for sourdough bread with a long fermentation."]
    r = client.put(f"/v1/collections/{name}/vectors", json={"ids": [1, 2, 3], "texts": texts,
                                                             "payloads": [{"text": t} for t in texts]})
    assert r.status_code == 200, r.text
    r = client.post(f"/v1/collections/{name}/search", json={"texts": ["how do I bake bread?", "equities dropped"],
                                                            "k": 1})
    results = r.json()["results"]
    assert [res["ids"][0] for res in results] == [3, 2]
    assert results[0]["payloads"][0]["text"] == texts[2] and r.json()["timings"]["embed_ms"] > 0
    client.delete(f"/v1/collections/{name}")


@pytest.mark.parametrize("body,field,status", [
    ({"vector": [0.1] * (DIM - 1)}, "vector", 422),  # wrong dim
    ({"vectors": [[0.1] * DIM, [0.1] * 3]}, "vectors.1", 422),
    ({"vector": [0.1] * DIM, "k": 0}, "k", 422),  # k out of range
    ({"vector": [0.1] * DIM, "k": 1025}, "k", 422),
    ({"vector": [0.1] * DIM, "stage": "warp"}, "stage", 422),
    ({"vector": [0.1] * DIM, "deadline_ms": -1}, "deadline_ms", 422),
    ({"vector": [1e39] * DIM}, "vector", 422),  # finite in JSON, inf as float32
    ({"vector": [0.1] * DIM, "vektor": 1}, "vektor", 422),
    ({"k": 3}, "vectors", 422),
    ({"text": "hello"}, "text", 422),  # this collection has no embedder
])
def test_bad_search_inputs_name_the_field(client, name, body, field, status):
    client.post("/v1/collections", json={"name": name, "dim": DIM, "embedder": "none"})
    r = client.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == status and error_of(r)["field"] == field, r.text
    client.delete(f"/v1/collections/{name}")


def test_other_errors(client, name):
    r = client.post("/v1/collections/nope/search", json={"vector": [0.1] * DIM})
    assert r.status_code == 404 and error_of(r)["field"] == "name"
    r = client.post("/v1/collections", json={"name": name, "dim": DIM, "embedder": "all-MiniLM-L6-v2"})
    assert r.status_code == 422 and error_of(r)["field"] == "dim"
    r = client.post("/v1/collections", json={"name": "bad/name", "dim": DIM})
    assert r.status_code == 422 and error_of(r)["field"] == "name"
    client.post("/v1/collections", json={"name": name, "dim": DIM})
    nan = b'{"ids": [1], "vectors": [[NaN' + b", 0" * (DIM - 1) + b"]]}"
    r = client.put(f"/v1/collections/{name}/vectors", content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_of(r)["field"].startswith("vectors.0"), r.text
    r = client.put(f"/v1/collections/{name}/vectors", json={"ids": [1, 2], "vectors": [[0.1] * DIM]})
    assert r.status_code == 422 and error_of(r)["field"] == "ids"
    r = client.put(f"/v1/collections/{name}/vectors", json={"ids": [-1], "vectors": [[0.1] * DIM]})
    assert r.status_code == 422 and error_of(r)["field"] == "ids.0"
    r = client.put(f"/v1/collections/{name}/vectors", json={"vectors": [[0.1] * DIM], "payloads": [{"x": 1}, None]})
    assert r.status_code == 422 and error_of(r)["field"] == "payloads"
    r = client.post(f"/v1/collections/{name}/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["field"] == "body"
    r = client.put(f"/v1/collections/{name}/vectors", content=b"x" * ((64 << 20) + 1),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["field"] == "body"
    r = client.post(f"/v1/collections/{name}/vectors/get", json={"ids": list(range(10_001))})
    assert r.status_code == 422 and error_of(r)["field"] == "ids"
    assert client.get("/no/such/route").status_code == 404
    client.delete(f"/v1/collections/{name}")


def test_metrics_are_prometheus_text(client):
    text = client.get("/metrics").text
    for metric in ("trinity_search_latency_seconds_bucket", "trinity_engine_queue_depth",
                   "trinity_engine_iteration_seconds", "trinity_http_requests_total", "trinity_cache_lookups_total"):
        assert metric in text, metric
