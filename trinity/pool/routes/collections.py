"""Collections: create, list, describe, drop, train."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from trinity.pool.errors import ERROR_RESPONSES, FastJSONResponse
from trinity.pool.protocol import CreateCollection
from trinity.pool.routes.common import COLLECTION_NAME, pool_state
from trinity.pool.storage.spec import CollectionSpec

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, summary="Create a collection")
async def create_collection(body: CreateCollection, request: Request) -> Response:
    st = pool_state(request)
    ivf = body.index == "ivf"
    spec = CollectionSpec(body.name, int(body.dim), body.metric, body.index,
                          (body.nlist or 1024) if ivf else None, (body.nprobe or 8) if ivf else None,
                          body.train_size if ivf else None, body.embedder,
                          (body.graph_degree or 40) if body.index == "graph" else None)
    coll = await st.run_io(st.catalog.create, spec)
    return FastJSONResponse(await st.run_io(coll.describe), status_code=201)


@router.get("", summary="List collections")
async def list_collections(request: Request) -> Response:
    colls = list(pool_state(request).catalog.collections.values())
    return FastJSONResponse({"collections": [{**c.spec.to_json(), "count": c.index.ntotal} for c in colls]})


@router.get("/{name}", summary="Describe a collection (size, parameters, memory, LSNs)")
async def describe_collection(request: Request, name: str = COLLECTION_NAME) -> Response:
    st = pool_state(request)
    return FastJSONResponse(await st.run_io(st.catalog.get(name).describe))


@router.delete("/{name}", summary="Drop a collection and delete its files")
async def drop_collection(request: Request, name: str = COLLECTION_NAME) -> Response:
    st = pool_state(request)
    await st.run_io(st.catalog.drop, name)  # NOTE: also drops a quarantined collection (its files too)
    return FastJSONResponse({"dropped": name})


@router.post("/{name}/train", summary="IVF: train now on the buffered vectors")
async def train_collection(request: Request, name: str = COLLECTION_NAME) -> Response:
    st = pool_state(request)
    coll = st.catalog.get(name)
    await st.run_io(coll.train)
    return FastJSONResponse(await st.run_io(coll.describe))
