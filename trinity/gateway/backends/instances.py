"""LLM backend plumbing shared by all backends: instance pools, load-aware routing, legs.

A *pool* is the set of instances of one role (prefill or decode). Requests go to the
instance with the fewest requests in flight from this gateway (ties rotate), and an
instance that refused a connection sits out a short cooldown. A *leg* is one HTTP call
to one instance: a non-streaming prefill leg, or a streamed decode/continuation leg.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from trinity.errors import ErrorCode, TrinityError
from trinity.gateway.config import UpstreamConfig
from trinity.protocol.openai import Endpoint, iter_sse_json

__all__ = [
    "BackendError", "Chunk", "Instance", "InstancePool", "LegDone", "LegRequest", "post_json", "stream_leg",
]

PATHS: dict[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class BackendError(TrinityError):
    """An upstream leg failed (502); ``phase`` is ``prefill``, ``decode`` or ``continuation``.

    An upstream 4xx (e.g. a prompt too long) is the client's fault: it is passed through.
    """

    code = ErrorCode.UPSTREAM_FAILED

    def __init__(self, phase: str, message: str, upstream_status: int | None = None,
                 instance: str | None = None) -> None:
        rejected = upstream_status is not None and 400 <= upstream_status < 500
        super().__init__(f"{phase} leg failed on {instance}: {message}",
                         code=ErrorCode.UPSTREAM_REJECTED if rejected else None)
        self.phase, self.upstream_status, self.instance = phase, upstream_status, instance

    @property
    def status(self) -> int:
        return self.upstream_status if self.code is ErrorCode.UPSTREAM_REJECTED else super().status


@dataclass(frozen=True)
class LegRequest:
    """One OpenAI request body for one leg, plus the id shared by all legs of a request."""

    endpoint: Endpoint
    body: dict[str, Any]
    request_id: str


@dataclass(frozen=True)
class Chunk:
    """One upstream SSE event, unchanged (``obj``), and what the gateway reads from it."""

    obj: dict[str, Any]
    text: str
    finish_reason: str | None

    @property
    def usage_only(self) -> bool:
        return not self.obj.get("choices")

    @property
    def substantive(self) -> bool:
        """Carries output (text, tool calls, logprobs) or a finish, not just the role."""
        for c in self.obj.get("choices") or ():
            delta = c.get("delta")
            if c.get("finish_reason") or c.get("logprobs") or c.get("text"):
                return True
            if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")
                                            or delta.get("reasoning_content")):
                return True
        return False


@dataclass(frozen=True)
class LegDone:
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int


@dataclass(eq=False)
class Instance:
    """One upstream server and this gateway's in-flight count on it."""

    url: str
    role: str
    client: httpx.AsyncClient
    inflight: int = 0
    down_until: float = 0.0


class InstancePool:
    """Instances of one role, picked by least in-flight requests (round robin among ties)."""

    def __init__(self, role: str, urls: Iterable[str], upstream: UpstreamConfig, metrics: Any = None) -> None:
        self.role, self.upstream, self.metrics = role, upstream, metrics
        timeout = httpx.Timeout(upstream.read_timeout_s, connect=upstream.connect_timeout_s)
        headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
        # NOTE: no connection cap: the in-flight count is the load signal, not a pool limit.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.instances = [
            Instance(u.rstrip("/"), role, httpx.AsyncClient(base_url=u.rstrip("/"), timeout=timeout,
                                                            headers=headers, limits=limits))
            for u in urls
        ]
        if not self.instances:
            raise ValueError(f"{role} pool: at least one instance URL is needed")
        self._rr = itertools.count()

    def pick(self, exclude: Iterable[Instance] = ()) -> Instance:
        """Least-loaded healthy instance not in ``exclude`` (any instance if all are down)."""
        skip = set(map(id, exclude))
        now = time.monotonic()
        candidates = [i for i in self.instances if id(i) not in skip] or self.instances
        healthy = [i for i in candidates if i.down_until <= now] or candidates
        low = min(i.inflight for i in healthy)
        ties = [i for i in healthy if i.inflight == low]
        return ties[next(self._rr) % len(ties)]

    @asynccontextmanager
    async def use(self, inst: Instance) -> AsyncIterator[Instance]:
        """Count ``inst`` as busy for the duration of a leg."""
        inst.inflight += 1
        self._gauge(inst)
        try:
            yield inst
        finally:
            inst.inflight -= 1
            self._gauge(inst)

    def _gauge(self, inst: Instance) -> None:
        if self.metrics is not None:
            self.metrics.inflight.labels(self.role, inst.url).set(inst.inflight)

    def mark_down(self, inst: Instance) -> None:
        inst.down_until = time.monotonic() + self.upstream.cooldown_s

    async def aclose(self) -> None:
        for inst in self.instances:
            await inst.client.aclose()


