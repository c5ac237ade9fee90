"""The router's view of the pool replicas: one Ray Serve handle each, calls with a time limit,
requests in flight per replica and stage (the load a search is routed by), and which replicas
were just seen failing."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from trinity.errors import ErrorCode
from trinity.pool.ray.asgi import Exchange

__all__ = ["STAGES", "ReplicaDown", "Replicas", "error_exchange", "json_exchange", "stage_index"]

STAGES = ("decode", "prefill", "background")
_JSON = ((b"content-type", b"application/json"),)


class ReplicaDown(Exception):
    """A replica did not answer: it died, is restarting, or ran past the time allowed."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"pool replica {index}: {why}")
        self.index = index


def stage_index(stage: Any) -> int:
    return STAGES.index(stage) if stage in STAGES else 1


def json_exchange(data: Any, status: int = 200) -> Exchange:
    return Exchange(status, _JSON, json.dumps(data, separators=(",", ":")).encode())


def error_exchange(code: ErrorCode, message: str, field: str | None = None, status: int = 503) -> Exchange:
    return json_exchange({"error": {"code": code.value, "field": field, "message": message}}, status)


async def _result(response: Any) -> Any:
    return await response


class Replicas:
    """Handles of the ``PoolReplica`` deployments, replica ``i`` at position ``i``."""

    def __init__(self, handles: Sequence[Any], down_s: float = 1.0) -> None:
        self.handles = list(handles)
        self.inflight = [[0] * len(STAGES) for _ in self.handles]
        self.down_until = [0.0] * len(self.handles)
        self.down_s = down_s
        self.failures = 0
        self._turn = itertools.count()
        self._methods: dict[tuple[int, str], Any] = {}

    def __len__(self) -> int:
        return len(self.handles)

    async def call(self, i: int, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``PoolReplica.<method>(*args)`` on replica ``i``; :class:`ReplicaDown` if it fails or runs late."""
        if timeout is not None and timeout <= 0:
            raise ReplicaDown(i, "no time left")
        handle = self._methods.get((i, method))
        if handle is None:
            handle = self._methods[i, method] = self.handles[i].options(method_name=method)
        response = handle.remote(*args)
        try:
            return await asyncio.wait_for(_result(response), timeout)
        except asyncio.CancelledError:
            response.cancel()
            raise
        except TimeoutError:
            response.cancel()
            self.down_until[i] = time.monotonic() + self.down_s
            raise ReplicaDown(i, f"no answer within {timeout:.3f} s") from None
        except Exception as exc:  # noqa: BLE001 - a dead actor, a replica being replaced, back pressure
            self.failures += 1
            self.down_until[i] = time.monotonic() + self.down_s
            raise ReplicaDown(i, f"{type(exc).__name__}: {str(exc)[:200]}") from None

    async def http(self, i: int, method: str, path: str, body: bytes = b"", *, query: bytes = b"",
                   timeout: float | None = None, stage: int | None = None) -> Exchange:
        """One HTTP exchange with replica ``i``'s pool app, counted as in flight at ``stage``."""
        headers = list(_JSON) if body else []
        if stage is not None:
            self.inflight[i][stage] += 1
        try:
            return await self.call(i, "handle", method, path, query, headers, body, timeout=timeout)
        finally:
            if stage is not None:
                self.inflight[i][stage] -= 1

    def pick(self, candidates: Iterable[int], stage: int, exclude: Iterable[int] = ()) -> int | None:
        """The least-loaded candidate for a request of ``stage``: fewest requests in flight that rank
        before it (its own and more urgent stages), then fewest in all; replicas seen failing last."""
        skip = set(exclude)
        live = [i for i in candidates if i not in skip]
        if not live:
            return None
        now = time.monotonic()
        turn = next(self._turn)

        def key(i: int) -> tuple[bool, int, int, int]:
            load = self.inflight[i]
            return self.down_until[i] > now, sum(load[:stage + 1]), sum(load), (i - turn) % len(self.handles)

        return min(live, key=key)

    def load(self) -> list[dict[str, int]]:
        return [dict(zip(STAGES, row)) for row in self.inflight]
