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
from trinity.pool.server import run

__all__ = ["load_pool_config", "serve_command", "serve_flags"]

HELP = "Run the vector pool server (HTTP API: see docs/api.md; OpenAPI at /openapi.json)."
_DEADLINES_HELP = ("server-side deadline of a search or lookup sent without one (default: "
                   "decode=100,prefill=1000,background=10000)")


def serve_flags() -> list[Flag]:
    pool = model_flags(PoolConfig, skip=("scheduler",), names={"api_keys": ("--api-key",)},
                       types_={"api_keys": list[str]})
    scheduler = model_flags(SchedulerConfig, path=("scheduler",), panel="Scheduler (trinity.engine.SchedulerConfig)",
                            defaults=pool_scheduler(), names={"max_num_waiting": ("--max-num-waiting", "--max-queue")},
                            types_={"default_deadline_ms": str}, helps={"default_deadline_ms": _DEADLINES_HELP},
                            converters={"default_deadline_ms": parse_stage_deadlines})
    return pool + scheduler


def load_pool_config(path: Path | None, overrides: dict[str, Any]) -> PoolConfig:
    """``--api-key`` adds to the keys of the environment and the file; every other flag replaces."""
    keys = overrides.pop("api_keys", None)
    cfg = PoolConfig.load(path, **overrides)
    if keys:
        cfg = PoolConfig.load(path, **overrides, api_keys=cfg.api_keys | frozenset(keys))
    return cfg


def _serve(overrides: dict[str, Any],
           config: Path | None = typer.Option(None, help="TOML or JSON file (a scheduler table for the engine); "
                                                         "flags and TRINITY_* variables override it.")) -> None:
    try:
        cfg = load_pool_config(config, overrides)
        cfg.check_bind()
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(config_error(exc)) from None
    run(cfg)


def serve_command() -> click.Command:
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command("serve", help=HELP)(command_with_flags(_serve, serve_flags()))
    return typer.main.get_command(app)
