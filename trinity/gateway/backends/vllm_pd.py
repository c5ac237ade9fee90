"""vLLM disaggregated prefill/decode (PD), with the handshake of each KV connector as vLLM's own
proxies speak it (the instance side is :mod:`trinity.emulator.connectors`).

``nixl`` -- ``tests/v1/kv_connector/nixl_integration/toy_proxy_server.py``: the prefill leg is
the client body with ``kv_transfer_params = {"do_remote_decode": true, "do_remote_prefill":
false, "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
"remote_port": null}``, ``stream = false``, ``max_tokens = 1`` (and ``max_completion_tokens =
1`` if present), without ``stream_options``, ``min_tokens``, ``min_completion_tokens``; the
decode leg is the client body plus the ``kv_transfer_params`` the prefill response returned.

``p2p-nccl`` -- ``examples/online_serving/disaggregated_serving_p2p_nccl_xpyd/
disagg_proxy_p2p_nccl_xpyd.py``: no ``kv_transfer_params``; both legs carry
``X-Request-Id: ___prefill_addr_{P zmq}___decode_addr_{D zmq}_{uuid}``, so the decode
instance is chosen before the prefill leg; the prefill leg is the body with ``max_tokens = 1``.

``mooncake`` -- ``examples/online_serving/disaggregated_serving/mooncake_connector/
mooncake_connector_proxy.py``: the prefill leg (``{"do_remote_decode": true,
"do_remote_prefill": false}``, ``stream = false``, ``max_tokens = 1``) starts concurrently
with the decode leg, which carries ``{"do_remote_decode": false, "do_remote_prefill": true,
"bootstrap_server_host": <prefill host>, "bootstrap_server_port": <its bootstrap port>}``.

All legs of a request share one ``X-Request-Id``. A NIXL prefill response without
``kv_transfer_params`` still proceeds (like vLLM's proxy) but the decode instance then
silently re-prefills: counted, logged, refused with ``require_kv_transfer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from trinity.gateway.backends.instances import BackendError, Instance, LegRequest, post_json
from trinity.gateway.backends.openai import OpenAIBackend, PrefillResult
from trinity.gateway.config import UpstreamConfig

__all__ = ["PREFILL_KV_TRANSFER_PARAMS", "VllmPDBackend", "p2p_request_id", "prefill_body"]

log = logging.getLogger(__name__)

#: What vLLM's NIXL proxy sends to the prefill instance.
PREFILL_KV_TRANSFER_PARAMS: dict[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}
_MOONCAKE_PREFILL = {"do_remote_decode": True, "do_remote_prefill": False}
DEFAULT_BOOTSTRAP_PORT = 8998  # vLLM's mooncake proxy default


def prefill_body(body: dict[str, Any], kv: dict[str, Any] | None = PREFILL_KV_TRANSFER_PARAMS) -> dict[str, Any]:
    """The prefill leg's body derived from a client body (see the module docstring)."""
    req = {k: v for k, v in body.items()
           if k not in ("stream_options", "min_tokens", "min_completion_tokens", "kv_transfer_params")}
    if kv is not None:
        req["kv_transfer_params"] = dict(kv)
    req["stream"] = False
    req["max_tokens"] = 1
    if "max_completion_tokens" in body:
        req["max_completion_tokens"] = 1
    return req


def p2p_request_id(prefill_zmq: str, decode_zmq: str) -> str:
    return f"___prefill_addr_{prefill_zmq}___decode_addr_{decode_zmq}_{uuid.uuid4().hex}"


