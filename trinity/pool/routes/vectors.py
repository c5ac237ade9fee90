"""Points of a collection: upsert (acknowledged after the WAL fsync), get and delete by id."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from trinity.errors import ErrorCode, InvalidArgument, TrinityError
from trinity.pool.errors import ERROR_RESPONSES, FastJSONResponse
from trinity.pool.protocol import (
    MAX_UPSERT,
    DeleteResponse,
    GetResponse,
    GetVectors,
    IdsRequest,
    UpsertResponse,
    UpsertVectors,
    compact_json,
)
from trinity.pool.routes.common import COLLECTION_NAME, as_vectors, check_finite, pool_state

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=ERROR_RESPONSES)
_UPSERT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/UpsertVectors"}}}}}


def _decode_b64(data: str, dim: int) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("not valid base64", "vectors_b64") from None
    if not raw or len(raw) % (4 * dim):
        raise InvalidArgument(f"decoded length {len(raw)} is not a multiple of 4 * dim ({4 * dim})", "vectors_b64")
    arr = np.frombuffer(raw, dtype="<f4").reshape(-1, dim).astype(np.float32)
    if arr.shape[0] > MAX_UPSERT:
        raise InvalidArgument(f"{arr.shape[0]} vectors; at most {MAX_UPSERT} per request", "vectors_b64")
    return check_finite(arr, "vectors_b64")


def _parse_upsert(raw: bytes, dim: int) -> tuple[UpsertVectors, np.ndarray | None]:
    """JSON -> model -> float32 array; runs in a worker thread (see upsert_vectors)."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrinityError(f"body is not valid JSON ({e})", "body", code=ErrorCode.INVALID_JSON) from None
    except (ValueError, RecursionError) as e:
        raise TrinityError(f"body cannot be parsed ({type(e).__name__})", "body", code=ErrorCode.INVALID_JSON) from None
    try:
        body = UpsertVectors.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
    if body.vectors is not None:
        return body, as_vectors(body.vectors, dim, "vectors")
    if body.vectors_b64 is not None:
        return body, _decode_b64(body.vectors_b64, dim)
    return body, None


def _ids_and_payloads(body: UpsertVectors, n: int) -> tuple[np.ndarray | None, list[str | None]]:
    ids = None
    if body.ids is not None:
        if len(body.ids) != n:
            raise InvalidArgument(f"got {len(body.ids)} ids for {n} vectors", "ids")
        ids = np.asarray(body.ids, dtype=np.int64)
        if np.unique(ids).size != n:
            raise InvalidArgument("duplicate ids in one request", "ids")
    if body.payloads is not None and len(body.payloads) != n:
        raise InvalidArgument(f"got {len(body.payloads)} payloads for {n} vectors", "payloads")
    payloads = [None if p is None else compact_json(p) for p in body.payloads] if body.payloads else [None] * n
    return ids, payloads


@router.put("/{name}/vectors", response_model=UpsertResponse, summary="Upsert vectors (or texts) with payloads",
            openapi_extra=_UPSERT_BODY)
async def upsert_vectors(request: Request, name: str = COLLECTION_NAME) -> Response:
    """Insert or replace points (body: ``UpsertVectors``); acknowledged after the WAL fsync."""
    st = pool_state(request)
    coll = st.catalog.get(name)
    # NOTE: parsed off the event loop: 10k x 384 floats of JSON would stall every search meanwhile.
    body, vectors = await st.run_io(_parse_upsert, await request.body(), coll.spec.dim)
    if vectors is None:
        vectors = await st.embed(body.texts, coll.spec.embedder, "texts")
    ids, payloads = _ids_and_payloads(body, vectors.shape[0])
    out_ids, lsn = await st.run_io(coll.upsert, ids, vectors, payloads)
    return FastJSONResponse({"ids": out_ids.tolist(), "count": vectors.shape[0], "lsn": lsn})


@router.post("/{name}/vectors/get", response_model=GetResponse, summary="Get points by id")
async def get_vectors(body: GetVectors, request: Request, name: str = COLLECTION_NAME) -> Response:
    st = pool_state(request)
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
async def delete_vectors(body: IdsRequest, request: Request, name: str = COLLECTION_NAME) -> Response:
    st = pool_state(request)
    coll = st.catalog.get(name)
    deleted, lsn = await st.run_io(coll.delete, np.asarray(list(dict.fromkeys(body.ids)), dtype=np.int64))
    return FastJSONResponse({"deleted": deleted, "lsn": lsn})
