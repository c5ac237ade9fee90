"""``trinity bench faults``: the reliability suite, with figures.

Each scenario starts its own real processes (pool server, gateway, emulated engines) in
a scratch directory, breaks something the way production does -- ``kill -9`` under
concurrent writers, a full disk, a torn WAL tail, a failing fsync, overload, a stalled
or killed LLM leg -- and reports what it measured as rows ``{scenario, check, value,
expect, ok}``.  The scenarios live with the code they test:
``faults_storage`` (pool durability), ``faults_overload`` (admission and deadlines),
``faults_gateway`` (the PD gateway's legs).  ``--quick`` is the short version CI runs.
"""

from __future__ import annotations

import importlib
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from trinity.bench.report import default_out_path, machine_info, make_console, print_table, write_json

GROUPS = ("trinity.bench.faults_storage", "trinity.bench.faults_overload", "trinity.bench.faults_gateway")
Scenario = Callable[[Path, bool], list[dict[str, Any]]]


@dataclass(frozen=True)
class FaultsConfig:
    quick: bool = False
    only: tuple[str, ...] = ()  # scenario names; empty = all
    out: Path | None = None


def scenarios() -> dict[str, Scenario]:
    """Every scenario of every group, in suite order."""
    found: dict[str, Scenario] = {}
    for module in GROUPS:
        found.update(importlib.import_module(module).SCENARIOS)
    return found


def run_scenario(name: str, fn: Scenario, quick: bool) -> tuple[list[dict[str, Any]], float]:
    """Rows of one scenario (a crash of the scenario itself is a failed row) and its seconds."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"trinity-faults-{name}-") as work:
        try:
            rows = fn(Path(work), quick)
        except Exception as e:  # noqa: BLE001 - one broken scenario must not hide the others
            rows = [{"scenario": name, "check": "scenario ran", "value": f"{type(e).__name__}: {e}", "expect": "no error",
                     "ok": False, "traceback": traceback.format_exc(limit=8)}]
    return rows, time.perf_counter() - t


def run_faults(cfg: FaultsConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or make_console()
    available = scenarios()
    unknown = set(cfg.only) - set(available)
    if unknown:
        raise ValueError(f"only: unknown scenario(s) {sorted(unknown)}; known: {', '.join(available)}")
    rows, seconds = [], {}
    for name, fn in available.items():
        if cfg.only and name not in cfg.only:
            continue
        console.print(f"[bold]{name}[/] ...", highlight=False)
        got, seconds[name] = run_scenario(name, fn, cfg.quick)
        rows += got
        bad = sum(not r["ok"] for r in got)
        console.print(f"  {len(got)} checks, {bad} failed, {seconds[name]:.0f} s", highlight=False)
    print_table("Reliability suite" + (" (quick)" if cfg.quick else ""), rows,
                [("scenario", "scenario"), ("check", "check"), ("value", "value"), ("expect", "expect"),
                 ("ok", "ok")], console)
    failed = [r for r in rows if not r["ok"]]
    console.print(f"{len(rows) - len(failed)}/{len(rows)} checks passed", highlight=False)
    payload = {"bench": "faults", "config": {**asdict(cfg), "out": str(cfg.out) if cfg.out else None},
               "machine": machine_info(), "seconds": seconds, "rows": rows, "failed": len(failed)}
    path = write_json(cfg.out or default_out_path("faults"), payload)
    console.print(f"wrote {path}")
    return payload
