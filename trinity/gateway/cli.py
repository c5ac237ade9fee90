"""``trinity gateway``: run the PD gateway (registered by :mod:`trinity.cli`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["build_config", "gateway"]


_SECTIONS = {
    "backend": ("kind", "model", "prefill_retries", "require_kv_transfer", "prefill_urls", "decode_urls",
                "kv_connector", "prefill_kv_addresses", "decode_kv_addresses", "bootstrap_ports"),
    "slo": ("ttft_ms", "tpot_ms", "deadline_factor", "max_request_s"),
    "retrieval": ("collection", "k", "nprobe", "decode_interval", "embed", "embed_url", "embed_model"),
    "cache": ("use_answer_cache", "use_prompt_cache"),
}
_TOP = ("host", "port", "pool_url", "pool_api_key", "on_pool_error", "max_concurrency", "trust_tenant_header")


def build_config(config: Path | None = None, **flags: Any) -> Any:
    """A :class:`GatewayConfig` from flags over the environment over an optional TOML/JSON file.

    ``api_keys`` are merged with the file's and the environment's (a key given two tenants is an error).
    """
    from trinity.config import read_config_file  # NOTE: lazy: only typer at import keeps `trinity --help` fast
    from trinity.gateway.config import GatewayConfig
    from trinity.gateway.keys import merge_api_keys, parse_api_keys

    f = {k: v for k, v in flags.items() if v is not None and v != []}
    overrides: dict[str, Any] = {k: f.pop(k) for k in _TOP if k in f}
    for section, keys in _SECTIONS.items():
        overrides[section] = {k: f.pop(k) for k in keys if k in f}
    flag_keys = f.pop("api_keys", {})
    if f:
        raise ValueError(f"unknown gateway flags: {sorted(f)}")
    if overrides["backend"].get("kind") == "openai" and "prefill_urls" not in overrides["backend"]:
        overrides["backend"]["prefill_urls"] = ()
    file_keys = read_config_file(config).get("api_keys", {}) if config else {}
    env_keys = parse_api_keys(os.environ.get("TRINITY_GATEWAY_API_KEYS", "").split(","))
    overrides["api_keys"] = merge_api_keys(file_keys, env_keys, flag_keys)
    return GatewayConfig.load(config, **overrides)


def gateway(
    host: Annotated[Optional[str], typer.Option(help="bind address [default: 127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="port [default: 8000]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML/JSON config (sections backend, slo, retrieval, "
                                                        "cache); flags override it")] = None,
    pool_url: Annotated[Optional[str], typer.Option(help="vector pool [default: http://127.0.0.1:8077]")] = None,
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="vllm-pd (real vLLM P/D instances) | emulated (trinity emulate) | openai (one "
                          "server)")] = None,
    prefill: Annotated[list[str], typer.Option(help="prefill instance URL (repeatable)")] = [],  # noqa: B006
    decode: Annotated[list[str], typer.Option(help="decode (or openai) instance URL (repeatable)")] = [],  # noqa: B006
    kv_connector: Annotated[Optional[str], typer.Option(
        help="PD handshake: nixl | p2p-nccl | mooncake [default: nixl]")] = None,
    prefill_kv_address: Annotated[list[str], typer.Option(
        help="p2p-nccl: ZMQ address HOST:PORT of each --prefill, in order")] = [],  # noqa: B006
    decode_kv_address: Annotated[list[str], typer.Option(
        help="p2p-nccl: ZMQ address HOST:PORT of each --decode, in order")] = [],  # noqa: B006
    bootstrap_port: Annotated[list[int], typer.Option(
        help="mooncake: bootstrap port of each --prefill, in order [default: 8998]")] = [],  # noqa: B006
    model: Annotated[Optional[str], typer.Option(help="model name sent upstream (default: the client's)")] = None,
    ttft_ms: Annotated[Optional[float], typer.Option(help="default TTFT SLO (x-slo-ttft-ms overrides)")] = None,
    tpot_ms: Annotated[Optional[float], typer.Option(help="default TPOT SLO (x-slo-tpot-ms overrides)")] = None,
    deadline_factor: Annotated[Optional[float], typer.Option(
        help="fail a request (504) once it is this many SLOs late [default: 1]")] = None,
    max_request_s: Annotated[Optional[float], typer.Option(help="cap on any request's deadline [default: 600]")] = None,
    api_key: Annotated[list[str], typer.Option(
        help="KEY or KEY=TENANT (repeatable; also TRINITY_GATEWAY_API_KEYS=k1=t1,k2=t2): keys required, the key "
             "decides the tenant")] = [],  # noqa: B006
    trust_tenant_header: Annotated[Optional[bool], typer.Option(
        "--trust-tenant-header/--no-trust-tenant-header",
        help="without keys, take the tenant from x-tenant-id (only behind a trusted proxy)")] = None,
    collection: Annotated[Optional[str], typer.Option(help="default RAG collection (none: only on request)")] = None,
    k: Annotated[Optional[int], typer.Option(help="passages per retrieval")] = None,
    retrieval_interval: Annotated[Optional[int], typer.Option(
        help="decode-time retrieval every N tokens (0 = off)")] = None,
    embed: Annotated[Optional[str], typer.Option(
        help="local (MiniLM in the gateway) | pool | openai (an OpenAI-compatible /v1/embeddings server)")] = None,
    embed_url: Annotated[Optional[str], typer.Option(
        help="embedding server base URL, e.g. http://127.0.0.1:8400/v1 (implies --embed openai)")] = None,
    embed_model: Annotated[Optional[str], typer.Option(help="model name sent to --embed-url")] = None,
    answer_cache: Annotated[Optional[bool], typer.Option("--answer-cache/--no-answer-cache",
                                                         help="use the answer cache by default")] = None,
    prompt_cache: Annotated[Optional[bool], typer.Option("--prompt-cache/--no-prompt-cache",
                                                         help="use the prompt (passage) cache by default")] = None,
    on_pool_error: Annotated[Optional[str], typer.Option(help="degrade | fail (503)")] = None,
    require_kv_transfer: Annotated[Optional[bool], typer.Option(
        "--require-kv-transfer/--allow-missing-kv-transfer", help="fail when a prefill returns no kv params")] = None,
    max_concurrency: Annotated[Optional[int], typer.Option(help="requests admitted at once")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run the PD gateway: OpenAI-compatible API -> vector pool (caches, RAG) -> prefill -> decode."""
    from trinity.config import config_error  # NOTE: lazy, as above

    opts = dict(locals())  # NOTE: every option by its flag name; _RENAMED maps them onto the config tree
    try:
        cfg = build_config(config, **_overrides(opts))
    except (ValueError, TypeError, OSError) as exc:
        raise typer.BadParameter(config_error(exc)) from None
    _run(cfg, log_level)


