"""``trinity serve`` / ``python -m trinity.pool``: one flag per :class:`PoolConfig` field and per
scheduler knob (:class:`~trinity.engine.SchedulerConfig`), generated from the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import typer

from trinity.config import config_error
from trinity.engine import SchedulerConfig
from trinity.flags import Flag, command_with_flags, model_flags
from trinity.pool.config import PoolConfig, parse_stage_deadlines, pool_scheduler
from trinity.pool.ray.config import RayConfig
from trinity.pool.ray.endpoints import load_gateway_config
from trinity.pool.server import run

__all__ = ["load_pool_config", "serve_command", "serve_flags"]

HELP = "Run the vector pool server (HTTP API: see docs/api.md; OpenAPI at /openapi.json)."
_DEADLINES_HELP = ("server-side deadline of a search or lookup sent without one (default: "
                   "decode=100,prefill=1000,background=10000)")


def serve_flags() -> list[Flag]:
    pool = model_flags(PoolConfig, skip=("scheduler", "ray"), names={"api_keys": ("--api-key",)},
                       types_={"api_keys": list[str]})
    scheduler = model_flags(SchedulerConfig, path=("scheduler",), panel="Scheduler (trinity.engine.SchedulerConfig)",
                            defaults=pool_scheduler(), names={"max_num_waiting": ("--max-num-waiting", "--max-queue")},
                            types_={"default_deadline_ms": str}, helps={"default_deadline_ms": _DEADLINES_HELP},
                            converters={"default_deadline_ms": parse_stage_deadlines})
    ray = model_flags(RayConfig, path=("ray",), panel="Ray Serve (trinity serve --ray)",
                      names={f: (f"--ray-{f.replace('_', '-')}",) for f in RayConfig.model_fields})
    return pool + scheduler + ray


def load_pool_config(path: Path | None, overrides: dict[str, Any]) -> PoolConfig:
    """``--api-key`` adds to the keys of the environment and the file; every other flag replaces."""
    keys = overrides.pop("api_keys", None)
    cfg = PoolConfig.load(path, **overrides)
    if keys:
        cfg = PoolConfig.load(path, **overrides, api_keys=cfg.api_keys | frozenset(keys))
    return cfg


def _serve(overrides: dict[str, Any],
           config: Path | None = typer.Option(None, help="TOML or JSON file (a scheduler table for the engine, a "
                                                         "ray table for --ray); flags and TRINITY_* variables "
                                                         "override it."),
           ray: bool = typer.Option(False, "--ray", help="Deploy on Ray Serve (replicas, sharding, gateway "
                                                         "replicas): the --ray-* flags; needs Ray Serve (the "
                                                         "ray extra of trinity).")) -> None:
    try:
        cfg = load_pool_config(config, overrides)
        cfg.check_bind()
        gateway = load_gateway_config(cfg.ray) if ray and cfg.ray.gateway_replicas else None
    except (ValueError, TypeError, OSError) as exc:
        raise typer.BadParameter(config_error(exc)) from None
    if not ray:
        run(cfg)
        return
    from trinity.pool.ray import require_ray

    try:
        require_ray()
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from trinity.pool.ray.deploy import run as run_on_ray

    try:
        run_on_ray(cfg, gateway)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def serve_command() -> click.Command:
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command("serve", help=HELP)(command_with_flags(_serve, serve_flags()))
    return typer.main.get_command(app)
