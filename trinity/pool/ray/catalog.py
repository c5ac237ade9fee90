"""Collections over replicas: create on every holder (``placement``: ``replicated`` or
``sharded``, ``num_shards``), list and describe (a sharded collection's counts summed), drop,
train, get points by id."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np

from trinity.errors import InvalidArgument
from trinity.pool.protocol import GetVectors
from trinity.pool.ray.asgi import Exchange
from trinity.pool.ray.links import json_exchange
from trinity.pool.ray.placement import Placement
from trinity.pool.ray.router import Router, body_of, worst
from trinity.pool.ray.writes import split

__all__ = ["create", "describe", "drop", "get_points", "list_all", "train"]


def _placement_of(router: Router, data: dict[str, Any]) -> tuple[str, int]:
    mode = data.pop("placement", router.cfg.placement)
    if mode not in ("replicated", "sharded"):
        raise InvalidArgument("placement must be 'replicated' or 'sharded'", "placement")
    n = len(router.replicas)
    shards = data.pop("num_shards", n)
    if type(shards) is not int or not 1 <= shards <= n:
        raise InvalidArgument(f"num_shards must be an integer from 1 to {n} (the pool replicas)", "num_shards")
    return mode, shards


async def create(router: Router, raw: bytes) -> Exchange:
    try:
        data = json.loads(raw)
        assert isinstance(data, dict)
    except (ValueError, AssertionError):
        return await router.read_one(list(range(len(router.replicas))), "POST", "/v1/collections", raw)
    mode, shards = _placement_of(router, data)
    name = data.get("name")
    known = isinstance(name, str) and await router.placement(name) is not None
    holders = list(range(shards)) if mode == "sharded" else list(range(len(router.replicas)))
    if known:
        holders = holders[:1]  # NOTE: the pool's own 409
    answers = await router.write_all("POST", "/v1/collections", {i: json.dumps(data).encode() for i in holders})
    made = {i: ex for i, ex in answers.items() if ex.status == 201}
    failed = {i: ex for i, ex in answers.items() if ex.status != 201}
    if known or (failed and not made) or any(_code(ex) != "already_exists" for ex in failed.values()):
        if made and not known:
            await router.write_all("DELETE", f"/v1/collections/{name}", {i: b"" for i in made})
        return next(iter(failed.values()))
    first = body_of(next(iter(made.values())))
    p = Placement(mode, shards if mode == "sharded" else 1, int(first["dim"]), str(first["metric"]))
    await router.publish(name, p)
    return json_exchange({**first, "placement": p.to_json()}, 201)


def _code(ex: Exchange) -> str | None:
    try:
        return body_of(ex)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


async def list_all(router: Router) -> Exchange:
    got = await router.gather(range(len(router.replicas)), "GET", "/v1/collections")
    merged: dict[str, dict[str, Any]] = {}
    for i, ex in got.items():
        if ex is None or ex.status != 200:
            continue
        for c in body_of(ex)["collections"]:
            p = router.placements.get(c["name"])
            if c["name"] not in merged:
                merged[c["name"]] = {**c, "placement": None if p is None else p.to_json(), "count": 0, "_seen": set()}
            entry = merged[c["name"]]
            if p is not None and p.sharded or not entry["_seen"]:
                entry["count"] += c["count"]
            entry["_seen"].add(i)
    return json_exchange({"collections": [{k: v for k, v in c.items() if k != "_seen"} for c in merged.values()]})


async def describe(router: Router, name: str, p: Placement) -> Exchange:
    path = f"/v1/collections/{name}"
    if not p.sharded:
        ex = await router.read_one(router.holders(p), "GET", path)
        return ex if ex.status != 200 else json_exchange({**body_of(ex), "placement": p.to_json()})
    got = await router.gather(router.holders(p), "GET", path)
    parts = {i: body_of(ex) for i, ex in got.items() if ex is not None and ex.status == 200}
    if not parts:
        return next((ex for ex in got.values() if ex is not None), None) or await router.read_one([0], "GET", path)
    out = dict(next(iter(parts.values())))
    out["count"] = sum(d["count"] for d in parts.values())
    out["memory"] = {key: sum(d["memory"].get(key, 0) for d in parts.values()) for key in out["memory"]}
    out["shards"] = [{"replica": i, **({k: parts[i][k] for k in ("count", "state", "lsn", "durable_lsn")}
                                       if i in parts else {"state": "unavailable"})} for i in router.holders(p)]
    return json_exchange({**out, "placement": p.to_json()})


async def drop(router: Router, name: str, p: Placement) -> Exchange:
    answers = await router.write_all("DELETE", f"/v1/collections/{name}", {i: b"" for i in router.holders(p)})
    bad = [ex for ex in answers.values() if ex.status >= 300 and _code(ex) != "unknown_collection"]
    if bad:
        return bad[0]
    await router.publish(name, None)
    return json_exchange({"dropped": name})


async def train(router: Router, name: str, p: Placement) -> Exchange:
    answers = await router.write_all("POST", f"/v1/collections/{name}/train", {i: b"" for i in router.holders(p)})
    if (bad := worst(answers)) is not None:
        return bad
    return await describe(router, name, p)


async def get_points(router: Router, name: str, p: Placement, req: GetVectors, raw: bytes) -> Exchange:
    path = f"/v1/collections/{name}/vectors/get"
    if not p.sharded:
        return await router.read_one(router.holders(p), "POST", path, raw)
    ids = np.asarray(list(dict.fromkeys(req.ids)), dtype=np.int64)
    parts = split(p, router.holders(p), ids)
    query = json.loads(raw)
    got = await asyncio.gather(*(router.read_one([i], "POST", path, json.dumps({**query, "ids": ids[pos].tolist()})
                                                 .encode()) for i, pos in parts.items()))
    found: dict[int, tuple[Any, Any]] = {}
    for ex in got:
        if ex.status != 200:
            return ex
        data = body_of(ex)
        none = [None] * len(data["ids"])
        found.update(zip(data["ids"], zip(data.get("payloads") or none, data.get("vectors") or none)))
    out: dict[str, Any] = {"ids": [i for i in ids.tolist() if i in found],
                           "missing": [i for i in ids.tolist() if i not in found]}
    if req.with_payloads:
        out["payloads"] = [found[i][0] for i in out["ids"]]
    if req.with_vectors:
        out["vectors"] = [found[i][1] for i in out["ids"]]
    return json_exchange(out)
