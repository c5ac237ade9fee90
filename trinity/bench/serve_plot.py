"""The PNG of ``trinity bench serve``: latency over the run, and the TTFT / TPOT distributions."""

from __future__ import annotations

from pathlib import Path

from trinity.bench.serve_config import Outcome

__all__ = ["plot_serve"]


def plot_serve(outcomes: list[Outcome], path: Path, title: str) -> Path:
    """Three panels: TTFT and E2EL per request by arrival time (failures marked); TTFT histogram;
    TPOT histogram. Writes ``path`` and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min((o.start for o in outcomes), default=0.0)
    ok = [o for o in outcomes if o.success]
    failed = [o for o in outcomes if not o.success]
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) * 1e3 for o in ok if o.output_tokens > 1]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    a.scatter([o.start - t0 for o in ok], [o.latency * 1e3 for o in ok], s=8, label="E2EL")
    a.scatter([o.start - t0 for o in ok], [o.ttft * 1e3 for o in ok], s=8, label="TTFT")
    if failed:
        a.scatter([o.start - t0 for o in failed], [0.0] * len(failed), s=14, marker="x", color="red", label="failed")
    a.set(xlabel="request start (s into the run)", ylabel="ms", title="latency over time")
    a.legend(loc="upper left")
    b.hist([o.ttft * 1e3 for o in ok] or [0.0], bins=40)
    b.set(xlabel="TTFT (ms)", ylabel="requests", title="TTFT distribution")
    c.hist(tpots or [0.0], bins=40, color="tab:green")
    c.set(xlabel="TPOT (ms)", ylabel="requests", title="TPOT distribution")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
