"""The instance side of vLLM's KV-connector handshakes, as vLLM's own proxies drive them.

* ``nixl`` (NixlConnector; ``tests/v1/kv_connector/nixl_integration/toy_proxy_server.py``):
  the prefill leg carries ``kv_transfer_params.do_remote_decode``, its response returns
  ``remote_engine_id``, ``remote_block_ids``, ``remote_host``, ``remote_port``, which the
  decode leg sends back with ``do_remote_prefill: true``.
* ``p2p-nccl`` (P2pNcclConnector; ``examples/online_serving/disaggregated_serving_p2p_nccl_xpyd/
  disagg_proxy_p2p_nccl_xpyd.py``): no ``kv_transfer_params``; both legs carry the request id
  ``___prefill_addr_{P zmq}___decode_addr_{D zmq}_{uuid}``, from which each instance learns
  its peer. An instance checks that its own ZMQ address sits in its role's slot.
* ``mooncake`` (MooncakeConnector; ``examples/online_serving/disaggregated_serving/
  mooncake_connector/mooncake_connector_proxy.py``): prefill and decode start concurrently;
  prefill gets ``{do_remote_decode: true, do_remote_prefill: false}``, decode gets
  ``{do_remote_decode: false, do_remote_prefill: true, bootstrap_server_host, bootstrap_server_port}``.

With ``require_kv_transfer`` a decode-role instance refuses (400) a request without its
connector's handshake instead of silently prefilling it itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trinity.errors import BadRequest

__all__ = ["CONNECTORS", "ConnectorConfig", "P2P_REQUEST_ID", "kv_params"]

CONNECTORS = ("nixl", "p2p-nccl", "mooncake")
P2P_REQUEST_ID = re.compile(r"^___prefill_addr_(?P<prefill>.+?)___decode_addr_(?P<decode>.+?)_(?P<uuid>[0-9a-f]+)$")
_NIXL_KEYS = ("remote_engine_id", "remote_block_ids", "remote_host", "remote_port")
_KV = "kv_transfer_params"


@dataclass(frozen=True)
class ConnectorConfig:
    kind: str = "nixl"
    kv_address: str | None = None  # p2p-nccl: this instance's ZMQ address, host:port
    require_kv_transfer: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CONNECTORS:
            raise ValueError(f"kv_connector: expected one of {', '.join(CONNECTORS)}, got {self.kind!r}")
        if self.kind == "p2p-nccl" and not self.kv_address:
            raise ValueError("kv_connector p2p-nccl needs --kv-address HOST:PORT (the instance's ZMQ address)")


def _nixl(kv: dict[str, Any] | None, role: str, strict: bool) -> dict[str, Any] | None:
    if kv and kv.get("do_remote_prefill"):
        missing = [k for k in _NIXL_KEYS if kv.get(k) is None]
        if missing:
            raise BadRequest(f"{_KV}: do_remote_prefill without {', '.join(missing)}", f"{_KV}.{missing[0]}")
        if not isinstance(kv["remote_block_ids"], list):
            raise BadRequest(f"{_KV}.remote_block_ids: expected a list", f"{_KV}.remote_block_ids")
    elif strict and role == "decode":
        raise BadRequest(f"{_KV}: this decode instance (NixlConnector, kv_consumer) needs do_remote_prefill "
                         "with the prefill instance's remote_block_ids", _KV)
    return kv


def _p2p(cfg: ConnectorConfig, role: str, request_id: str) -> dict[str, Any] | None:
    m = P2P_REQUEST_ID.match(request_id)
    if m is None:
        if cfg.require_kv_transfer and role in ("prefill", "decode"):
            raise BadRequest("X-Request-Id: P2pNcclConnector needs ___prefill_addr_{zmq}___decode_addr_{zmq}_{uuid}, "
                             f"got {request_id!r}", "x-request-id")
        return None
    if role in ("prefill", "decode") and m.group(role) != cfg.kv_address:
        raise BadRequest(f"X-Request-Id: names {m.group(role)} as the {role} instance; this one is "
                         f"{cfg.kv_address}", "x-request-id")
    if role == "prefill":
        return {"do_remote_decode": True, "p2p": True}
    return {"do_remote_prefill": True, "p2p": True, "remote_zmq_address": m.group("prefill")}


def _mooncake(kv: dict[str, Any] | None, role: str, strict: bool) -> dict[str, Any] | None:
    if kv and kv.get("do_remote_prefill"):
        host, port = kv.get("bootstrap_server_host"), kv.get("bootstrap_server_port")
        if not isinstance(host, str) or not host:
            raise BadRequest(f"{_KV}.bootstrap_server_host: expected the prefill instance's host",
                             f"{_KV}.bootstrap_server_host")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise BadRequest(f"{_KV}.bootstrap_server_port: expected a port number", f"{_KV}.bootstrap_server_port")
    elif strict and role == "decode":
        raise BadRequest(f"{_KV}: this decode instance (MooncakeConnector) needs do_remote_prefill with "
                         "bootstrap_server_host / bootstrap_server_port", _KV)
    return kv


def kv_params(cfg: ConnectorConfig, role: str, body: dict[str, Any], request_id: str) -> dict[str, Any] | None:
    """The handshake this request carries, in the engine's terms; raises :class:`BadRequest`."""
    kv = body.get(_KV)
    if kv is not None and not isinstance(kv, dict):
        raise BadRequest(f"{_KV}: expected an object", _KV)
    if cfg.kind == "p2p-nccl":
        return _p2p(cfg, role, request_id)
    strict = cfg.require_kv_transfer
    return _nixl(kv, role, strict) if cfg.kind == "nixl" else _mooncake(kv, role, strict)
