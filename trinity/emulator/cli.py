"""``trinity emulate``: run one emulated engine (registered by :mod:`trinity.cli`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["emulate", "load_config"]

DEFAULT_PORTS = {"prefill": 8100, "decode": 8200, "both": 8300}


def load_config(path: Path | None, role: str, latency: list[str], time_scale: float,
                connector: dict | None = None, served_model_names: tuple[str, ...] = (), **engine: object):
    """Merge a JSON config file (``{"engine", "latency", "faults", "connector"}`` sections) with flags."""
    from trinity.emulator.connectors import ConnectorConfig
    from trinity.emulator.engine import EngineConfig
    from trinity.emulator.faults import FaultConfig
    from trinity.emulator.latency import LatencyModel
    from trinity.emulator.server import EmulatorConfig

    raw = json.loads(path.read_text()) if path else {}
    overrides = dict(raw.get("latency", {}))
    for item in latency:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--latency {item!r}: expected KEY=VALUE, e.g. decode.a_ms=6")
        overrides[key.strip()] = float(value)
    lat = LatencyModel.from_overrides(overrides, time_scale=float(raw.get("time_scale", time_scale)))
    eng = {**raw.get("engine", {}), **{k: v for k, v in engine.items() if v is not None}, "role": role}
    conn = {**raw.get("connector", {}), **{k: v for k, v in (connector or {}).items() if v is not None}}
    return EmulatorConfig(engine=EngineConfig(latency=lat, **eng), faults=FaultConfig(**raw.get("faults", {})),
                          connector=ConnectorConfig(**conn), served_model_names=tuple(served_model_names))


def emulate(
    role: Annotated[str, typer.Option(help="prefill | decode | both (a plain, non-disaggregated server)")] = "both",
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="default: 8100 prefill, 8200 decode, 8300 both")] = None,
    model: Annotated[Optional[str], typer.Option(help="model name served at /v1/models")] = None,
    served_model_name: Annotated[list[str], typer.Option(
        help="a name the model answers to (repeatable; default: --model); others get 404")] = [],  # noqa: B006
    kv_connector: Annotated[Optional[str], typer.Option(help="KV connector side: nixl, p2p-nccl, mooncake")] = None,
    kv_address: Annotated[Optional[str], typer.Option(help="p2p-nccl: this instance's ZMQ address HOST:PORT")] = None,
    require_kv_transfer: Annotated[bool, typer.Option(
        help="decode role: refuse (400) requests without the connector's handshake")] = False,
    max_num_seqs: Annotated[Optional[int], typer.Option(help="max sequences in the running batch")] = None,
    max_num_batched_tokens: Annotated[Optional[int], typer.Option(help="prefill token budget per step")] = None,
    max_model_len: Annotated[Optional[int], typer.Option(help="prompt + completion token limit")] = None,
    latency: Annotated[list[str], typer.Option(
        help="override a latency coefficient, e.g. prefill.b_ms_per_token=0.05 (repeatable)")] = [],  # noqa: B006
    time_scale: Annotated[float, typer.Option(help="multiply every modelled duration (0 = no sleeping)")] = 1.0,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with engine/latency/faults sections")] = None,
    fail_rate: Annotated[float, typer.Option(help="fault injection: fraction of requests failed")] = 0.0,
    fail_status: Annotated[int, typer.Option(help="fault injection: HTTP status of failures")] = 500,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run an EMULATED OpenAI-compatible prefill/decode engine (filler text, modelled timing; no GPU)."""
    from trinity.emulator.server import run

    if role not in DEFAULT_PORTS:
        raise typer.BadParameter(f"--role: expected prefill, decode or both, got {role!r}")
    try:
        conn = {"kind": kv_connector, "kv_address": kv_address, "require_kv_transfer": require_kv_transfer or None}
        cfg = load_config(config, role, latency, time_scale, conn, tuple(served_model_name), model=model,
                          max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len)
        if fail_rate:
            cfg = replace(cfg, faults=replace(cfg.faults, fail_rate=fail_rate, fail_status=fail_status))
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    port = port or DEFAULT_PORTS[role]
    typer.echo(f"trinity emulate: EMULATED {role} engine ({cfg.connector.kind}; filler text, modelled latency) "
               f"on http://{host}:{port}")
    run(cfg, host, port, log_level=log_level)
