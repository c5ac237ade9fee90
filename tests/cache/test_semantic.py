"""SemanticCache in-process: hits, thresholds, TTL, LRU, tenant isolation, counters."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from trinity.cache import SemanticCache
from trinity.engine import SearchEngine

DIM = 16


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def engine():
    with SearchEngine() as e:
        yield e


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _lookup(cache: SemanticCache, tenant: str, vec: np.ndarray, **kw):
    return asyncio.run(cache.lookup(tenant, vec, **kw))


def test_hit_miss_and_threshold(engine):
    cache = SemanticCache("c", engine, dim=DIM, threshold=0.9)
    a = _unit(1)
    assert not _lookup(cache, "t", a).hit  # empty tenant
    cache.insert("t", a, '"answer A"', key="prompt A")
    hit = _lookup(cache, "t", a + 0.01 * _unit(2))
    assert hit.hit and hit.value == '"answer A"' and hit.key == "prompt A" and hit.similarity > 0.99
    miss = _lookup(cache, "t", _unit(3))
    assert not miss.hit and miss.similarity is not None and miss.similarity < 0.9
    assert _lookup(cache, "t", _unit(3), threshold=-1.0).hit  # per-lookup threshold override
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 2


def test_tenants_are_structurally_isolated(engine):
    cache = SemanticCache("c", engine, dim=DIM, threshold=0.5)
    a = _unit(1)
    cache.insert("tenant-a", a, '"secret of A"', key="same prompt")
    res = _lookup(cache, "tenant-b", a, threshold=-1.0)  # identical vector, any similarity accepted
    assert not res.hit and res.similarity is None  # B's index holds nothing: there is no candidate at all
    cache.insert("tenant-b", a, '"B"', key="same prompt")
    assert _lookup(cache, "tenant-a", a).value == '"secret of A"'
    assert _lookup(cache, "tenant-b", a).value == '"B"'
    assert len({t.engine_name for t in cache._tenants.values()}) == 2  # one engine collection per tenant


def test_ttl_expiry_and_sweep(engine):
    clock = FakeClock()
    cache = SemanticCache("c", engine, dim=DIM, ttl_s=10.0, clock=clock)
    a, b = _unit(1), _unit(2)
    cache.insert("t", a, '"a"')
    cache.insert("t", b, '"b"', ttl_s=100.0)  # per-entry TTL
    clock.t += 11
    assert not _lookup(cache, "t", a).hit  # expired entries never hit, even before the sweep
    assert _lookup(cache, "t", b).hit
    assert cache.sweep() == 1
    assert cache.stats()["entries"] == 1 and cache.stats()["evictions"]["ttl"] == 1


def test_lru_eviction_respects_recent_use(engine):
    cache = SemanticCache("c", engine, dim=DIM, max_entries=2)
    a, b, c = _unit(1), _unit(2), _unit(3)
    cache.insert("t", a, '"a"')
    cache.insert("t", b, '"b"')
    assert _lookup(cache, "t", a).hit  # a is now more recently used than b
    cache.insert("t", c, '"c"')  # evicts b, the least recently used
    assert _lookup(cache, "t", a).hit and _lookup(cache, "t", c).hit
    assert not _lookup(cache, "t", b).hit
    assert cache.stats()["evictions"]["lru"] == 1
    cache.insert("other", a, '"x"')
    cache.insert("other", b, '"y"')
    assert _lookup(cache, "t", a).hit  # max_entries is per tenant: other's inserts evict nothing of t's


def test_same_key_replaces_and_drop_tenant(engine):
    cache = SemanticCache("c", engine, dim=DIM)
    a = _unit(1)
    cache.insert("t", a, '"v1"', key="k")
    cache.insert("t", a, '"v2"', key="k")
    assert cache.stats()["entries"] == 1 and _lookup(cache, "t", a).value == '"v2"'
    assert cache.drop_tenant("t") == 1
    assert not _lookup(cache, "t", a).hit
    cache.close()
    assert engine.collections.names() == []
