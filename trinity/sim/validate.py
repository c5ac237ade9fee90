"""``trinity sim validate``: simulate the ``make demo`` stack and compare with measured runs.

The demo stack (``trinity demo``): one emulated prefill and one emulated decode engine
(the emulator's default latency model = the ``llama-3-8b-h100`` profile), the real pool on
this machine's CPU (a flat collection of the corpus; the ``search-cpu-calibrated`` profile)
and the gateway (local MiniLM embedding, answer cache on).  The workload is the demo's:
``rag:0.45, rag_decode:0.2, repeat:0.25, plain:0.1``, 48 output tokens, decode-time
retrieval every 16 tokens, k 4.  Measured runs are ``trinity bench serve`` JSON files (what
``trinity demo --out`` writes); metrics follow its definitions (TPOT over every request with
more than one token, cached answers included).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trinity.sim.cluster import simulate
from trinity.sim.config import ClusterConfig, LengthDist, RetrievalMix, SimConfig, SloConfig, WorkloadConfig


@dataclass(frozen=True)
class DemoModel:
    """The gateway-side costs the simulator cannot derive from engine profiles (measured once,
    at the calibration rate, from the demo's own trace breakdown)."""

    embed_ms: float = 21.5
    decode_embed_ms: float = 36.0
    hop_ms: float = 3.0
    overhead_cv: float = 0.6
    host_cores: int = 2
    host_ms_per_token: float = 0.0
    cpu_ms_per_request: float = 0.0  # measured: the stack's CPU time per request
    use_load: bool = False  # charge other processes (load average) to the host cores as FCFS jobs
    calibration_load: float = 0.0  # 1-minute load average of the calibration run (0: no load scaling)
    query_tokens: int = 13
    passage_tokens: int = 34
    corpus_vectors: int = 4000


def background_share(d: dict[str, Any], model: DemoModel) -> float:
    """Share of the host's cores other processes kept busy during a measured run: its 1-minute
    load average after the run, less the stack's own CPU demand (rate x CPU per request)."""
    load = float((d.get("loadavg_after") or d["machine"]["loadavg"])[0])
    own = d["request_rate"] * model.cpu_ms_per_request / 1e3
    return float(min(max(load - own, 0.0) / model.host_cores, 0.9)) if model.cpu_ms_per_request and model.use_load else 0.0


def load_of(d: dict[str, Any]) -> float:
    return float((d.get("loadavg_after") or d["machine"]["loadavg"])[0])


def demo_config(rate: float, num_prompts: int, model: DemoModel, search: str = "search-cpu-calibrated",
                seed: int = 0, background: float = 0.0, stretch: float = 1.0) -> SimConfig:
    repeat, rag, rag_decode = 0.25, 0.45, 0.2
    fresh = 1.0 - repeat
    decode = rag_decode / fresh
    mix = RetrievalMix(rag_share=(rag / fresh) / (1 - decode), cache_share=1.0, cache_hit_rate=repeat,
                       decode_share=decode, decode_every=16, k=4, nprobe=1, cache_nprobe=1, decode_nprobe=1,
                       passage_tokens=model.passage_tokens, prefetch_tokens=4, rag_deadline_ms=300.0,
                       cache_deadline_ms=300.0, decode_deadline_ms=500.0)
    wl = WorkloadConfig(rate=rate, duration_s=num_prompts / rate, prompt=LengthDist("fixed", model.query_tokens),
                        output=LengthDist("fixed", 48), retrieval=mix)
    cl = ClusterConfig(num_prefill=1, num_decode=1, num_vector=1, placement="cpu", policy="stage",
                       cpu_search=search, cpu_cores=0, corpus_vectors=model.corpus_vectors, index="flat",
                       target_iteration_ms=4.0, embed_ms=model.embed_ms, decode_embed_ms=model.decode_embed_ms,
                       hop_ms=model.hop_ms, overhead_cv=model.overhead_cv, host_cores=model.host_cores,
                       host_ms_per_token=model.host_ms_per_token, host_background=background, host_stretch=stretch)
    return SimConfig(wl, cl, SloConfig(1000.0, 100.0), seed=seed)


def measured_metrics(d: dict[str, Any]) -> dict[str, float]:
    return {"p50_ttft_ms": d["median_ttft_ms"], "p99_ttft_ms": d["p99_ttft_ms"], "mean_tpot_ms": d["mean_tpot_ms"]}


def simulated_metrics(cfg: SimConfig, seeds: int = 5) -> dict[str, float]:
    """The serve bench's definitions over ``seeds`` simulated runs (pooled requests)."""
    ttft, tpot = [], []
    for seed in range(seeds):
        res = simulate(SimConfig(cfg.workload, cfg.cluster, cfg.slo, seed=cfg.seed + seed))
        for r in res.records:
            ttft.append(r.ttft_s * 1e3)
            if r.output_tokens > 1:
                tpot.append(r.tpot_s * 1e3)
    return {"p50_ttft_ms": float(np.median(ttft)), "p99_ttft_ms": float(np.percentile(ttft, 99)),
            "mean_tpot_ms": float(np.mean(tpot))}


def measured_breakdown(d: dict[str, Any]) -> dict[str, float]:
    """The calibration inputs read off a measured run: median embed time, and prompt tokens by class."""
    rng = random.Random(0)
    names, weights = zip(*d["mix"].items())
    classes = rng.choices(names, weights, k=d["num_prompts"])  # NOTE: as trinity.bench.serve_load draws them
    lens: dict[str, list[int]] = {}
    for c, n in zip(classes, d["input_lens"]):
        lens.setdefault(c, []).append(n)
    query = float(np.mean(lens.get("plain", [13])))
    rag = float(np.mean(lens.get("rag", [query + 4 * 34])))
    embed, decode_embed = d.get("mean_retrieval_prefill_embed_ms", 21.5), d.get("mean_retrieval_decode_embed_ms", 36.0)
    return {"embed_ms": embed, "decode_embed_ms": decode_embed, "query_tokens": query, "passage_tokens": (rag - query) / 4,
            "embed_cv": d.get("std_retrieval_prefill_embed_ms", 0.0) / max(embed, 1e-9)}


def validate(paths: list[Path], model: DemoModel, search: str = "search-cpu-calibrated",
             seeds: int = 5) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        meas = measured_metrics(d)
        bg = background_share(d, model)
        # NOTE: processor sharing: host work (fitted under the calibration run's load) slows with the load average
        stretch = load_of(d) / model.calibration_load if model.calibration_load else 1.0
        sim = simulated_metrics(demo_config(d["request_rate"], d["num_prompts"], model, search, background=bg,
                                            stretch=stretch), seeds)
        for key in meas:
            rows.append({"rate": d["request_rate"], "metric": key, "measured": meas[key], "simulated": sim[key],
                         "error": (sim[key] - meas[key]) / meas[key], "background": bg, "load": load_of(d),
                         "stretch": stretch, "file": str(path)})
    return rows


def fit_demo_model(path: Path, search: str = "search-cpu-calibrated", seeds: int = 5,
                   cpu_ms_per_request: float = 0.0, scale_load: bool = True) -> tuple[DemoModel, dict]:
    """Gateway costs from one calibration run: embedding and prompt sizes read off its trace;
    the HTTP leg time and the spread of these costs fitted to its p50 / p99 TTFT (grid)."""
    d = json.loads(Path(path).read_text())
    b = measured_breakdown(d)
    meas = measured_metrics(d)
    # NOTE: the stack's CPU per request beyond the embeddings is charged to the streamed tokens
    embeds = b["embed_ms"] + 0.2 * (48 // 16 - 1) * b["decode_embed_ms"]
    per_token = max(cpu_ms_per_request - embeds, 0.0) / 48
    best: tuple[float, DemoModel, dict] | None = None
    for hop in (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0):
        for cv in (0.3, 0.5, 0.7, 0.9, 1.1, 1.4):
            m = DemoModel(embed_ms=b["embed_ms"], decode_embed_ms=b["decode_embed_ms"], hop_ms=hop, overhead_cv=cv,
                          query_tokens=int(round(b["query_tokens"])), passage_tokens=int(round(b["passage_tokens"])),
                          host_ms_per_token=per_token, cpu_ms_per_request=cpu_ms_per_request,
                          calibration_load=load_of(d) if scale_load else 0.0)
            sim = simulated_metrics(demo_config(d["request_rate"], d["num_prompts"], m, search,
                                                background=background_share(d, m)), seeds)
            err = max(abs(sim[k] - meas[k]) / meas[k] for k in ("p50_ttft_ms", "p99_ttft_ms"))
            if best is None or err < best[0]:
                best = (err, m, sim)
    assert best is not None
    return best[1], {"measured": meas, "simulated": best[2], "max_ttft_error": best[0], "breakdown": b}
