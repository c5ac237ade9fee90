"""Upserts and deletes over replicas: a replicated collection gets every write on every replica; a
sharded one gets each point on the shard its id hashes to.  Ids the client left out are assigned
here, before the fan-out, so that every replica stores the same points under the same ids."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np

from trinity.pool.protocol import IdsRequest
from trinity.pool.ray.asgi import Exchange
from trinity.pool.ray.links import json_exchange
from trinity.pool.ray.placement import Placement, shard_of
from trinity.pool.ray.router import Router, body_of, worst
from trinity.pool.routes.vectors import _ids_and_payloads, _parse_upsert

__all__ = ["delete", "split", "upsert"]


def split(p: Placement, holders: list[int], ids: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of ``ids`` per holder: all of them on every replica, or each on its shard."""
    if not p.sharded:
        return {i: np.arange(ids.size) for i in holders}
    shards = shard_of(ids, p.num_shards)
    return {i: pos for i in holders if (pos := np.flatnonzero(shards == i)).size}


def _upsert_body(body: Any, ids: np.ndarray, vectors: np.ndarray | None, pos: np.ndarray) -> bytes:
    out: dict[str, Any] = {"ids": ids[pos].tolist()}
    if vectors is not None:
        out["vectors_b64"] = base64.b64encode(np.ascontiguousarray(vectors[pos], dtype="<f4").tobytes()).decode()
    else:
        out["texts"] = [body.texts[j] for j in pos]
    if body.payloads is not None:
        out["payloads"] = [body.payloads[j] for j in pos]
    return json.dumps(out, separators=(",", ":")).encode()


async def upsert(router: Router, name: str, p: Placement, raw: bytes) -> Exchange:
    body, vectors = await asyncio.to_thread(_parse_upsert, raw, p.dim)
    n = vectors.shape[0] if vectors is not None else len(body.texts)
    ids, _ = _ids_and_payloads(body, n)
    if ids is None:
        ids = await router.allocate(name, p, n)
    else:
        router.saw(name, ids)
    parts = split(p, router.holders(p), ids)
    bodies = await asyncio.to_thread(lambda: {i: _upsert_body(body, ids, vectors, pos) for i, pos in parts.items()})
    async with router.claim(name, ids):
        answers = await router.write_all("PUT", f"/v1/collections/{name}/vectors", bodies)
    if (bad := worst(answers)) is not None:
        return bad
    lsn = max(body_of(ex)["lsn"] for ex in answers.values())
    return json_exchange({"ids": ids.tolist(), "count": n, "lsn": lsn})


async def delete(router: Router, name: str, p: Placement, req: IdsRequest) -> Exchange:
    ids = np.asarray(list(dict.fromkeys(req.ids)), dtype=np.int64)
    parts = split(p, router.holders(p), ids)
    bodies = {i: json.dumps({"ids": ids[pos].tolist()}).encode() for i, pos in parts.items()}
    async with router.claim(name, ids):
        answers = await router.write_all("POST", f"/v1/collections/{name}/vectors/delete", bodies)
    if (bad := worst(answers)) is not None:
        return bad
    got = [body_of(ex) for ex in answers.values()]
    deleted = sum(g["deleted"] for g in got) if p.sharded else max((g["deleted"] for g in got), default=0)
    return json_exchange({"deleted": deleted, "lsn": max((g["lsn"] for g in got), default=0)})