def _error_text(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        return str(err.get("message") if isinstance(err, dict) else err or resp.text)[:500]
    except (ValueError, AttributeError):
        return resp.text[:500]


async def post_json(pool: InstancePool, inst: Instance, phase: str, leg: LegRequest) -> dict[str, Any]:
    """Non-streaming leg; returns the response JSON or raises :class:`BackendError`."""
    async with pool.use(inst):
        try:
            resp = await inst.client.post(PATHS[leg.endpoint], json=leg.body, headers={"X-Request-Id": leg.request_id})
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ConnectError):
                pool.mark_down(inst)
            raise BackendError(phase, f"{type(exc).__name__}: {exc}", None, inst.url) from exc
    if resp.status_code != 200:
        raise BackendError(phase, f"HTTP {resp.status_code}: {_error_text(resp)}", resp.status_code, inst.url)
    try:
        return resp.json()
    except ValueError as exc:
        raise BackendError(phase, "response is not JSON", resp.status_code, inst.url) from exc


async def stream_leg(pool: InstancePool, inst: Instance, phase: str, leg: LegRequest,
                     ) -> AsyncIterator[Chunk | LegDone]:
    """Streamed leg: yields every upstream event as a :class:`Chunk`, then one :class:`LegDone`.

    Closing the generator early (client gone, cancellation) closes the upstream
    connection, which makes vLLM (and the emulator) abort the sequence.
    """
    opts = {**(leg.body.get("stream_options") or {}), "include_usage": True}  # NOTE: the gateway counts tokens
    body = {**leg.body, "stream": True, "stream_options": opts}
    finish, usage, n = None, None, 0
    async with pool.use(inst):
        try:
            async with inst.client.stream("POST", PATHS[leg.endpoint], json=body,
                                          headers={"X-Request-Id": leg.request_id}) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise BackendError(phase, f"HTTP {resp.status_code}: {_error_text(resp)}", resp.status_code,
                                       inst.url)
                async for obj in iter_sse_json(resp.aiter_lines()):
                    usage = obj.get("usage") or usage
                    text, fin = "", None
                    for choice in obj.get("choices") or ():
                        delta = choice.get("delta") if leg.endpoint == "chat" else choice
                        piece = (delta or {}).get("content" if leg.endpoint == "chat" else "text")
                        if piece and choice.get("index", 0) == 0:
                            n += 1
                            text += piece
                        fin = choice.get("finish_reason") or fin
                    finish = fin or finish
                    yield Chunk(obj, text, fin)
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ConnectError):
                pool.mark_down(inst)
            raise BackendError(phase, f"{type(exc).__name__}: {exc}", None, inst.url) from exc
        except ValueError as exc:  # bad SSE payload or an in-stream error event
            raise BackendError(phase, str(exc), None, inst.url) from exc
    if finish is None:
        raise BackendError(phase, "stream ended without a finish_reason", None, inst.url)
    yield LegDone(finish, (usage or {}).get("prompt_tokens"), int((usage or {}).get("completion_tokens") or n))
