"""``trinity bench serve``: open-loop load generator against the gateway (or any OpenAI server).

Output schema follows ``vllm bench serve`` (completed, failed, request throughput,
goodput, mean/median/std/p99 TTFT, TPOT, ITL and E2EL in ms; TPOT = (E2EL - TTFT) /
(output tokens - 1); goodput counts requests meeting every ``--goodput`` SLO), plus
Trinity's own figures from the gateway's per-request ``trinity`` object: retrieval
latency per stage, answer-cache hit rate, degraded answers and LLM legs.

Arrivals are Poisson at ``--rate`` (gamma with ``--burstiness``, like vLLM); prompts are
real English queries (first sentences of docstring passages, :mod:`trinity.data`). The
request mix comes from named classes: ``plain``, ``rag`` (prefill-stage retrieval),
``rag_decode`` (plus decode-stage retrieval every ``--retrieval-interval`` tokens) and
``repeat`` (an earlier, completed prompt again: an answer-cache hit).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from trinity.bench import serve_load
from trinity.bench.report import default_out_path, machine_info, write_json
from trinity.bench.serve_config import CLASSES, Outcome, ServeBenchConfig, parse_goodput, parse_mix

__all__ = ["CLASSES", "Outcome", "ServeBenchConfig", "compute_metrics", "format_report", "parse_goodput", "parse_mix",
           "run_serve_bench"]


def _stats(name: str, values_ms: list[float], out: dict[str, Any]) -> None:
    import numpy as np

    arr = np.asarray(values_ms or [0.0], dtype=np.float64)
    out[f"mean_{name}_ms"], out[f"median_{name}_ms"] = float(arr.mean()), float(np.median(arr))
    out[f"std_{name}_ms"], out[f"p99_{name}_ms"] = float(arr.std()), float(np.percentile(arr, 99))


def compute_metrics(outcomes: list[Outcome], duration_s: float, goodput: dict[str, float]) -> dict[str, Any]:
    """vLLM's ``BenchmarkMetrics`` fields (JSON names), plus ``trinity_*`` ones."""
    ok = [o for o in outcomes if o.success]
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    good = 0
    for o in ok:
        tpot = (o.latency - o.ttft) / (o.output_tokens - 1) if o.output_tokens > 1 else 0.0
        limits = {"ttft": o.ttft, "tpot": tpot, "e2el": o.latency}
        good += all(limits[k] * 1e3 <= v for k, v in goodput.items())
    total_in, total_out = sum(o.prompt_len for o in ok), sum(o.output_tokens for o in ok)
    res: dict[str, Any] = {
        "duration": duration_s, "completed": len(ok), "failed": len(outcomes) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s, "request_goodput": good / duration_s if goodput else None,
        "output_throughput": total_out / duration_s, "total_token_throughput": (total_in + total_out) / duration_s,
    }
    _stats("ttft", [o.ttft * 1e3 for o in ok], res)
    _stats("tpot", [t * 1e3 for t in tpots], res)
    _stats("itl", [x * 1e3 for o in ok for x in o.itl], res)
    _stats("e2el", [o.latency * 1e3 for o in ok], res)
    tr = [o.trinity for o in ok if o.trinity]
    _stats("retrieval_prefill", [t["timings_ms"]["retrieval"] for t in tr if "retrieval" in t["timings_ms"]], res)
    _stats("retrieval_decode", [d["ms"] for t in tr for d in t.get("decode_retrievals", []) if "ms" in d], res)
    _stats("decode_stall", [d["stall_ms"] for t in tr for d in t.get("decode_retrievals", []) if "stall_ms" in d],
           res)
    lookups = [t for t in tr if t.get("cache") in ("hit", "miss")]
    res["trinity_cache_hit_rate"] = sum(t["cache"] == "hit" for t in lookups) / len(lookups) if lookups else None
    res["trinity_cache_hits"] = sum(t.get("cache") == "hit" for t in tr)
    res["trinity_degraded"] = sum(bool(t.get("degraded")) for t in tr)
    res["trinity_prefill_retrievals"] = sum("retrieval" in t["timings_ms"] for t in tr)
    res["trinity_decode_retrievals"] = sum(len(t.get("decode_retrievals", [])) for t in tr)
    res["trinity_continuation_legs"] = sum(t.get("legs", {}).get("continuation", 0) for t in tr)
    res["trinity_requests_by_class"] = {c: sum(o.cls == c for o in outcomes) for c in CLASSES}
    res["errors"] = sorted({o.error for o in outcomes if not o.success})[:10]
    return res


