"""Semantic caches: create, list, describe, drop, lookup, insert, drop a tenant."""

from __future__ import annotations

import json
import time

import numpy as np
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from trinity.errors import Conflict, ErrorCode, NotFound
from trinity.pool.errors import ERROR_RESPONSES, FastJSONResponse
from trinity.pool.protocol import CacheInsert, CacheLookup, CreateCache, LookupResponse, compact_json
from trinity.pool.routes.common import CACHE_NAME, as_vectors, pool_state
from trinity.pool.state import PoolState
from trinity.pool.storage.spec import CacheSpec

__all__ = ["router"]

router = APIRouter(prefix="/v1/caches", tags=["caches"], responses=ERROR_RESPONSES)


def _dropped(name: str, during: str) -> NotFound:
    return NotFound(f"cache {name!r} was dropped during the {during}", "name", code=ErrorCode.UNKNOWN_CACHE)


def _describe(spec: CacheSpec, st: PoolState) -> dict:
    cache = st.caches.get(spec.name)
    return {**spec.to_json(), **(cache.stats() if cache is not None else {})}


@router.post("", status_code=201, summary="Create a semantic cache (kind prompt|answer)")
async def create_cache(body: CreateCache, request: Request) -> Response:
    st = pool_state(request)
    spec = CacheSpec(body.name, body.kind, int(body.dim), "cosine", float(body.threshold), body.ttl_s,
                     body.max_entries, body.embedder)
    await st.run_io(st.catalog.add_cache, spec)
    st.caches[spec.name] = st.new_cache(spec)
    return FastJSONResponse(_describe(spec, st), status_code=201)


@router.get("", summary="List caches")
async def list_caches(request: Request) -> Response:
    st = pool_state(request)
    specs = [s for s in list(st.catalog.cache_specs.values()) if s.name in st.caches]  # as GET /{name} sees them
    return FastJSONResponse({"caches": [_describe(s, st) for s in specs]})


@router.get("/{name}", summary="Describe a cache: parameters, entries, hits, misses, evictions")
async def describe_cache(request: Request, name: str = CACHE_NAME) -> Response:
    st = pool_state(request)
    return FastJSONResponse(_describe(st.cache(name).spec, st))


@router.delete("/{name}", summary="Drop a cache and all its entries")
async def drop_cache(request: Request, name: str = CACHE_NAME) -> Response:
    st = pool_state(request)
    cache = st.cache(name)
    await st.run_io(st.catalog.drop_cache, name)
    st.caches.pop(name, None)
    await st.run_io(cache.close)
    return FastJSONResponse({"dropped": name})


async def _key_vector(st: PoolState, body, dim: int, embedder: str | None) -> np.ndarray:
    if body.vector is not None:
        return as_vectors([body.vector], dim, "vector", single=True)[0]
    return (await st.embed([body.text], embedder, "text"))[0]


@router.post("/{name}/lookup", response_model=LookupResponse, summary="Look a prompt up in one tenant's entries")
async def lookup(body: CacheLookup, request: Request, name: str = CACHE_NAME) -> Response:
    """Only ``tenant``'s own entries are searched (one index per tenant)."""
    t0 = time.perf_counter()
    st = pool_state(request)
    cache = st.cache(name)
    vec = await _key_vector(st, body, cache.spec.dim, cache.spec.embedder)
    st.admit()
    try:
        res = await cache.lookup(body.tenant, vec, threshold=body.threshold, stage=body.stage,
                                 deadline_ms=body.deadline_ms)
    except KeyError:
        raise _dropped(name, "lookup") from None
    finally:
        st.done()
    return FastJSONResponse({
        "hit": res.hit, "similarity": None if res.similarity is None else round(res.similarity, 6),
        "value": None if res.value is None else json.loads(res.value), "key": res.key, "entry_id": res.entry_id,
        "age_s": None if res.age_s is None else round(res.age_s, 3),
        "timings": {"total_ms": round((time.perf_counter() - t0) * 1e3, 3)}})


@router.post("/{name}/insert", status_code=201, summary="Insert an entry for a tenant")
async def insert(body: CacheInsert, request: Request, name: str = CACHE_NAME) -> Response:
    st = pool_state(request)
    cache = st.cache(name)
    vec = await _key_vector(st, body, cache.spec.dim, cache.spec.embedder)
    value = compact_json(body.value)
    key = body.key if body.key is not None else body.text
    try:
        entry_id = await st.run_io(lambda: cache.insert(body.tenant, vec, value, key=key, ttl_s=body.ttl_s))
    except KeyError:
        raise _dropped(name, "insert") from None
    except OverflowError as e:
        raise Conflict(str(e), "tenant") from None
    return FastJSONResponse({"entry_id": entry_id, "tenant": body.tenant}, status_code=201)


@router.delete("/{name}/tenants/{tenant}", summary="Forget every entry of one tenant")
async def drop_tenant(request: Request, name: str = CACHE_NAME, tenant: str = Path(max_length=128)) -> Response:
    st = pool_state(request)
    cache = st.cache(name)
    removed = await st.run_io(cache.drop_tenant, tenant)
    return FastJSONResponse({"tenant": tenant, "removed": removed})
