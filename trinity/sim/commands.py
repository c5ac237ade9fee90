"""Bodies of ``trinity sim run|sweep|plan``: simulate, print a table, write JSON (and PNG)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from trinity.bench.report import default_out_path, machine_info, make_console, write_json
from trinity.sim.cluster import simulate
from trinity.sim.config import SimConfig
from trinity.sim.report import plot_attainment, print_runs, progress_bar
from trinity.sim.sweep import attainment_curve, goodput, plan_gpus, row_of


def cmd_run(cfg: SimConfig, out: Path | None) -> dict[str, Any]:
    console = make_console()
    horizon = cfg.workload.duration_s
    with progress_bar("simulating (s)", round(horizon), console) as advance:
        seen = [0.0]

        def progress(t: float) -> None:
            step = min(t, horizon) - seen[0]
            if step > 0:
                advance(step)
                seen[0] += step
        res = simulate(cfg, progress=progress)
    row = row_of(res)
    print_runs("trinity sim run", [row], console)
    console.print(f"simulated {res.sim_s:.1f} s of a {res.num_gpus}-GPU cluster in {res.wall_s:.1f} s wall "
                  f"(sim/wall {res.sim_s / max(res.wall_s, 1e-9):.2f}x)")
    payload = {"command": "sim run", "config": cfg.to_dict(), "summary": row, "machine": machine_info(),
               "records": [asdict(r) for r in res.records]}
    path = write_json(out or default_out_path("sim-run"), payload)
    console.print(f"wrote {path}")
    return payload


def cmd_sweep(cfg: SimConfig, rates: list[float], placements: list[str], policies: list[str], with_goodput: bool,
              out: Path | None) -> dict[str, Any]:
    console = make_console()
    combos = [(p, q) for p in placements for q in policies]
    rows, goodputs = [], []
    total = len(combos) * (len(rates) + (10 if with_goodput else 0))
    with progress_bar("sweep (simulations)", total, console) as advance:
        for placement, policy in combos:
            c = cfg.with_cluster(placement=placement, policy=policy)
            rows += attainment_curve(c, rates, tick=advance)
            if with_goodput:
                g = goodput(c, lo=min(rates), tick=advance)
                n = simulate(c.with_rate(max(g, min(rates)))).num_gpus
                goodputs.append({"placement": placement, "policy": policy, "goodput": g, "gpus": n,
                                 "goodput_per_gpu": g / n})
    print_runs("SLO attainment vs rate", rows, console)
    if goodputs:
        from trinity.bench.report import print_table
        print_table("Goodput (highest rate at >= 90% SLO attainment)", goodputs,
                    [("placement", "placement"), ("policy", "policy"), ("goodput", "req/s", ".2f"), ("gpus", "GPUs"),
                     ("goodput_per_gpu", "req/s per GPU", ".3f")], console)
    path = Path(out or default_out_path("sim-sweep"))
    png = plot_attainment(rows, path.with_suffix(".png"), cfg.slo.attainment)
    payload = {"command": "sim sweep", "config": cfg.to_dict(), "rows": rows, "goodput": goodputs,
               "machine": machine_info(), "plot": str(png)}
    write_json(path, payload)
    console.print(f"wrote {path} and {png}")
    return payload


def cmd_plan(cfg: SimConfig, max_instances: int) -> None:
    console = make_console()
    with progress_bar("planning (simulations)", None, console) as advance:
        plan = plan_gpus(cfg, cfg.workload.rate, max_instances, tick=advance)
    if plan is None:
        console.print(f"[red]no split with up to {max_instances} instances per role holds {cfg.workload.rate} req/s")
        raise SystemExit(1)
    res = simulate(cfg.with_cluster(num_prefill=plan.prefill, num_decode=plan.decode, num_vector=max(plan.vector, 1)))
    print_runs(f"Fewest GPUs for {cfg.workload.rate:g} req/s at >= {cfg.slo.attainment:.0%} SLO attainment "
               f"({plan.tried} simulations)", [row_of(res)], console)
    console.print(f"plan: {plan.prefill} prefill + {plan.decode} decode instances + {plan.vector} vector "
                  f"{'GPUs' if cfg.cluster.placement == 'dedicated' else 'nodes'} = {plan.gpus} GPUs")


def cmd_validate(measured: list[Path], calibration: Path, search: str, seeds: int, out: Path | None,
                 background: str = "trace") -> dict:
    from trinity.bench.report import print_table
    from trinity.sim.validate import fit_costs, load_runs, measured_metrics, simulate_run, validate

    console = make_console()
    cal = load_runs([calibration])[0]
    costs = fit_costs(cal)
    shown = {k: v for k, v in asdict(costs).items() if not isinstance(v, tuple)}
    console.print(f"host costs from {calibration} (ms): {shown}; {len(costs.embed_ms)} embedding samples")
    res = validate(measured, costs, search, seeds, background)
    print_table("Simulated vs measured demo stack (medians over repeats)", res["rows"], [
        ("rate", "req/s", "g"), ("metric", "metric"), ("repeats", "runs", "d"), ("measured", "measured", ".2f"),
        ("measured_min", "min", ".2f"), ("measured_max", "max", ".2f"), ("spread", "spread", ".0%"),
        ("simulated", "simulated", ".2f"), ("error", "error", "+.1%")], console)
    payload = {"command": "sim validate", "calibration": str(calibration), "background": background,
               "costs": {**shown, "num_embed_samples": len(costs.embed_ms)}, "search_profile": search, "seeds": seeds,
               "calibration_check": {"measured": measured_metrics(cal),
                                     "simulated": simulate_run(cal, costs, search, seeds, background)},
               **res, "machine": machine_info()}
    path = write_json(out or default_out_path("sim-validate"), payload)
    console.print(f"wrote {path}")
    return payload
