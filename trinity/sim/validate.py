"""``trinity sim validate``: simulate the ``make demo`` stack and compare with measured runs.

Measured runs come from ``trinity sim measure`` (:mod:`trinity.sim.measure`): each keeps its
requests (class, arrival, trace) and the host's CPU (per process; runnable threads of other
processes, sampled at ~20 Hz).  The simulation replays each run's arrivals and request
classes through :class:`~trinity.sim.demo.DemoCluster`, with the CPU costs of
:func:`fit_costs` -- read off ONE calibration run -- and, as an input of the environment,
the run's own background (other processes' runnable threads over time; ``background="none"``
drops it).  Metrics follow ``trinity bench serve``: p50 and p99 TTFT over all requests, mean
TPOT over those with more than one token (cached answers included).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trinity.gateway.config import RetrievalConfig
from trinity.sim.config import ClusterConfig, LengthDist, RetrievalMix, SimConfig, SloConfig, WorkloadConfig
from trinity.sim.demo import HostCosts, simulate_demo
from trinity.sim.workload import Workload

METRICS = ("p50_ttft_ms", "p99_ttft_ms", "mean_tpot_ms")
PROCS = ("driver", "gateway", "pool", "prefill-0", "decode-0")


def run_workload(d: dict[str, Any]) -> Workload:
    """The measured run's requests as a simulator workload (arrivals, classes, cache hits)."""
    rows = sorted((r for r in d["requests"] if r["ok"]), key=lambda r: r["start"])
    col = lambda f, t=bool: np.asarray([f(r) for r in rows], dtype=t)  # noqa: E731
    return Workload(col(lambda r: r["start"], float), col(lambda r: max(r["prompt_tokens"], 1), np.int64),
                    col(lambda r: max(r["output_tokens"], 1), np.int64), col(lambda r: "retrieval" in r["timings_ms"]),
                    col(lambda r: "embed" in r["timings_ms"]), col(lambda r: r["cache"] == "hit"),
                    col(lambda r: bool(r["decode_retrievals"])))