_RENAMED = {"backend": "kind", "prefill": "prefill_urls", "decode": "decode_urls",
            "retrieval_interval": "decode_interval",
            "prefill_kv_address": "prefill_kv_addresses", "decode_kv_address": "decode_kv_addresses",
            "bootstrap_port": "bootstrap_ports", "answer_cache": "use_answer_cache",
            "prompt_cache": "use_prompt_cache"}


def _overrides(opts: dict[str, Any]) -> dict[str, Any]:
    from trinity.gateway.keys import parse_api_keys

    out = {_RENAMED.get(k, k): v for k, v in opts.items() if k not in ("config", "log_level", "config_error")}
    out["api_keys"] = parse_api_keys(opts["api_key"]) or None
    del out["api_key"]
    if out["embed_url"] and not out["embed"]:
        out["embed"] = "openai"
    return out


def _run(cfg: Any, log_level: str) -> None:
    import socket

    import uvicorn  # NOTE: lazy, as above

    from trinity.gateway.app import create_app

    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as exc:
        raise typer.BadParameter(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}", param_hint="--port")
    b = cfg.backend
    typer.echo(f"trinity gateway on http://{cfg.host}:{sock.getsockname()[1]}: backend={b.kind} "
               f"kv_connector={b.kv_connector} prefill={list(b.prefill_urls)} decode={list(b.decode_urls)} "
               f"pool={cfg.pool_url} api_keys={len(cfg.api_keys)}")
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), log_level=log_level, access_log=False))
    server.run(sockets=[sock])
