"""``trinity gateway``: run the PD gateway (registered by :mod:`trinity.cli`)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["build_config", "gateway"]


def build_config(config: Path | None = None, **flags: Any) -> Any:
    """A :class:`GatewayConfig` from an optional TOML/JSON file, then non-``None`` flags on top.

    ``api_keys`` are merged with the file's (a key given two tenants is an error).
    """
    from trinity.serving.gateway_auth import merge_api_keys
    from trinity.serving.gateway_config import GatewayConfig

    cfg = GatewayConfig.load(config) if config else GatewayConfig()
    f = {k: v for k, v in flags.items() if v is not None and v != []}
    top = {k: f.pop(k) for k in ("host", "port", "pool_url", "pool_api_key", "on_pool_error", "max_concurrency",
                                 "trust_tenant_header") if k in f}
    if "api_keys" in f:
        top["api_keys"] = merge_api_keys(cfg.api_keys, f.pop("api_keys"))
    backend = {k: f.pop(k) for k in ("kind", "model", "prefill_retries", "require_kv_transfer") if k in f}
    for key in ("prefill_urls", "decode_urls"):
        if key in f:
            backend[key] = tuple(f.pop(key))
    slo = {k: f.pop(k) for k in ("ttft_ms", "tpot_ms", "deadline_factor", "max_request_s") if k in f}
    retrieval = {k: f.pop(k) for k in ("collection", "k", "nprobe", "decode_interval", "embed") if k in f}
    cache = {k: f.pop(k) for k in ("use_answer_cache", "use_prompt_cache") if k in f}
    if f:
        raise ValueError(f"unknown gateway flags: {sorted(f)}")
    if backend.get("kind") == "openai" and "prefill_urls" not in backend:
        backend["prefill_urls"] = ()
    return replace(cfg, **top, backend=replace(cfg.backend, **backend), slo=replace(cfg.slo, **slo),
                   retrieval=replace(cfg.retrieval, **retrieval), cache=replace(cfg.cache, **cache))


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
    embed: Annotated[Optional[str], typer.Option(help="local (embed once in the gateway) | pool")] = None,
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
    import uvicorn

    from trinity.serving.gateway_app import create_app
    from trinity.serving.gateway_auth import parse_api_keys

    try:
        keys = parse_api_keys([*os.environ.get("TRINITY_GATEWAY_API_KEYS", "").split(","), *api_key])
        cfg = build_config(
            config, host=host, port=port, pool_url=pool_url, kind=backend, prefill_urls=prefill, decode_urls=decode,
            model=model, ttft_ms=ttft_ms, tpot_ms=tpot_ms, collection=collection, k=k,
            decode_interval=retrieval_interval, embed=embed, use_answer_cache=answer_cache,
            use_prompt_cache=prompt_cache, on_pool_error=on_pool_error, require_kv_transfer=require_kv_transfer,
            max_concurrency=max_concurrency, pool_api_key=os.environ.get("TRINITY_POOL_API_KEY"),
            deadline_factor=deadline_factor, max_request_s=max_request_s, api_keys=keys or None,
            trust_tenant_header=trust_tenant_header)
    except (ValueError, TypeError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
    b = cfg.backend
    typer.echo(f"trinity gateway on http://{cfg.host}:{cfg.port}: backend={b.kind} prefill={list(b.prefill_urls)} "
               f"decode={list(b.decode_urls)} pool={cfg.pool_url} api_keys={len(cfg.api_keys)}")
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level=log_level, access_log=False)