def background_steps(d: dict[str, Any], rescale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Runnable threads of other processes over the run: host runnable less the stack's (~20 Hz),
    rescaled in each 1 s window to the cores other processes (and the hypervisor) actually used
    then: kernel threads woken by the stack's traffic (rcu, kworkers, softirq) show as runnable
    but use almost no CPU.  The rescaled count in turn misses the demand of threads that waited
    for a core (``rescale=False``: the raw count, an upper bound)."""
    s, t0 = np.asarray(d["runnable"]["samples"], dtype=float), d["runnable"]["t0"]
    t, other = s[:, 0] - t0, np.maximum(s[:, 1] - s[:, 2], 0.0)
    if not rescale:
        return t, other
    cpu = d["cpu_samples"]
    for a, b in zip(cpu, cpu[1:]):
        used = (b["host"] - a["host"] + b["steal"] - a["steal"] - sum(b[p] - a[p] for p in PROCS)) / (b["t"] - a["t"])
        sel = (t >= a["t"] - t0) & (t < b["t"] - t0)
        raw = other[sel].mean() if sel.any() else 0.0
        other[sel] = other[sel] * (max(used, 0.0) / raw) if raw > 0 else max(used, 0.0)
    return t, other


def _in_flight(d: dict[str, Any], edges: np.ndarray) -> np.ndarray:
    busy = np.zeros(edges.size - 1, dtype=bool)
    for r in d["requests"]:
        lo, hi = np.searchsorted(edges, [r["start"], r["start"] + r["latency"] + 0.05])
        busy[max(lo - 1, 0):hi] = True
    return busy


def idle_rates(d: dict[str, Any]) -> dict[str, float]:
    """CPU per second of each stack process in the 1 s windows with no request in flight."""
    s, t0 = d["cpu_samples"], d["runnable"]["t0"]
    edges = np.asarray([x["t"] - t0 for x in s])
    quiet = ~_in_flight(d, edges)
    dt = np.diff(edges)[quiet]
    return {p: float(np.diff([x[p] for x in s])[quiet].sum() / max(dt.sum(), 1e-9)) for p in PROCS}


def fit_costs(d: dict[str, Any], cores: int = 2) -> HostCosts:
    """Per-operation CPU of each process from one calibration run: each process's CPU above its
    idle rate, over the operations it served.  Embedding: the trace's samples (1 torch thread).
    A pool call's gateway share is the cache lookup's wall time less the pool's CPU per call;
    an emulator leg costs the same on both engines (same server code); the client parses a
    streamed token like the gateway relays one."""
    rows = [r for r in d["requests"] if r["ok"]]
    idle, cpu, wall = idle_rates(d), d["cpu"], d["cpu"]["wall"]
    net = {p: max(cpu[p] - idle[p] * wall, 0.0) for p in PROCS}
    embeds = [r["timings_ms"]["embed"] for r in rows if "embed" in r["timings_ms"]]
    dembeds = [x["embed_ms"] for r in rows for x in r["decode_retrievals"] if x.get("embed_ms")]
    searches = sum("retrieval" in r["timings_ms"] for r in rows)
    dsearch = sum(len(r["decode_retrievals"]) for r in rows)
    prefills = sum("prefill" in r["timings_ms"] for r in rows)
    lookups, inserts = len(embeds), prefills
    pool_call = net["pool"] / max(lookups + searches + dsearch + inserts, 1)
    lookup_ms = float(np.median([r["timings_ms"]["cache_lookup"] for r in rows if "cache_lookup" in r["timings_ms"]]))
    gw_call = max(lookup_ms / 1e3 - pool_call, 0.0)
    legs = prefills + prefills + dsearch
    tokens = sum(r["output_tokens"] for r in rows)
    decode_tokens = sum(r["output_tokens"] for r in rows if r["cache"] != "hit")
    calls = lookups + searches + dsearch + inserts + legs
    gw_rest = net["gateway"] - (sum(embeds) + sum(dembeds)) / 1e3 - gw_call * calls
    gw_token = max(gw_rest, 0.0) / max(tokens, 1)
    leg = net["prefill-0"] / max(prefills, 1)
    dec_token = max(net["decode-0"] - leg * (prefills + dsearch), 0.0) / max(decode_tokens, 1)
    client = max(net["driver"] - gw_token * tokens, 0.0) / max(len(rows), 1)
    r = float(np.mean([x["prompt_tokens"] for x in rows if "retrieval" in x["timings_ms"]] or [0.0]))
    q = float(np.mean([x["prompt_tokens"] for x in rows if "retrieval" not in x["timings_ms"] and x["cache"] != "hit"]
                      or [r]))
    ms = lambda s: round(s * 1e3, 4)  # noqa: E731
    return HostCosts(cores=cores, embed_ms=tuple(embeds), decode_embed_ms=tuple(dembeds or embeds),
                     client_request_ms=ms(client), client_token_ms=ms(gw_token), gateway_request_ms=0.0,
                     gateway_call_ms=ms(gw_call), gateway_token_ms=ms(gw_token), pool_call_ms=ms(pool_call),
                     prefill_leg_ms=ms(leg), decode_leg_ms=ms(leg), decode_token_ms=ms(dec_token),
                     passage_tokens=max(int(round((r - q) / 4)), 1))


def demo_config(costs: HostCosts, search: str = "search-cpu-demo", seed: int = 0, corpus: int = 4000) -> SimConfig:
    gw = RetrievalConfig.model_fields  # the demo's gateway runs with its defaults
    mix = RetrievalMix(rag_share=0.5, cache_share=1.0, decode_share=0.2, decode_every=16, k=4, nprobe=1,
                       decode_k=gw["decode_k"].default, cache_nprobe=1, decode_nprobe=1,
                       passage_tokens=costs.passage_tokens, prefetch_tokens=gw["decode_prefetch_tokens"].default,
                       rag_deadline_ms=300.0, cache_deadline_ms=300.0, decode_deadline_ms=500.0)
    wl = WorkloadConfig(rate=1.0, duration_s=1.0, prompt=LengthDist("fixed", 16), output=LengthDist("fixed", 48),
                        retrieval=mix)
    cl = ClusterConfig(num_prefill=1, num_decode=1, num_vector=1, placement="cpu", policy="stage", cpu_search=search,
                       cpu_cores=0, corpus_vectors=corpus, index="flat", target_iteration_ms=4.0, hop_ms=1.0)
    return SimConfig(wl, cl, SloConfig(1000.0, 100.0), seed=seed)


def metrics(ttft_ms: list[float], tpot_ms: list[float]) -> dict[str, float]:
    return {"p50_ttft_ms": float(np.median(ttft_ms)), "p99_ttft_ms": float(np.percentile(ttft_ms, 99)),
            "mean_tpot_ms": float(np.mean(tpot_ms))}


def measured_metrics(d: dict[str, Any]) -> dict[str, float]:
    return {"p50_ttft_ms": d["median_ttft_ms"], "p99_ttft_ms": d["p99_ttft_ms"], "mean_tpot_ms": d["mean_tpot_ms"]}


def simulate_run(d: dict[str, Any], costs: HostCosts, search: str = "search-cpu-demo", seeds: int = 3,
                 background: str = "trace") -> dict[str, float]:
    """The run replayed ``seeds`` times (pooled); ``background``: trace | raw | mean | none."""
    w, steps = run_workload(d), background_steps(d, rescale=background != "raw")
    if background == "mean":
        costs = replace(costs, background=float(steps[1].mean()))
    ttft, tpot = [], []
    for seed in range(seeds):
        replay = steps if background in ("trace", "raw") else None
        res = simulate_demo(demo_config(costs, search, seed), w, costs, replay)
        ttft += [r.ttft_s * 1e3 for r in res.records]
        tpot += [r.tpot_s * 1e3 for r in res.records if r.output_tokens > 1]
    return metrics(ttft, tpot)


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        if "requests" not in d:
            raise ValueError(f"{p}: no per-request trace (measure it with `trinity sim measure`)")
        runs.append({**d, "file": str(p)})
    return runs


def validate(paths: list[Path], costs: HostCosts, search: str = "search-cpu-demo", seeds: int = 3,
             background: str = "trace") -> dict[str, Any]:
    """Per run and per rate (medians over the repeats, with the measured spread)."""
    runs = []
    for d in load_runs(paths):
        meas, sim = measured_metrics(d), simulate_run(d, costs, search, seeds, background)
        other = float(background_steps(d)[1].mean())
        runs.append({"rate": float(d["request_rate"]), "file": d["file"], "num_requests": len(d["requests"]),
                     "background_threads": other, "measured": meas, "simulated": sim})
    rows = []
    for rate in sorted({r["rate"] for r in runs}):
        group = [r for r in runs if r["rate"] == rate]
        for m in METRICS:
            meas = np.asarray([r["measured"][m] for r in group])
            sim = np.asarray([r["simulated"][m] for r in group])
            mm, sm = float(np.median(meas)), float(np.median(sim))
            rows.append({"rate": rate, "metric": m, "repeats": len(group), "measured": mm,
                         "measured_min": float(meas.min()),
                         "measured_max": float(meas.max()), "spread": float((meas.max() - meas.min()) / mm),
                         "simulated": sm, "error": sm / mm - 1.0,
                         "run_errors": [float(s / x - 1.0) for s, x in zip(sim, meas)]})
    return {"runs": runs, "rows": rows}
