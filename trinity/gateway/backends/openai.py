"""Backend over plain OpenAI-compatible servers (no disaggregation), and the backend API.

:class:`OpenAIBackend` defines what the gateway needs from any backend:

* :meth:`~OpenAIBackend.prefill` -- the prefill leg (a no-op here: one server does both);
* :meth:`~OpenAIBackend.pick_decode` -- the least-loaded decode instance, which the
  gateway then pins for the request so continuation legs reuse its prefix cache;
* :meth:`~OpenAIBackend.decode` -- a streamed leg on that instance.

:class:`trinity.gateway.backends.vllm_pd.VllmPDBackend` overrides the first and the body of
the first decode leg to speak vLLM's disaggregated-serving protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from trinity.gateway.backends.instances import (
    Chunk,
    Instance,
    InstancePool,
    LegDone,
    LegRequest,
    post_json,
    stream_leg,
)
from trinity.gateway.config import UpstreamConfig

__all__ = ["OpenAIBackend", "PrefillResult"]


@dataclass(frozen=True)
class PrefillResult:
    """Outcome of the prefill leg.

    Attributes:
        kv_transfer_params: what the prefill instance returned for the decode leg
            (``None``: it returned nothing, or there is no separate prefill).
        ms: wall time of the leg (0 when skipped).
        instance: URL of the prefill instance (``None`` when skipped).
        attempts: prefill instances tried (retries go to a different instance).
        request_id: the ``X-Request-Id`` the first decode leg must carry (p2p-nccl), else ``None``.
        decode: the decode instance chosen for the request before the prefill leg.
        pending: the prefill leg still running (mooncake starts it concurrently).
        kv_expected: whether a missing ``kv_transfer_params`` means no KV transfer.
    """

    kv_transfer_params: dict[str, Any] | None
    ms: float = 0.0
    instance: str | None = None
    attempts: int = 0
    request_id: str | None = None
    decode: Instance | None = None
    pending: asyncio.Task | None = None
    kv_expected: bool = True

    @property
    def skipped(self) -> bool:
        return self.instance is None


class OpenAIBackend:
    """One or more interchangeable OpenAI-compatible servers, each doing prefill and decode."""

    kind = "openai"
    disaggregated = False

    def __init__(self, decode_urls: Sequence[str], upstream: UpstreamConfig | None = None, metrics: Any = None,
                 prefill_urls: Sequence[str] = ()) -> None:
        self.upstream = upstream or UpstreamConfig()
        self.metrics = metrics
        self.decode_pool = InstancePool("decode", decode_urls, self.upstream, metrics)
        self.prefill_pool: InstancePool | None = (
            InstancePool("prefill", prefill_urls, self.upstream, metrics) if prefill_urls else None)

    async def prefill(self, leg: LegRequest, decode: Instance | None = None) -> PrefillResult:
        """No separate prefill: the decode leg prefills on the same server."""
        return PrefillResult(None, decode=decode)

    def pick_decode(self) -> Instance:
        return self.decode_pool.pick()

    def first_decode_body(self, body: dict[str, Any], prefill: PrefillResult) -> dict[str, Any]:
        """Body of the first decode leg (the vLLM-PD backend adds ``kv_transfer_params``)."""
        return body

    def decode(self, inst: Instance, leg: LegRequest, phase: str = "decode") -> AsyncIterator[Chunk | LegDone]:
        """Stream one leg from ``inst`` (``phase``: ``decode`` or ``continuation``)."""
        return stream_leg(self.decode_pool, inst, phase, leg)

    async def decode_json(self, inst: Instance, leg: LegRequest) -> dict[str, Any]:
        """One non-streaming decode leg: the upstream's body, unchanged."""
        return await post_json(self.decode_pool, inst, "decode", leg)

    async def models(self) -> list[dict[str, Any]]:
        """``/v1/models`` of the first decode instance that answers (empty if none does)."""
        for inst in self.decode_pool.instances:
            try:
                resp = await inst.client.get("/v1/models", timeout=2.0)
                if resp.status_code == 200:
                    return list(resp.json().get("data") or [])
            except (httpx.HTTPError, ValueError):
                continue
        return []

    async def health(self) -> dict[str, Any]:
        """Per-instance reachability (``GET /health``, probed concurrently) of every pool."""
        async def probe(role: str, inst: Instance) -> tuple[str, dict[str, Any]]:
            try:
                ok = (await inst.client.get("/health", timeout=1.0)).status_code == 200
            except httpx.HTTPError:
                ok = False
            return inst.url, {"role": role, "ok": ok, "inflight": inst.inflight}

        pools = [p for p in (self.prefill_pool, self.decode_pool) if p is not None]
        return dict(await asyncio.gather(*(probe(p.role, i) for p in pools for i in p.instances)))

    async def aclose(self) -> None:
        await self.decode_pool.aclose()
        if self.prefill_pool is not None:
            await self.prefill_pool.aclose()
