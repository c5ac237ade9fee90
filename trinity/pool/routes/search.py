"""k-NN search through the shared continuous-batching engine, by stage and deadline."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from trinity.engine import SearchResult
from trinity.pool.errors import ERROR_RESPONSES, FastJSONResponse
from trinity.pool.outcomes import engine_error, result_error
from trinity.pool.protocol import SearchBody, SearchResponse
from trinity.pool.routes.common import COLLECTION_NAME, as_vectors, pool_state, when_all_done
from trinity.pool.state import PoolState
from trinity.pool.storage.collection import DurableCollection

__all__ = ["router"]

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=ERROR_RESPONSES)


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
async def search(body: SearchBody, request: Request, name: str = COLLECTION_NAME) -> Response:
    """Queries run with their ``stage`` and ``deadline_ms``; a deadline returns the best-so-far
    answer flagged ``partial``."""
    t0 = time.perf_counter()
    st = pool_state(request)
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


async def _run_searches(st: PoolState, coll: DurableCollection, queries: np.ndarray,
                        body: SearchBody) -> list[SearchResult]:
    st.admit()
    try:
        gen = coll.acquire()
        futures = []
        try:
            for q in queries:
                futures.append(st.engine.submit(gen.engine_name, q, body.k, nprobe=body.nprobe, stage=body.stage,
                                                deadline_ms=body.deadline_ms, search_width=body.search_width))
        except Exception as exc:
            for f in futures:  # NOTE: all queries of a request, or none
                st.engine.abort(f.request_id)
            err = engine_error(exc)
            if err is None:
                raise
            raise err from None
        finally:
            # NOTE: unpin only once the engine is done with every query, even if the client left.
            when_all_done(futures, lambda: coll.release(gen))
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except asyncio.CancelledError:
            for f in futures:
                st.engine.abort(f.request_id)
            raise
    finally:
        st.done()
    _raise_for(coll, results)
    return results


def _raise_for(coll: DurableCollection, results: list[SearchResult]) -> None:
    for r in results:
        err = result_error(r, coll.spec.name)
        if err is not None:
            raise err
