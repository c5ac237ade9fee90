"""``trinity sim run|sweep|plan|study`` and ``trinity bench calibrate`` (typer; bodies import lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

sim_app = typer.Typer(help="Cluster simulator (SimPy): where retrieval should live in a PD deployment, and how "
                           "many GPUs.", no_args_is_help=True)

Rate = Annotated[float, typer.Option(help="offered rate (req/s)")]
Duration = Annotated[float, typer.Option(help="seconds of arrivals")]
Prefill = Annotated[int, typer.Option(help="prefill instances")]
Decode = Annotated[int, typer.Option(help="decode instances")]
Vector = Annotated[int, typer.Option(help="dedicated vector GPUs (placement dedicated) or CPU nodes (cpu)")]
Placement = Annotated[str, typer.Option(help="dedicated | prefill | decode | cpu")]
Policy = Annotated[str, typer.Option(help="vector batching: stage | fifo | static")]
Model = Annotated[str, typer.Option(help="model profile (name under trinity/sim/profiles or a path)")]
Search = Annotated[str, typer.Option(help="GPU search profile (name or path)")]
TtftSlo = Annotated[float, typer.Option(help="TTFT SLO (ms)")]
TpotSlo = Annotated[float, typer.Option(help="TPOT SLO (ms)")]
Trace = Annotated[Optional[str], typer.Option(help="Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)")]
Seed = Annotated[int, typer.Option(help="seed of everything random")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="override, e.g. workload.retrieval.decode_share=0.5, "
                                                                 "cluster.corpus_vectors=1000000 (repeatable)")]
Out = Annotated[Optional[Path], typer.Option(help="JSON output [default: benchmarks/results/sim-...json]")]


def _config(**kw):
    from trinity.sim.options import build_config

    sets = kw.pop("sets") or []
    try:
        return build_config(**kw, sets=sets)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@sim_app.command("run")
def run(rate: Rate = 10.0, duration: Duration = 60.0, prefill: Prefill = 1, decode: Decode = 1, vector: Vector = 1,
        placement: Placement = "dedicated", policy: Policy = "stage", model: Model = "llama-3-8b-h100",
        search: Search = "search-h100", ttft_slo: TtftSlo = 1000.0, tpot_slo: TpotSlo = 100.0, trace: Trace = None,
        seed: Seed = 0, sets: Sets = None, out: Out = None) -> None:
    """Simulate one configuration at one rate; per-request records go to the JSON."""
    from trinity.sim.commands import cmd_run

    cmd_run(_config(rate=rate, duration=duration, prefill=prefill, decode=decode, vector=vector, placement=placement,
                    policy=policy, model=model, search=search, ttft_slo=ttft_slo, tpot_slo=tpot_slo, trace=trace,
                    seed=seed, sets=sets), out)


@sim_app.command("sweep")
def sweep(rates: Annotated[str, typer.Option(help="comma-separated rates")] = "5,10,20,40",
          placements: Annotated[str, typer.Option(help="comma-separated placements")] = "dedicated,prefill,decode,cpu",
          policies: Annotated[str, typer.Option(help="comma-separated vector policies")] = "stage",
          goodput: Annotated[bool, typer.Option(help="also bisect each placement's goodput")] = True,
          duration: Duration = 30.0, prefill: Prefill = 1, decode: Decode = 1, vector: Vector = 1,
          model: Model = "llama-3-8b-h100", search: Search = "search-h100", ttft_slo: TtftSlo = 1000.0,
          tpot_slo: TpotSlo = 100.0, trace: Trace = None, seed: Seed = 0, sets: Sets = None, out: Out = None) -> None:
    """SLO attainment vs rate per placement (and policy), goodput by bisection, plot + table."""
    from trinity.sim.commands import cmd_sweep

    cfg = _config(rate=1.0, duration=duration, prefill=prefill, decode=decode, vector=vector, placement="dedicated",
                  policy="stage", model=model, search=search, ttft_slo=ttft_slo, tpot_slo=tpot_slo, trace=trace,
                  seed=seed, sets=sets)
    cmd_sweep(cfg, [float(r) for r in rates.split(",")], placements.split(","), policies.split(","), goodput, out)


@sim_app.command("plan")
def plan(rate: Rate = 20.0, duration: Duration = 30.0, placement: Placement = "dedicated", policy: Policy = "stage",
         model: Model = "llama-3-8b-h100", search: Search = "search-h100", ttft_slo: TtftSlo = 1000.0,
         tpot_slo: TpotSlo = 100.0, max_instances: Annotated[int, typer.Option(help="per role")] = 32,
         trace: Trace = None, seed: Seed = 0, sets: Sets = None) -> None:
    """Fewest GPUs (prefill / decode / vector) that hold ``rate`` at the SLO attainment target."""
    from trinity.sim.commands import cmd_plan

    cmd_plan(_config(rate=rate, duration=duration, placement=placement, policy=policy, model=model, search=search,
                     ttft_slo=ttft_slo, tpot_slo=tpot_slo, trace=trace, seed=seed, sets=sets), max_instances)


@sim_app.command("study")
def study(quick: Annotated[bool, typer.Option(help="smaller grid (minutes, not tens of minutes)")] = False,
          duration: Duration = 20.0, seed: Seed = 0,
          doc: Annotated[Path, typer.Option(help="markdown written")] = Path("docs/placement-study.md"),
          out: Out = None) -> None:
    """The placement study: goodput per GPU per placement x batching policy, 8-64 GPUs, 8B/70B."""
    from trinity.sim.study import run_study

    run_study(quick=quick, duration_s=duration, seed=seed, doc=doc, out=out)


@sim_app.command("validate")
def validate(measured: Annotated[list[Path], typer.Argument(help="`trinity sim measure` JSON files to compare")],
             calibration: Annotated[Path, typer.Option(help="the measured run the host's CPU costs are read off")],
             search: Annotated[str, typer.Option(help="CPU search profile of the pool")] = "search-cpu-demo",
             seeds: Annotated[int, typer.Option(min=1, help="simulated replays pooled per measured run")] = 3,
             background: Annotated[str, typer.Option(help="other processes' CPU: trace (each run's measured "
                                                          "runnable threads, rescaled to the CPU they used) | raw "
                                                          "(not rescaled) | mean | none")] = "trace",
             out: Out = None) -> None:
    """Simulate the `make demo` stack and report the error of p50/p99 TTFT and mean TPOT per rate."""
    from trinity.sim.commands import cmd_validate

    if background not in ("trace", "raw", "mean", "none"):
        raise typer.BadParameter("--background: trace | raw | mean | none")
    cmd_validate(measured, calibration, search, seeds, out, background)


@sim_app.command("measure")
def measure(rates: Annotated[str, typer.Option(help="comma-separated rates (req/s)")] = "2,4,8",
            repeats: Annotated[int, typer.Option(min=1, help="runs per rate, interleaved across rates")] = 3,
            duration: Annotated[float, typer.Option(help="seconds of arrivals per run (requests = rate x this, "
                                                         "at least --min-requests)")] = 80.0,
            min_requests: Annotated[int, typer.Option(help="fewest requests per run")] = 400,
            out_dir: Annotated[Path, typer.Option(help="one JSON per run")] = Path("benchmarks/results/sim-validation"),
            lock: Annotated[str, typer.Option(help="flock file held during each run ('' = none)")] =
                "/tmp/trinity-measure.lock") -> None:
    """Measured runs of the demo stack (fresh stack per run) with per-request traces and host CPU samples."""
    from trinity.sim.measure import measure_plan

    rs = [float(r) for r in rates.split(",")]
    out_dir.mkdir(parents=True, exist_ok=True)
    measure_plan(rs, repeats, {r: max(min_requests, round(r * duration)) for r in rs}, out_dir, lock or None)


def calibrate(
    num_vectors: Annotated[int, typer.Option(help="vectors in the synthetic index")] = 100_000,
    dim: Annotated[int, typer.Option(help="vector dimension")] = 384,
    nlist: Annotated[int, typer.Option(help="IVF lists")] = 256,
    index: Annotated[str, typer.Option(help="ivf | flat")] = "ivf",
    repeats: Annotated[int, typer.Option(min=1, help="passes over the burst sizes")] = 5,
    threads: Annotated[Optional[int], typer.Option(min=1, help="threads [default: all cores]")] = None,
    name: Annotated[str, typer.Option(help="profile name")] = "search-cpu-calibrated",
    out: Annotated[Optional[Path], typer.Option(help="profile path [default: trinity/sim/profiles/NAME.json]")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda: where the index lives")] = "cpu",
    seed: Seed = 0,
) -> None:
    """Fit the simulator's vector-search cost model from real engine runs here; write a profile."""
    from trinity.sim.calibrate import CalibrateConfig, run_calibrate

    res = run_calibrate(CalibrateConfig(num_vectors=num_vectors, dim=dim, nlist=nlist, index=index, repeats=repeats,
                                        threads=threads, name=name, out=out, seed=seed, device=device))
    c, q = res["cost"], res["quality"]
    typer.echo(f"fixed {c.fixed_s * 1e3:.3f} ms + pairs / {c.pairs_per_s:.3g}/s + reads / {c.reads_per_s:.3g}/s + "
               f"items x {c.per_item_s * 1e6:.1f} us  (R^2 {q['r2']:.3f}, median error {q['median_rel_error']:.0%}, "
               f"{q['kept']}/{q['iterations']} iterations)\nwrote {res['path']}")
