"""Per-request records of a simulation and their summary (TTFT, TPOT, retrieval, SLO attainment)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trinity.sim.config import SloConfig

STATUSES = ("ok", "cache_hit", "unfinished")


@dataclass
class Record:
    index: int
    arrival: float
    prompt_tokens: int
    output_tokens: int
    status: str = "unfinished"
    ttft_s: float = float("nan")
    tpot_s: float = float("nan")
    e2e_s: float = float("nan")
    searches: list[tuple[str, str, float]] = field(default_factory=list)  # (stage, status, latency s)


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


def attained(records: list[Record], slo: SloConfig) -> np.ndarray:
    """Per request: finished within the TTFT SLO and (if it decoded) the TPOT SLO."""
    ttft = np.array([r.ttft_s for r in records]) * 1e3
    tpot = np.nan_to_num(np.array([r.tpot_s for r in records]) * 1e3, nan=0.0)
    done = np.array([r.status != "unfinished" for r in records], dtype=bool)
    return done & (ttft <= slo.ttft_ms) & (tpot <= slo.tpot_ms)


def summarize(records: list[Record], slo: SloConfig) -> dict[str, Any]:
    """The figures the report and the sweeps read (milliseconds)."""
    done = [r for r in records if r.status != "unfinished"]
    ttft = np.array([r.ttft_s for r in done]) * 1e3
    tpot = np.array([r.tpot_s for r in done if r.status == "ok" and r.output_tokens > 1]) * 1e3
    out: dict[str, Any] = {
        "requests": len(records), "finished": len(done),
        **{f"n_{s}": sum(r.status == s for r in records) for s in STATUSES},
        "p50_ttft_ms": _pct(ttft, 50), "p99_ttft_ms": _pct(ttft, 99), "mean_ttft_ms": float(ttft.mean()) if ttft.size else float("nan"),
        "mean_tpot_ms": float(tpot.mean()) if tpot.size else float("nan"), "p99_tpot_ms": _pct(tpot, 99),
        "attainment": float(attained(records, slo).mean()) if records else float("nan"),
    }
    by_stage: dict[str, list[float]] = {}
    partial = total = 0
    for r in records:
        for stage, status, lat in r.searches:
            by_stage.setdefault(stage, []).append(lat * 1e3)
            total += 1
            partial += status != "complete"
    for stage, lat in sorted(by_stage.items()):
        arr = np.asarray(lat)
        out[f"search_{stage}_p50_ms"], out[f"search_{stage}_p99_ms"] = _pct(arr, 50), _pct(arr, 99)
    out["searches"], out["search_partial_share"] = total, partial / total if total else 0.0
    return out
