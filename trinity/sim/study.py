"""``trinity sim study``: goodput per GPU of each retrieval placement and vector batching
policy, for 8B- and 70B-class profiles at 8-64 GPUs over a 10M-vector RAG corpus."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trinity.bench.report import default_out_path, machine_info, make_console, print_table, write_json
from trinity.sim.cluster import Cluster, simulate
from trinity.sim.config import (ClusterConfig, LengthDist, RetrievalMix, SimConfig, SloConfig, WorkloadConfig,
                                default_mix)
from trinity.sim.report import plot_goodput, progress_bar
from trinity.sim.study_doc import write_doc
from trinity.sim.sweep import goodput


MIXES = {
    "light": default_mix(),
    "heavy": RetrievalMix(rag_share=0.5, cache_share=0.2, cache_hit_rate=0.3, decode_share=0.5, decode_every=32,
                          k=10, nprobe=128, decode_nprobe=128),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    num_prefill: int  # instances
    num_decode: int
    num_vector: int  # dedicated GPUs / CPU nodes
    slo: SloConfig
    lo: float  # a rate every placement holds (bisection start)
    mix: str = "light"
    corpus_vectors: int = 10_000_000
    nlist: int = 16_384


SCENARIOS = (
    Scenario("8B/8 light", "llama-3-8b-h100", 4, 4, 1, SloConfig(500.0, 50.0), 4.0),
    Scenario("8B/8 heavy", "llama-3-8b-h100", 4, 4, 1, SloConfig(500.0, 50.0), 4.0, "heavy"),
    Scenario("8B/32 light", "llama-3-8b-h100", 16, 16, 1, SloConfig(500.0, 50.0), 16.0),
    Scenario("8B/32 heavy", "llama-3-8b-h100", 16, 16, 1, SloConfig(500.0, 50.0), 16.0, "heavy"),
    Scenario("8B/64 heavy", "llama-3-8b-h100", 32, 32, 2, SloConfig(500.0, 50.0), 32.0, "heavy"),
    Scenario("8B/32 heavy 100M", "llama-3-8b-h100", 16, 16, 2, SloConfig(500.0, 50.0), 16.0, "heavy", 100_000_000,
             65_536),
    Scenario("70B/32 light", "llama-3-70b-h100-tp4", 4, 4, 1, SloConfig(1000.0, 100.0), 4.0),
    Scenario("70B/32 heavy", "llama-3-70b-h100-tp4", 4, 4, 1, SloConfig(1000.0, 100.0), 4.0, "heavy"),
    Scenario("70B/64 heavy", "llama-3-70b-h100-tp4", 8, 8, 1, SloConfig(1000.0, 100.0), 8.0, "heavy"),
)
QUICK = (SCENARIOS[0], SCENARIOS[1], SCENARIOS[3], SCENARIOS[5], SCENARIOS[6], SCENARIOS[7])
COMBOS = (("dedicated", "stage"), ("dedicated", "fifo"), ("dedicated", "static"), ("prefill", "stage"),
          ("prefill", "static"), ("decode", "stage"), ("decode", "static"), ("cpu", "stage"), ("cpu", "static"))


def scenario_config(s: Scenario, placement: str, policy: str, duration_s: float, seed: int) -> SimConfig:
    wl = WorkloadConfig(rate=s.lo, duration_s=duration_s, prompt=LengthDist("lognormal", 1024, 0.6),
                        output=LengthDist("lognormal", 256, 0.6), retrieval=MIXES[s.mix])
    cl = ClusterConfig(num_prefill=s.num_prefill, num_decode=s.num_decode, num_vector=s.num_vector,
                       placement=placement, policy=policy, model=s.model, corpus_vectors=s.corpus_vectors,
                       nlist=s.nlist)
    return SimConfig(wl, cl, s.slo, seed=seed)


def run_study(quick: bool = False, duration_s: float = 20.0, seed: int = 0, doc: Path | None = None,
              out: Path | None = None, steps: int = 4) -> dict[str, Any]:
    console = make_console()
    scenarios = QUICK if quick else SCENARIOS
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with progress_bar("study (placements x policies)", len(scenarios) * len(COMBOS), console) as advance:
        for s in scenarios:
            for placement, policy in COMBOS:
                cfg = scenario_config(s, placement, policy, duration_s, seed)
                fits = Cluster(cfg).index_fits
                g = goodput(cfg, lo=s.lo, steps=steps) if fits else 0.0
                at = simulate(cfg.with_rate(max(g, s.lo)))
                rows.append({"scenario": s.name, "mix": s.mix, "model": s.model, "placement": placement, "policy": policy,
                             "gpus": at.num_gpus, "cpu_nodes": s.num_vector if placement == "cpu" else 0,
                             "goodput": g, "goodput_per_gpu": g / at.num_gpus,
                             "p99_ttft_ms": at.summary["p99_ttft_ms"], "mean_tpot_ms": at.summary["mean_tpot_ms"],
                             "search_p99_ms": at.summary.get("search_decode_p99_ms", float("nan")),
                             "partial": at.summary["search_partial_share"], "util_vector": at.utilisation["vector"],
                             "fits": fits})
                advance()
    wall = time.perf_counter() - t0
    print_table("Placement study: goodput (req/s at >= 90% SLO attainment) per GPU", rows, [
        ("scenario", "scenario"), ("placement", "placement"), ("policy", "policy"), ("gpus", "GPUs"),
        ("cpu_nodes", "CPU nodes"), ("goodput", "goodput", ".2f"), ("goodput_per_gpu", "per GPU", ".3f"),
        ("p99_ttft_ms", "p99 TTFT", ".0f"), ("mean_tpot_ms", "TPOT", ".1f"), ("search_p99_ms", "p99 dec. search", ".1f"),
        ("partial", "partial", ".1%")], console)
    path = Path(out or default_out_path("sim-study"))
    png = plot_goodput(rows, path.with_suffix(".png"), "Goodput per GPU by placement / vector batching policy")
    payload = {"command": "sim study", "quick": quick, "duration_s": duration_s, "seed": seed, "rows": rows,
               "wall_s": wall, "machine": machine_info(), "plot": str(png),
               "scenarios": [s.__dict__ | {"slo": s.slo.__dict__} for s in scenarios]}
    write_json(path, payload)
    if doc is not None:
        write_doc(doc, payload, png)
        console.print(f"wrote {doc}")
    console.print(f"wrote {path} and {png} ({wall:.0f} s)")
    return payload
