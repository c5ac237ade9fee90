"""Sweeps over a simulation: SLO attainment vs rate, goodput by bisection, and a planner for
the fewest GPUs (split across prefill / decode / vector) that hold a target rate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trinity.sim.cluster import SimResult, simulate
from trinity.sim.config import SimConfig

Tick = Callable[[], None] | None


def row_of(res: SimResult) -> dict[str, Any]:
    c, s = res.config.cluster, res.summary
    return {"placement": c.placement, "policy": c.policy, "rate": res.config.workload.rate, "gpus": res.num_gpus,
            "prefill": c.num_prefill, "decode": c.num_decode,
            "vector": c.num_vector if c.placement in ("dedicated", "cpu") else 0, **s,
            **{f"util_{k}": v for k, v in res.utilisation.items()}, "sim_s": res.sim_s, "wall_s": res.wall_s}


def attainment_curve(cfg: SimConfig, rates: list[float], tick: Tick = None) -> list[dict[str, Any]]:
    rows = []
    for rate in rates:
        rows.append(row_of(simulate(cfg.with_rate(rate))))
        if tick:
            tick()
    return rows


def goodput(cfg: SimConfig, lo: float = 0.5, hi: float | None = None, steps: int = 6, tick: Tick = None) -> float:
    """Highest rate whose attainment is at least ``cfg.slo.attainment`` (bisection; 0 if even
    ``lo`` misses).  ``hi`` defaults to doubling from ``lo`` until a rate misses."""
    target = cfg.slo.attainment

    def ok(rate: float) -> bool:
        res = simulate(cfg.with_rate(rate))
        if tick:
            tick()
        return res.summary["attainment"] >= target

    if not ok(lo):
        return 0.0
    if hi is None:
        hi = lo * 2
        while ok(hi):
            lo, hi = hi, hi * 2
            if hi > 1e5:
                return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@dataclass(frozen=True)
class Plan:
    prefill: int
    decode: int
    vector: int
    gpus: int
    attainment: float
    tried: int


def plan_gpus(cfg: SimConfig, rate: float, max_instances: int = 64, tick: Tick = None) -> Plan | None:
    """Fewest GPUs holding ``rate``: each role's minimum with the others generous (bisection),
    then one instance more for the busiest role until the whole split holds."""
    cfg = cfg.with_rate(rate)
    roles = ["prefill", "decode"] + (["vector"] if cfg.cluster.placement in ("dedicated", "cpu") else [])
    tried = [0]

    def run(counts: dict[str, int]) -> SimResult:
        tried[0] += 1
        res = simulate(cfg.with_cluster(**{f"num_{r}": n for r, n in counts.items()}))
        if tick:
            tick()
        return res

    def holds(counts: dict[str, int]) -> bool:
        return run(counts).summary["attainment"] >= cfg.slo.attainment

    generous = {r: max_instances for r in roles}
    if not holds(generous):
        return None
    best = {}
    for role in roles:
        lo, hi = 0, max_instances  # lo fails (0 instances), hi holds
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if holds({**generous, role: mid}) else (mid, hi)
        best[role] = hi
    for _ in range(3 * max_instances):
        res = run(best)
        if res.summary["attainment"] >= cfg.slo.attainment:
            return Plan(best["prefill"], best["decode"], best.get("vector", 0), res.num_gpus,
                        res.summary["attainment"], tried[0])
        busiest = max(roles, key=lambda r: res.utilisation[r] if best[r] < max_instances else -1.0)
        best[busiest] += 1
    return None