class VllmPDBackend(OpenAIBackend):
    """Prefill pool + decode pool speaking one KV connector's handshake.

    Args:
        connector: ``nixl``, ``p2p-nccl`` or ``mooncake``.
        kv_addresses: p2p-nccl: instance URL -> its ZMQ address (``kv_ip:kv_port``).
        bootstrap_ports: mooncake: prefill URL -> its bootstrap port (default 8998).
        prefill_retries: other prefill instances tried after a connection error or 5xx.
        require_kv_transfer: fail the request instead of decoding without KV params (nixl).
    """

    kind = "vllm-pd"
    disaggregated = True

    def __init__(self, prefill_urls: Sequence[str], decode_urls: Sequence[str],
                 upstream: UpstreamConfig | None = None, metrics: Any = None, prefill_retries: int = 1,
                 require_kv_transfer: bool = False, connector: str = "nixl",
                 kv_addresses: dict[str, str] | None = None, bootstrap_ports: dict[str, int] | None = None) -> None:
        if not prefill_urls:
            raise ValueError("vllm-pd backend: at least one prefill URL is needed")
        super().__init__(decode_urls, upstream, metrics, prefill_urls=prefill_urls)
        self.prefill_retries, self.require_kv_transfer = prefill_retries, require_kv_transfer
        self.connector = connector
        self.kv_addresses = {u.rstrip("/"): a for u, a in (kv_addresses or {}).items()}
        self.bootstrap_ports = {u.rstrip("/"): p for u, p in (bootstrap_ports or {}).items()}
        if connector == "p2p-nccl":
            missing = [i.url for p in (self.prefill_pool, self.decode_pool) for i in p.instances
                       if i.url not in self.kv_addresses]
            if missing:
                raise ValueError(f"p2p-nccl: no ZMQ address for {', '.join(missing)}")

    def _leg(self, inst: Instance, leg: LegRequest, decode: Instance | None) -> LegRequest:
        if self.connector == "p2p-nccl":
            assert decode is not None
            rid = p2p_request_id(self.kv_addresses[inst.url], self.kv_addresses[decode.url])
            return LegRequest(leg.endpoint, prefill_body(leg.body, None), rid)
        kv = _MOONCAKE_PREFILL if self.connector == "mooncake" else PREFILL_KV_TRANSFER_PARAMS
        return LegRequest(leg.endpoint, prefill_body(leg.body, kv), leg.request_id)

    async def prefill(self, leg: LegRequest, decode: Instance | None = None) -> PrefillResult:
        """Run the prefill leg, retrying on another instance after transport errors or 5xx."""
        if self.connector == "mooncake":
            return self._mooncake(leg, decode)
        assert self.prefill_pool is not None
        tried: list[Instance] = []
        t0 = time.perf_counter()
        while True:
            inst = self.prefill_pool.pick(exclude=tried)
            tried.append(inst)
            sent = self._leg(inst, leg, decode)
            try:
                resp = await post_json(self.prefill_pool, inst, "prefill", sent)
                break
            except BackendError as exc:
                retryable = exc.upstream_status is None or exc.upstream_status >= 500
                others = len(tried) < len(self.prefill_pool.instances)
                if not (retryable and others and len(tried) <= self.prefill_retries):
                    raise
                log.warning("prefill on %s failed (%s); retrying on another instance", inst.url, exc)
        ms = (time.perf_counter() - t0) * 1e3
        if self.connector == "p2p-nccl":
            return PrefillResult(None, ms, inst.url, len(tried), request_id=sent.request_id, decode=decode,
                                 kv_expected=False)
        kv = resp.get("kv_transfer_params")
        result = PrefillResult(kv if isinstance(kv, dict) and kv else None, ms, inst.url, len(tried), decode=decode)
        if result.kv_transfer_params is None:
            if self.metrics is not None:
                self.metrics.no_kv_transfer.labels(inst.url).inc()
            log.warning("prefill instance %s returned no kv_transfer_params: the decode instance will "
                        "re-prefill (is it started with --kv-transfer-config?)", inst.url)
            if self.require_kv_transfer:
                raise BackendError("prefill", "no kv_transfer_params in the prefill response", 502, inst.url)
        return result

    def _mooncake(self, leg: LegRequest, decode: Instance | None) -> PrefillResult:
        """Start the prefill leg without waiting for it (vLLM's mooncake proxy does the same)."""
        assert self.prefill_pool is not None
        inst = self.prefill_pool.pick()
        t0 = time.perf_counter()

        async def run() -> float:
            try:
                await post_json(self.prefill_pool, inst, "prefill", self._leg(inst, leg, decode))
            except BackendError as exc:
                log.warning("mooncake prefill on %s failed: %s", inst.url, exc)
                if self.metrics is not None:
                    self.metrics.upstream_errors.labels("prefill", inst.url).inc()
                raise
            return (time.perf_counter() - t0) * 1e3

        task = asyncio.create_task(run())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        kv = {"do_remote_decode": False, "do_remote_prefill": True,
              "bootstrap_server_host": urlsplit(inst.url).hostname,
              "bootstrap_server_port": self.bootstrap_ports.get(inst.url, DEFAULT_BOOTSTRAP_PORT)}
        return PrefillResult(kv, 0.0, inst.url, 1, decode=decode, pending=task)

    def first_decode_body(self, body: dict[str, Any], prefill: PrefillResult) -> dict[str, Any]:
        out = {k: v for k, v in body.items() if k != "kv_transfer_params"}
        if prefill.kv_transfer_params is not None:
            out["kv_transfer_params"] = prefill.kv_transfer_params
        return out
