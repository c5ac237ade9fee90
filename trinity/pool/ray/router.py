"""``Router``: what the ingress shares -- the replicas, where each collection lives, server-side
id allocation, and writes that must reach every replica holding a collection.

A write is acknowledged once every holder answered 2xx (each one fsyncs its WAL first).  A holder
that is down or restarting is tried again until ``write_timeout_s``; writes are idempotent (ids
are fixed before the fan-out), so a retry after a crash does not double anything.  Concurrent
writes that touch the same ids go out one after the other, so replicas apply them in one order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from trinity.errors import ErrorCode
from trinity.pool.config import PoolConfig
from trinity.pool.ray.asgi import Exchange
from trinity.pool.ray.config import RayConfig
from trinity.pool.ray.links import ReplicaDown, Replicas, error_exchange
from trinity.pool.ray.placement import Placement

__all__ = ["Router", "body_of", "worst"]

_RETRYABLE = (ErrorCode.ENGINE_CLOSED.value,)


def _code(ex: Exchange) -> str | None:
    try:
        return json.loads(ex.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class Router:
    def __init__(self, pool: PoolConfig, cfg: RayConfig, replicas: Replicas) -> None:
        self.pool, self.cfg, self.replicas = pool, cfg, replicas
        self.placements: dict[str, Placement] = {}
        self._next_ids: dict[str, int] = {}
        self._id_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._busy: dict[str, list[set[int]]] = defaultdict(list)
        self._released = asyncio.Condition()

    # -- placements ---------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Learn the placements every live replica keeps (a router that starts late or restarts)."""
        found = await asyncio.gather(*(self.replicas.call(i, "load_placements", timeout=10.0)
                                       for i in range(len(self.replicas))), return_exceptions=True)
        for data in found:
            if isinstance(data, dict):
                for name, p in data.items():
                    self.placements.setdefault(name, Placement.from_json(p))

    async def placement(self, name: str) -> Placement | None:
        if name not in self.placements:
            await self.refresh()
        return self.placements.get(name)

    def holders(self, p: Placement) -> list[int]:
        return p.replicas(len(self.replicas))

    async def publish(self, name: str, p: Placement | None) -> None:
        """Record (or forget) a placement on every replica, best effort for the ones that are down."""
        if p is None:
            self.placements.pop(name, None)
            self._next_ids.pop(name, None)
        else:
            self.placements[name] = p
        data = None if p is None else p.to_json()
        await asyncio.gather(*(self.replicas.call(i, "set_placement", name, data, timeout=10.0)
                               for i in range(len(self.replicas))), return_exceptions=True)

    # -- ids ----------------------------------------------------------------------------------
    async def allocate(self, name: str, p: Placement, n: int) -> np.ndarray:
        """``n`` fresh ids, past every id any holder has seen."""
        async with self._id_locks[name]:
            if name not in self._next_ids:
                seen = await asyncio.gather(*(self._next_id(i, name) for i in self.holders(p)))
                self._next_ids[name] = max(seen)
            start = self._next_ids[name]
            self._next_ids[name] = start + n
        return np.arange(start, start + n, dtype=np.int64)

    def saw(self, name: str, ids: np.ndarray) -> None:
        """Client-chosen ids move the next server-assigned one past them, as in a single pool."""
        if name in self._next_ids and ids.size:
            self._next_ids[name] = max(self._next_ids[name], int(ids.max()) + 1)

    async def _next_id(self, i: int, name: str) -> int:
        deadline = time.monotonic() + self.cfg.write_timeout_s
        while True:
            try:
                return await self.replicas.call(i, "next_id", name, timeout=deadline - time.monotonic())
            except ReplicaDown:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    @asynccontextmanager
    async def claim(self, name: str, ids: Iterable[int]) -> AsyncIterator[None]:
        """Hold ``ids`` of ``name`` while a write fans out; overlapping writes wait their turn."""
        mine = set(int(i) for i in ids)
        async with self._released:
            await self._released.wait_for(lambda: not any(mine & other for other in self._busy[name]))
            self._busy[name].append(mine)
        try:
            yield
        finally:
            async with self._released:
                self._busy[name].remove(mine)
                self._released.notify_all()

    # -- fan-out ------------------------------------------------------------------------------
    async def write_all(self, method: str, path: str, bodies: dict[int, bytes]) -> dict[int, Exchange]:
        """Send each holder its body; every answer once all are final (2xx, an error, or timed out)."""
        deadline = time.monotonic() + self.cfg.write_timeout_s
        answers = await asyncio.gather(*(self._write_one(i, method, path, body, deadline)
                                         for i, body in bodies.items()))
        return dict(zip(bodies, answers))

    async def _write_one(self, i: int, method: str, path: str, body: bytes, deadline: float) -> Exchange:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return error_exchange(ErrorCode.UNAVAILABLE, f"pool replica {i} did not acknowledge the write "
                                      f"within {self.cfg.write_timeout_s:g} s; nothing is acknowledged (it may be "
                                      "applied on some replicas): retry it with the same ids")
            try:
                ex = await self.replicas.http(i, method, path, body, timeout=left)
            except ReplicaDown:
                await asyncio.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
                continue
            if ex.status == 503 and _code(ex) in _RETRYABLE:
                await asyncio.sleep(0.1)
                continue
            return ex

    async def read_one(self, candidates: list[int], method: str, path: str, body: bytes = b"",
                       timeout: float = 10.0, stage: int = 1) -> Exchange:
        """A read from the least-loaded candidate, moving on to the next one when a replica fails."""
        deadline = time.monotonic() + timeout
        tried: list[int] = []
        while (i := self.replicas.pick(candidates, stage, exclude=tried)) is not None:
            try:
                return await self.replicas.http(i, method, path, body, timeout=deadline - time.monotonic(),
                                                 stage=stage)
            except ReplicaDown:
                tried.append(i)
        return error_exchange(ErrorCode.UNAVAILABLE, f"no pool replica answered {method} {path}")

    async def gather(self, candidates: Iterable[int], method: str, path: str, body: bytes = b"",
                     timeout: float = 10.0) -> dict[int, Exchange | None]:
        """The same request to every candidate; ``None`` for one that did not answer."""
        order = list(candidates)
        got = await asyncio.gather(*(self.replicas.http(i, method, path, body, timeout=timeout) for i in order),
                                   return_exceptions=True)
        out: dict[int, Exchange | None] = {}
        for i, ex in zip(order, got):
            if isinstance(ex, BaseException) and not isinstance(ex, ReplicaDown):
                raise ex
            out[i] = ex if isinstance(ex, Exchange) else None
        return out

    def default_deadline_ms(self, stage: int) -> float:
        return float(self.pool.scheduler.default_deadline_ms[stage] or 10_000.0)


def worst(answers: dict[int, Exchange]) -> Exchange | None:
    """The first failed answer, if any."""
    return next((ex for ex in answers.values() if ex.status >= 300), None)


def body_of(ex: Exchange) -> Any:
    return json.loads(ex.body)
