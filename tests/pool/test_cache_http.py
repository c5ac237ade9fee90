"""Semantic caches over HTTP: tenant isolation with identical prompts, TTL, LRU, metrics."""

from __future__ import annotations

import re
import time

from conftest import error_of

PROMPT = "What is the refund policy for enterprise customers?"


def _metric(client, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_tenant_a_never_hits_tenant_b(client, name):
    r = client.post("/v1/caches", json={"name": name, "kind": "answer", "threshold": 0.9})
    assert r.status_code == 201 and r.json()["dim"] == 384 and r.json()["kind"] == "answer"
    r = client.post(f"/v1/caches/{name}/insert", json={"tenant": "acme", "text": PROMPT,
                                                       "value": {"answer": "acme: 30 days"}})
    assert r.status_code == 201
    # identical prompt, other tenant: a miss with no candidate at all, never acme's answer
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "globex", "text": PROMPT, "threshold": -1.0})
    assert r.status_code == 200 and r.json()["hit"] is False and r.json()["value"] is None
    assert r.json()["similarity"] is None
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "acme", "text": PROMPT.lower()})
    assert r.json()["hit"] is True and r.json()["value"] == {"answer": "acme: 30 days"}
    assert r.json()["similarity"] > 0.9 and r.json()["key"] == PROMPT
    client.post(f"/v1/caches/{name}/insert", json={"tenant": "globex", "text": PROMPT, "value": "globex: 14 days"})
    for tenant, value in (("acme", {"answer": "acme: 30 days"}), ("globex", "globex: 14 days")):
        r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": tenant, "text": PROMPT})
        assert r.json()["hit"] and r.json()["value"] == value
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "acme", "text": "How tall is Mount Everest?"})
    assert r.json()["hit"] is False
    stats = client.get(f"/v1/caches/{name}").json()
    assert stats["tenants"] == 2 and stats["entries"] == 2 and stats["hits"] == 3 and stats["misses"] == 2
    assert _metric(client, "trinity_cache_lookups_total", cache=name, result="hit") == 3
    assert _metric(client, "trinity_cache_lookups_total", cache=name, result="miss") == 2
    assert client.delete(f"/v1/caches/{name}/tenants/acme").json()["removed"] == 1
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "acme", "text": PROMPT})
    assert r.json()["hit"] is False
    assert client.delete(f"/v1/caches/{name}").status_code == 200
    assert client.post(f"/v1/caches/{name}/lookup", json={"tenant": "acme", "text": PROMPT}).status_code == 404


def _unit(i: int) -> list[float]:
    v = [0.0] * 8
    v[i] = 1.0
    return v


def test_ttl_and_lru_eviction(client, name):
    client.post("/v1/caches", json={"name": name, "kind": "prompt", "dim": 8, "embedder": "none",
                                    "ttl_s": 0.6, "max_entries": 2})
    assert client.get(f"/v1/caches/{name}").json()["threshold"] == 0.95  # the prompt-kind default
    for i in range(3):  # the third insert evicts entry 0 (least recently used)
        r = client.post(f"/v1/caches/{name}/insert", json={"tenant": "t", "vector": _unit(i), "value": {"kv": i},
                                                           "ttl_s": 60 if i == 2 else None})
        assert r.status_code == 201
    look = [client.post(f"/v1/caches/{name}/lookup", json={"tenant": "t", "vector": _unit(i)}).json()["hit"]
            for i in range(3)]
    assert look == [False, True, True]
    time.sleep(1.2)  # entry 1 expires (ttl 0.6 s); entry 2 has its own 60 s TTL; the sweeper runs every 0.2 s
    look = [client.post(f"/v1/caches/{name}/lookup", json={"tenant": "t", "vector": _unit(i)}).json()["hit"]
            for i in range(3)]
    assert look == [False, False, True]
    stats = client.get(f"/v1/caches/{name}").json()
    assert stats["evictions"] == {"ttl": 1, "lru": 1} and stats["entries"] == 1
    assert _metric(client, "trinity_cache_evictions_total", cache=name, reason="ttl") == 1
    assert _metric(client, "trinity_cache_evictions_total", cache=name, reason="lru") == 1
    client.delete(f"/v1/caches/{name}")


def test_cache_input_errors(client, name):
    client.post("/v1/caches", json={"name": name, "dim": 8, "embedder": "none"})
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "t"})
    assert r.status_code == 422 and error_of(r)["field"] == "text"
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "a b", "vector": _unit(0)})
    assert r.status_code == 422 and error_of(r)["field"] == "tenant"
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "t", "vector": [0.1] * 7})
    assert r.status_code == 422 and error_of(r)["field"] == "vector"
    r = client.post(f"/v1/caches/{name}/insert", json={"tenant": "t", "vector": _unit(0)})
    assert r.status_code == 422 and error_of(r)["field"] == "value"
    r = client.post(f"/v1/caches/{name}/insert", json={"tenant": "t", "vector": _unit(0), "value": "x" * 70_000})
    assert r.status_code == 422 and error_of(r)["field"] == "value"
    r = client.post(f"/v1/caches/{name}/lookup", json={"tenant": "t", "text": "no embedder here"})
    assert r.status_code == 422 and error_of(r)["field"] == "text"
    assert client.post("/v1/caches", json={"name": name}).status_code == 409
    client.delete(f"/v1/caches/{name}")