def format_report(res: dict[str, Any], cfg: ServeBenchConfig) -> str:
    """The ``vllm bench serve`` text block, then Trinity's section."""
    rows: list[str] = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]

    def row(label: str, value: Any, fmt: str = ".2f") -> None:
        rows.append(f"{label:<40}{'-' if value is None else format(value, fmt):<10}")

    def head(title: str) -> None:
        rows.append("{s:{c}^50}".format(s=title, c="-"))

    row("Successful requests:", res["completed"], "d")
    row("Failed requests:", res["failed"], "d")
    row("Request rate configured (RPS):", cfg.rate)
    row("Benchmark duration (s):", res["duration"])
    row("Total input tokens:", res["total_input_tokens"], "d")
    row("Total generated tokens:", res["total_output_tokens"], "d")
    row("Request throughput (req/s):", res["request_throughput"])
    if cfg.goodput:
        row("Request goodput (req/s):", res["request_goodput"])
    row("Output token throughput (tok/s):", res["output_throughput"])
    row("Total Token throughput (tok/s):", res["total_token_throughput"])
    for key, title, name in (("ttft", "Time to First Token", "TTFT"),
                             ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
                             ("itl", "Inter-token Latency", "ITL"), ("e2el", "End-to-end Latency", "E2EL")):
        head(title)
        for stat in ("mean", "median", "p99"):
            row(f"{stat.capitalize() if stat != 'p99' else 'P99'} {name} (ms):", res[f"{stat}_{key}_ms"])
    head("Trinity: retrieval and caches")
    for key, name in (("retrieval_prefill", "prefill-stage retrieval"), ("retrieval_decode", "decode-stage retrieval")):
        for stat in ("median", "p99"):
            row(f"{stat.capitalize() if stat != 'p99' else 'P99'} {name} (ms):", res[f"{stat}_{key}_ms"])
    row("Median decode-retrieval stall (ms):", res["median_decode_stall_ms"])
    row("Prefill-stage retrievals:", res["trinity_prefill_retrievals"], "d")
    row("Decode-stage retrievals:", res["trinity_decode_retrievals"], "d")
    row("Continuation legs:", res["trinity_continuation_legs"], "d")
    row("Answer-cache hit rate:", res["trinity_cache_hit_rate"], ".1%")
    row("Degraded answers:", res["trinity_degraded"], "d")
    rows.append("=" * 50)
    return "\n".join(rows)


def run_serve_bench(cfg: ServeBenchConfig) -> dict[str, Any]:
    """Run the benchmark, print the report, write the JSON; return the result dict."""
    cfg.validate()
    outcomes, duration, model = asyncio.run(serve_load.drive(cfg))
    res = compute_metrics(outcomes, duration, cfg.goodput)
    print(format_report(res, cfg))
    for err in res["errors"]:
        print(f"error: {err}")
    payload = {"bench": "serve", "date": time.strftime("%Y%m%d-%H%M%S"), "base_url": cfg.base_url, "model": model,
               "endpoint": cfg.endpoint, "request_rate": cfg.rate, "burstiness": cfg.burstiness,
               "num_prompts": cfg.num_prompts, "output_len": cfg.output_len, "goodput_slos_ms": cfg.goodput,
               "mix": cfg.mix, "collection": cfg.collection, **res, "machine": machine_info(),
               # NOTE: latencies here are only as good as the CPU share the stack got.
               "loadavg_after": os.getloadavg()}
    path = write_json(cfg.out or default_out_path("serve"), payload)
    print(f"results: {path}")
    return json.loads(json.dumps(payload, default=str))


def bench_serve(
    goodput_extra: list[str] | None = None, *, base_url: str = "http://127.0.0.1:8000", endpoint: str = "completions",
    model: str | None = None, rate: float = float("inf"), num_prompts: int = 200, burstiness: float = 1.0,
    max_concurrency: int | None = None, output_len: int = 64, goodput: list[str] | None = None,
    mix: str | None = None, collection: str | None = None, k: int = 4, retrieval_interval: int = 16,
    slo_headers: bool = True, seed: int = 0, out: Path | None = None,
) -> dict[str, Any]:
    """Plain-Python entry of ``trinity bench serve`` (the typer command in :mod:`trinity.cli` wraps it).

    ``goodput_extra`` collects ``tpot:MS`` when written vLLM-style as ``--goodput ttft:MS tpot:MS``.
    """
    slos = parse_goodput([*(goodput or []), *(goodput_extra or [])])
    default_mix = "rag:0.5,rag_decode:0.2,repeat:0.2,plain:0.1" if collection else "plain:1"
    cfg = ServeBenchConfig(base_url=base_url.rstrip("/"), endpoint=endpoint, model=model, num_prompts=num_prompts,
                           rate=rate, burstiness=burstiness, max_concurrency=max_concurrency, output_len=output_len,
                           goodput=slos, mix=parse_mix(mix or default_mix), collection=collection, k=k,
                           retrieval_interval=retrieval_interval, slo_headers=slo_headers, seed=seed, out=out)
    cfg.validate()
    return run_serve_bench(cfg)
