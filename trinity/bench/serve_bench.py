"""``trinity bench serve``: open-loop load generator against the gateway (or any OpenAI server).

The JSON is ``vllm bench serve``'s result schema (:mod:`trinity.bench.serve_metrics`: the
per-request arrays, peaks, mean/median/std and ``--metric-percentiles`` of the
``--percentile-metrics``; TPOT = (E2EL - TTFT) / (output tokens - 1); goodput counts requests
meeting every ``--goodput`` SLO; ``backend``, ``endpoint_type``, ``label``, ``model_id``,
``tokenizer_id``), plus Trinity's own figures from the gateway's per-request ``trinity``
object: retrieval latency per stage and per part (embed, cache, search, network),
answer-cache hit rate, degraded answers and LLM legs. A PNG (latency over time, TTFT and
TPOT distributions) goes next to the JSON. ``--no-answer-cache`` makes reruns with the same
seed measure the engines rather than the previous run's cached answers.

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

from urllib.parse import urlsplit

from trinity.bench import serve_load
from trinity.bench.report import default_out_path, machine_info, write_json
from trinity.bench.serve_config import CLASSES, Outcome, ServeBenchConfig, parse_goodput, parse_mix
from trinity.bench.serve_metrics import RETRIEVAL_PARTS, compute_metrics, parse_percentiles, percentile_key

__all__ = ["CLASSES", "Outcome", "ServeBenchConfig", "compute_metrics", "format_report", "parse_goodput", "parse_mix",
           "run_serve_bench"]


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
    row("Peak output token throughput (tok/s):", res["max_output_tokens_per_s"])
    row("Peak concurrent requests:", res["max_concurrent_requests"], "d")
    titles = {"ttft": ("Time to First Token", "TTFT"), "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
              "itl": ("Inter-token Latency", "ITL"), "e2el": ("End-to-end Latency", "E2EL")}
    for key in cfg.percentile_metrics:
        title, name = titles[key]
        head(title)
        row(f"Mean {name} (ms):", res[f"mean_{key}_ms"])
        row(f"Median {name} (ms):", res[f"median_{key}_ms"])
        for p in cfg.metric_percentiles:
            row(f"P{percentile_key(p)} {name} (ms):", res[f"p{percentile_key(p)}_{key}_ms"])
    head("Trinity: retrieval and caches")
    rows.append("Retrieval (ms): embedding the query to passages")
    rows.append(f"{'':<12}{'total':>7}" + "".join(f"{p:>8}" for p in RETRIEVAL_PARTS))
    for stage in ("prefill", "decode"):
        for stat in ("median", "p99"):
            rows.append(f"{stage if stat == 'median' else '':<8}{'p50' if stat == 'median' else stat:<4}"
                        f"{res[f'{stat}_retrieval_{stage}_ms']:>7.2f}"
                        + "".join(f"{res[f'{stat}_retrieval_{stage}_{p}_ms']:>8.2f}" for p in RETRIEVAL_PARTS))
    row("Decode-retrieval stall p50 / p99 (ms):", f"{res['median_decode_stall_ms']:.2f} / "
        f"{res['p99_decode_stall_ms']:.2f}", "")
    row("Prefill-stage retrievals:", res["trinity_prefill_retrievals"], "d")
    row("Decode-stage retrievals:", res["trinity_decode_retrievals"], "d")
    row("Continuation legs:", res["trinity_continuation_legs"], "d")
    row("Answer-cache hit rate:", res["trinity_cache_hit_rate"], ".1%")
    row("Degraded answers:", res["trinity_degraded"], "d")
    rows.append("=" * 50)
    return "\n".join(rows)


def _payload(cfg: ServeBenchConfig, model: str, res: dict[str, Any]) -> dict[str, Any]:
    backend = "openai-chat" if cfg.endpoint == "chat" else "openai"  # vLLM's backend names
    return {"bench": "serve", "date": time.strftime("%Y%m%d-%H%M%S"), "backend": backend, "endpoint_type": backend,
            "label": cfg.label or backend, "model_id": model, "tokenizer_id": model, "base_url": cfg.base_url,
            "endpoint": "/v1/chat/completions" if cfg.endpoint == "chat" else "/v1/completions",
            "num_prompts": cfg.num_prompts, "request_rate": cfg.rate if cfg.rate != float("inf") else "inf",
            "burstiness": cfg.burstiness, "max_concurrency": cfg.max_concurrency, "output_len": cfg.output_len,
            "goodput_slos_ms": cfg.goodput, "mix": cfg.mix, "collection": cfg.collection,
            "answer_cache": cfg.answer_cache, "percentile_metrics": ",".join(cfg.percentile_metrics),
            "metric_percentiles": ",".join(percentile_key(p) for p in cfg.metric_percentiles), **res,
            "machine": machine_info(),
            # NOTE: latencies here are only as good as the CPU share the stack got.
            "loadavg_after": os.getloadavg()}


def run_serve_bench(cfg: ServeBenchConfig) -> dict[str, Any]:
    """Run the benchmark, print the report, write the JSON (and the PNG); return the result dict."""
    cfg.validate()
    outcomes, duration, model = asyncio.run(serve_load.drive(cfg))
    res = compute_metrics(outcomes, duration, cfg.goodput, cfg.percentile_metrics, cfg.metric_percentiles)
    print(format_report(res, cfg))
    for err in res["error_summary"]:
        print(f"error: {err}")
    payload = _payload(cfg, model, res)
    path = write_json(cfg.out or default_out_path("serve"), payload)
    print(f"results: {path}")
    if cfg.plot:
        from trinity.bench.serve_plot import plot_serve

        png = plot_serve(outcomes, Path(path).with_suffix(".png"),
                         f"bench serve: {cfg.num_prompts} prompts at {cfg.rate} req/s, {model}")
        print(f"plot: {png}")
    return json.loads(json.dumps(payload, default=str))


def check_base_url(url: str) -> str:
    """The server's root URL; ``.../v1`` is accepted (and dropped), anything without a scheme refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--base-url {url!r}: expected http(s)://HOST:PORT")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def bench_serve(
    goodput_extra: list[str] | None = None, *, base_url: str = "http://127.0.0.1:8000", endpoint: str = "completions",
    model: str | None = None, rate: float = float("inf"), num_prompts: int = 200, burstiness: float = 1.0,
    max_concurrency: int | None = None, output_len: int = 64, goodput: list[str] | None = None,
    mix: str | None = None, collection: str | None = None, k: int = 4, retrieval_interval: int = 16,
    slo_headers: bool = True, seed: int = 0, out: Path | None = None, answer_cache: bool = True,
    percentile_metrics: str = "ttft,tpot,itl,e2el", metric_percentiles: str = "99", label: str | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """Plain-Python entry of ``trinity bench serve`` (the typer command in :mod:`trinity.cli` wraps it).

    ``goodput_extra`` collects ``tpot:MS`` when written vLLM-style as ``--goodput ttft:MS tpot:MS``.
    Raises :class:`ValueError` (one line) for bad options and unreachable servers.
    """
    slos = parse_goodput([*(goodput or []), *(goodput_extra or [])])
    metrics, percentiles = parse_percentiles(percentile_metrics, metric_percentiles)
    default_mix = "rag:0.5,rag_decode:0.2,repeat:0.2,plain:0.1" if collection else "plain:1"
    cfg = ServeBenchConfig(base_url=check_base_url(base_url), endpoint=endpoint, model=model, num_prompts=num_prompts,
                           rate=rate, burstiness=burstiness, max_concurrency=max_concurrency, output_len=output_len,
                           goodput=slos, mix=parse_mix(mix or default_mix), collection=collection, k=k,
                           retrieval_interval=retrieval_interval, slo_headers=slo_headers, seed=seed, out=out,
                           answer_cache=answer_cache, percentile_metrics=metrics, metric_percentiles=percentiles,
                           label=label, plot=plot)
    cfg.validate()
    return run_serve_bench(cfg)
