"""Tables (rich), PNG plots (matplotlib) and progress bars of the simulator's commands."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trinity.bench.report import print_table

RUN_COLUMNS = [("placement", "placement"), ("policy", "policy"), ("rate", "req/s", "g"), ("gpus", "GPUs"),
               ("prefill", "P"), ("decode", "D"), ("vector", "V"), ("n_unfinished", "lost"),
               ("p50_ttft_ms", "p50 TTFT ms", ".1f"), ("p99_ttft_ms", "p99 TTFT ms", ".1f"),
               ("mean_tpot_ms", "mean TPOT ms", ".2f"), ("search_prefill_p99_ms", "p99 search ms", ".2f"),
               ("search_partial_share", "partial", ".1%"), ("attainment", "SLO att.", ".1%"),
               ("util_vector", "vec busy", ".0%")]


def print_runs(title: str, rows: Sequence[dict[str, Any]], console: Console) -> None:
    print_table(title, rows, RUN_COLUMNS, console)


@contextmanager
def progress_bar(label: str, total: float, console: Console | None = None, enabled: bool = True):
    """Yields ``advance(amount=1)``; a rich bar on the console."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not enabled, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda amount=1: bar.advance(task, amount)


def plot_attainment(rows: Sequence[dict[str, Any]], path: Path, slo_share: float = 0.9, title: str = "") -> Path:
    """SLO attainment vs rate, one line per (placement, policy)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault(f"{r['placement']}/{r['policy']}", []).append((r["rate"], r["attainment"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=label)
    ax.axhline(100 * slo_share, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title or "SLO attainment vs rate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_goodput(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Goodput per GPU, grouped bars: one group per scenario, one bar per (placement, policy)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = sorted({r["scenario"] for r in rows}, key=lambda s: [r["scenario"] for r in rows].index(s))
    labels = sorted({f"{r['placement']}/{r['policy']}" for r in rows})
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(groups)), 4.2))
    x = np.arange(len(groups))
    for j, label in enumerate(labels):
        vals = [next((r["goodput_per_gpu"] for r in rows if r["scenario"] == g
                      and f"{r['placement']}/{r['policy']}" == label), 0.0) for g in groups]
        ax.bar(x + j * width - 0.4 + width / 2, vals, width, label=label)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel("goodput per GPU (req/s at >= 90% SLO)")
    ax.set_title(title or "Goodput per GPU")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
