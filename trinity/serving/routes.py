"""Collection routes: create / list / describe / drop, vectors upsert / get / delete, search."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from trinity.engine import OverloadedError, RequestStatus, SearchResult
from trinity.engine.engine import EngineClosedError
from trinity.serving.errors import ERROR_RESPONSES, ApiError, FastJSONResponse, Overloaded
from trinity.serving.models import (
    MAX_UPSERT, CreateCollection, DeleteResponse, GetResponse, GetVectors, IdsRequest, SearchBody, SearchResponse,
    UpsertResponse, UpsertVectors, compact_json,
)
from trinity.serving.spec import CollectionSpec, InvalidRequest
from trinity.serving.state import PoolState, as_vectors, check_finite, when_all_done

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=ERROR_RESPONSES)
NamePath = Path(description="Collection name", max_length=64)


def _state(request: Request) -> PoolState:
    return request.app.state.pool


# ---------------------------------------------------------------------- collections
@router.post("", status_code=201, summary="Create a collection")
async def create_collection(body: CreateCollection, request: Request) -> Response:
    st = _state(request)
    ivf = body.index == "ivf"
    spec = CollectionSpec(body.name, int(body.dim), body.metric, body.index,
                          (body.nlist or 1024) if ivf else None, (body.nprobe or 8) if ivf else None,
                          body.train_size if ivf else None, body.embedder)
    coll = await st.run_io(st.catalog.create, spec)
    return FastJSONResponse(await st.run_io(coll.describe), status_code=201)


@router.get("", summary="List collections")
async def list_collections(request: Request) -> Response:
    st = _state(request)
    colls = list(st.catalog.collections.values())
    out = [{**c.spec.to_json(), "count": c.index.ntotal} for c in colls]
    return FastJSONResponse({"collections": out})


@router.get("/{name}", summary="Describe a collection (size, parameters, memory, LSNs)")
async def describe_collection(request: Request, name: str = NamePath) -> Response:
    st = _state(request)
    return FastJSONResponse(await st.run_io(st.catalog.get(name).describe))


@router.delete("/{name}", summary="Drop a collection and delete its files")
async def drop_collection(request: Request, name: str = NamePath) -> Response:
    st = _state(request)
    await st.run_io(st.catalog.drop, name)  # NOTE: also drops a quarantined collection (its files too)
    return FastJSONResponse({"dropped": name})


@router.post("/{name}/train", summary="IVF: train now on the buffered vectors")
async def train_collection(request: Request, name: str = NamePath) -> Response:
    st = _state(request)
    coll = st.catalog.get(name)
    await st.run_io(coll.train)
    return FastJSONResponse(await st.run_io(coll.describe))


# ---------------------------------------------------------------------- vectors
def _decode_b64(data: str, dim: int) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("vectors_b64", "not valid base64") from None
    if not raw or len(raw) % (4 * dim):
        raise InvalidRequest("vectors_b64", f"decoded length {len(raw)} is not a multiple of 4 * dim ({4 * dim})")
    arr = np.frombuffer(raw, dtype="<f4").reshape(-1, dim).astype(np.float32)
    if arr.shape[0] > MAX_UPSERT:
        raise InvalidRequest("vectors_b64", f"{arr.shape[0]} vectors; at most {MAX_UPSERT} per request")
    return check_finite(arr, "vectors_b64")


def _parse_upsert(raw: bytes, dim: int) -> tuple[UpsertVectors, np.ndarray | None]:
    """JSON -> model -> float32 array; runs in a worker thread (see upsert_vectors)."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON ({e})", "body") from None
    except (ValueError, RecursionError) as e:  # e.g. huge integers, absurd nesting
        raise ApiError(400, f"body cannot be parsed ({type(e).__name__})", "body") from None
    try:
        body = UpsertVectors.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
    if body.vectors is not None:
        return body, as_vectors(body.vectors, dim, "vectors")
    if body.vectors_b64 is not None:
        return body, _decode_b64(body.vectors_b64, dim)
    return body, None


@router.put("/{name}/vectors", response_model=UpsertResponse, summary="Upsert vectors (or texts) with payloads",
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/UpsertVectors"}}}}})
async def upsert_vectors(request: Request, name: str = NamePath) -> Response:
    """Insert or replace points.  Acknowledged only after the WAL record is fsynced.

    Body: :class:`~trinity.serving.models.UpsertVectors`.
    """
    st = _state(request)
    coll = st.catalog.get(name)
    dim = coll.spec.dim
    # NOTE: parsed and validated in a worker thread: 10k x 384 floats of JSON take ~1 s
    # of CPU, which on the event loop would stall every decode-stage search meanwhile.
    body, vectors = await st.run_io(_parse_upsert, await request.body(), dim)
    if vectors is None:
        vectors = await st.embed(body.texts, coll.spec.embedder, "texts")
    n = vectors.shape[0]
    ids = None
    if body.ids is not None:
        if len(body.ids) != n:
            raise InvalidRequest("ids", f"got {len(body.ids)} ids for {n} vectors")
        ids = np.asarray(body.ids, dtype=np.int64)
        if np.unique(ids).size != n:
            raise InvalidRequest("ids", "duplicate ids in one request")
    if body.payloads is not None and len(body.payloads) != n:
        raise InvalidRequest("payloads", f"got {len(body.payloads)} payloads for {n} vectors")
    payloads = [None if p is None else compact_json(p) for p in body.payloads] if body.payloads else [None] * n
    out_ids, lsn = await st.run_io(coll.upsert, ids, vectors, payloads)
    return FastJSONResponse({"ids": out_ids.tolist(), "count": n, "lsn": lsn})


@router.post("/{name}/vectors/get", response_model=GetResponse, summary="Get points by id")
async def get_vectors(body: GetVectors, request: Request, name: str = NamePath) -> Response:
    st = _state(request)
    coll = st.catalog.get(name)
    found, missing = await st.run_io(coll.get, list(dict.fromkeys(body.ids)), body.with_vectors)
    out: dict[str, Any] = {"ids": [p["id"] for p in found], "missing": missing}
    if body.with_payloads:
        out["payloads"] = [None if p["payload"] is None else json.loads(p["payload"]) for p in found]
    if body.with_vectors:
        out["vectors"] = [p["vector"].tolist() for p in found]
        return await st.run_io(FastJSONResponse, out)  # NOTE: up to 10k x dim floats: render off the loop
    return FastJSONResponse(out)


@router.post("/{name}/vectors/delete", response_model=DeleteResponse, summary="Delete points by id")
async def delete_vectors(body: IdsRequest, request: Request, name: str = NamePath) -> Response:
    st = _state(request)
    coll = st.catalog.get(name)
    deleted, lsn = await st.run_io(coll.delete, np.asarray(list(dict.fromkeys(body.ids)), dtype=np.int64))
    return FastJSONResponse({"deleted": deleted, "lsn": lsn})


# ---------------------------------------------------------------------- search
def _result_json(res: SearchResult, payloads: dict[int, str] | None) -> dict[str, Any]:
    keep = res.ids >= 0
    ids = res.ids[keep].tolist()
    out: dict[str, Any] = {
        "ids": ids, "scores": res.scores[keep].astype(np.float64).round(6).tolist(),
        "status": res.status.value, "partial": res.partial, "fraction_scanned": round(res.fraction_scanned, 4),
        "timings": {"queue_ms": round(res.queue_ms, 3), "engine_ms": round(res.total_ms, 3)},
    }
    if payloads is not None:
        out["payloads"] = [None if (p := payloads.get(i)) is None else json.loads(p) for i in ids]
    return out


@router.post("/{name}/search", response_model=SearchResponse, summary="k-NN search (one or a batch of queries)")
async def search(body: SearchBody, request: Request, name: str = NamePath) -> Response:
    """Queries go through the shared continuous-batching engine with their ``stage`` and
    ``deadline_ms``; a deadline returns the best-so-far answer flagged ``partial``."""
    t0 = time.perf_counter()
    st = _state(request)
    coll = st.catalog.get(name)
    embed_ms = 0.0
    if body.vector is not None or body.vectors is not None:
        rows = [body.vector] if body.vector is not None else body.vectors
        field = "vector" if body.vector is not None else "vectors"
        queries = as_vectors(rows, coll.spec.dim, field, single=body.vector is not None)
    else:
        texts = [body.text] if body.text is not None else body.texts
        queries = await st.embed(texts, coll.spec.embedder, "text" if body.text is not None else "texts")
        embed_ms = (time.perf_counter() - t0) * 1e3
    results = await _run_searches(st, coll, queries, body)
    payloads = coll.payloads if body.with_payloads else None
    return FastJSONResponse({"results": [_result_json(r, payloads) for r in results],
                             "timings": {"embed_ms": round(embed_ms, 3),
                                         "total_ms": round((time.perf_counter() - t0) * 1e3, 3)}})


async def _run_searches(st: PoolState, coll, queries: np.ndarray, body: SearchBody) -> list[SearchResult]:
    st.admit()
    try:
        gen = coll.acquire()
        futures = []
        try:
            for q in queries:
                futures.append(st.engine.submit(gen.engine_name, q, body.k, nprobe=body.nprobe, stage=body.stage,
                                                deadline_ms=body.deadline_ms))
        except EngineClosedError:
            raise ApiError(503, "the server is shutting down") from None
        except OverloadedError:
            for f in futures:  # NOTE: all queries of a request, or none
                st.engine.abort(f.request_id)
            raise
        finally:
            # NOTE: unpin only when the engine is done with every query, even if this
            # handler is cancelled (client gone): the engine must never see a dropped name.
            when_all_done(futures, lambda: coll.release(gen))
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except asyncio.CancelledError:
            for f in futures:
                st.engine.abort(f.request_id)
            raise
    finally:
        st.done()
    for r in results:
        if r.status is RequestStatus.FINISHED_REJECTED and r.message.startswith("overloaded"):
            raise Overloaded(r.message, st.config.retry_after_s)
        if r.status is RequestStatus.FINISHED_ERROR:
            if "unknown collection" in r.message:
                raise ApiError(404, f"collection {coll.spec.name!r} was dropped during the search", "name")
            raise RuntimeError(f"search failed: {r.message}")
        if r.status is RequestStatus.FINISHED_ABORTED:
            raise ApiError(503, "the search was aborted (server shutting down)")
    return results
