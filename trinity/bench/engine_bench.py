"""``trinity bench engine``: Trinity's stage-aware engine vs static batching under an
open-loop Poisson stream of mixed-stage retrievals.

Three systems answer the same seeded stream over the same IVF collection (real MiniLM
embeddings; the peer uses Trinity's own centroids, so at equal ``nprobe`` both return the
same ids):

* ``static`` -- a dynamic batcher over a batch-search index: one queue per ``(k, nprobe)``
  (as faiss/cuVS force), dispatch at ``max_batch`` or after ``max_wait_ms``.  The index is
  faiss-cpu ``IndexIVFFlat`` on the CPU and, with ``--device cuda``, Trinity's lists
  scanned by the torch gather + bmm + topk path (``--peer`` picks either);
* ``trinity-fifo`` -- :class:`~trinity.engine.SearchEngine` with ``stage_aware=False``
  (FIFO continuous batching);
* ``trinity`` -- the stage-aware, deadline-driven engine.

Rates run interleaved (static, fifo, trinity at one rate, then the next rate) so machine
noise hits all systems alike.  Latency is completion minus *scheduled* arrival.  A
request *misses* when it is answered after its deadline, answered partially (Trinity's
best-so-far at the deadline), rejected, or not answered within the drain cap.  Latency
percentiles are over answers (complete or partial); a request without an answer
(rejected, failed, unanswered) counts as infinitely late.

On a GPU every run also records how long the device was busy (:class:`GpuBusy`): the
rest of the systems' loop time is host time the GPU waited for (``host_share``).

Module layout: this module holds the configuration, the run loop and the CLI-facing
helpers; :mod:`trinity.bench.engine_systems` the data, index and system adapters;
:mod:`trinity.bench.engine_report` the per-run rows, summary and plots.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

# NOTE: the names below that this module does not use itself are re-exported for callers of the pre-split module.
from trinity.bench.engine_config import DEFAULT_RATES, PEERS, SYSTEMS, EngineBenchConfig  # noqa: F401
from trinity.bench.engine_report import (  # noqa: F401
    _INF_MS, _pct, _summary_lines, merge_repeats, plot_from_json, plot_results, summarize, summarize_run,
    target_verdicts,
)
from trinity.bench.engine_systems import (  # noqa: F401
    _COLLECTION, BenchData, StaticSystem, TrinitySystem, _fingerprint, _synthetic, _System, _TimedRunner,
    build_or_load_index, cached_corpus_sizes, load_bench_data, run_stream,
)
from trinity.bench.gpu_time import GpuBusy
from trinity.bench.report import (default_out_path, machine_info, make_console, print_table, print_verdicts,
                                  set_threads, stream_bandwidth_gbs, verdict, write_json)
from trinity.bench.static_batcher import batch_searcher, faiss_ivf_like, torch_ivf_like
from trinity.bench.workload import RequestClass, poisson_schedule

__all__ = [
    "DEFAULT_RATES", "SYSTEMS", "EngineBenchConfig", "StaticSystem", "TrinitySystem", "load_bench_data",
    "build_or_load_index", "run_engine_bench", "summarize_run",
]

# --------------------------------------------------------------------------- driver
def _warm(system: _System, queries: np.ndarray, cfg: EngineBenchConfig) -> None:
    sched = poisson_schedule(cfg.warmup_rate, cfg.warmup_s, cfg.classes, len(queries), seed=cfg.seed + 7919)
    run_stream(system, sched, queries, cfg.drain_cap_s)


def _reference(peer, queries: np.ndarray, classes: Sequence[RequestClass],
               slice_rows: int = 64) -> dict[str, np.ndarray]:
    """The peer's ids for every query and class (in slices: the torch peer gathers every
    probed vector of a call)."""
    search = batch_searcher(peer)[1]
    return {c.name: np.concatenate([search(queries[s:s + slice_rows], c.k, c.nprobe)[1]
                                    for s in range(0, len(queries), slice_rows)]) for c in classes}


def _warm_kernels(ivf, queries: np.ndarray, classes: Sequence[RequestClass]) -> None:
    """Run every scan shape the engine can meet before anything is timed: one JIT compile
    (numba; Triton per k-width and query-tile size) inside a run poisons the engine's
    iteration-time estimate.  ``nq`` copies of one query with ``nprobe=1`` make one list
    group of ``nq`` pairs, which sets the Triton kernel's query tile."""
    search = batch_searcher(ivf)[1]
    for k in sorted({c.k for c in classes}):
        for nq in (1, 16, 32, 64):
            search(np.repeat(queries[:1], nq, axis=0), k, 1)
    for c in classes:
        search(queries[:8], c.k, c.nprobe)


def _gpu_fields(row: dict[str, Any], busy: GpuBusy, before: dict[str, float], after: dict[str, float]) -> None:
    """Device busy time of a run against its systems' loop time (the engine's iterations or
    the batcher's searches): the rest is host time the GPU waited for."""
    if busy.seconds is None:
        row["gpu_error"] = busy.error
        return
    loop_key, n_key = ("step_s", "iterations") if "step_s" in after else ("busy_s", "batches")
    loop_s = after[loop_key] - before.get(loop_key, 0.0)
    n = after[n_key] - before.get(n_key, 0.0)
    row.update(gpu_busy_s=busy.seconds, gpu_events=busy.num_events,
               loop_ms_per_iter=1e3 * loop_s / n if n else math.nan,
               gpu_ms_per_iter=1e3 * busy.seconds / n if n else math.nan,
               host_share=1.0 - busy.seconds / loop_s if loop_s > 0 else math.nan)


def run_engine_bench(cfg: EngineBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole comparison; print tables and summary; write JSON (+ PNG); return the payload."""
    import torch

    console = console or make_console()
    started = time.perf_counter()
    data = load_bench_data(cfg, console)
    threads = set_threads(cfg.threads)  # after loading: the embedder may touch torch threads
    ivf, index_info = build_or_load_index(data, cfg, console)
    t = time.perf_counter()
    if cfg.peer_kind == "trinity":
        peer = ivf
    elif cfg.peer_kind == "faiss":
        import faiss

        faiss.cvar.distance_compute_blas_threshold = cfg.blas_threshold
        peer = faiss_ivf_like(ivf, data.vectors)
    else:
        peer = torch_ivf_like(ivf)
    index_info.update(peer=cfg.peer_kind, peer_build_s=round(time.perf_counter() - t, 2), device=str(ivf.device),
                      dtype=str(ivf.dtype).replace("torch.", ""))
    if ivf.device.type == "cuda":
        index_info["gpu"] = torch.cuda.get_device_name(ivf.device)
    if cfg.index == "graph":
        index_info.update(index="graph", graph_degree=cfg.graph_degree)
    else:
        sizes = ivf.list_sizes()
        index_info.update(nlist=cfg.nlist, list_size_mean=float(sizes.mean()), list_size_max=int(sizes.max()),
                          list_size_biased_mean=float((sizes.astype(float) ** 2).sum() / max(sizes.sum(), 1)))
    queries = data.queries
    refs = _reference(peer, queries, cfg.classes)
    console.print(f"[bold]engine bench[/]: {data.info['num_vectors']:,} x {data.info['dim']} "
                  f"({data.info['source'].split(':')[0]}), "
                  f"{f'graph degree {cfg.graph_degree}' if cfg.index == 'graph' else f'IVF nlist {cfg.nlist}'}, "
                  f"{len(queries)} held-out queries; "
                  f"rates {', '.join(f'{r:g}' for r in cfg.rates)} req/s x {cfg.duration_s:g} s; "
                  f"index {'loaded' if index_info.get('index_loaded') else 'built'} in {index_info['index_s']} s")

    # NOTE: compile the kernels before any engine exists (see _warm_kernels).
    _warm_kernels(ivf, queries, cfg.classes)
    bandwidth = {"start": round(stream_bandwidth_gbs(), 1)}
    systems: dict[str, _System] = {}
    for name in cfg.systems:
        if name == "static":
            systems[name] = StaticSystem(peer, cfg.max_batch, cfg.max_wait_ms)
        else:
            systems[name] = TrinitySystem(ivf, name, target_iteration_ms=cfg.target_iteration_ms,
                                          **cfg.scheduler_kwargs)
    old_switch = sys.getswitchinterval()
    raw_rows: list[dict[str, Any]] = []
    try:
        if cfg.switch_interval_ms is not None:
            sys.setswitchinterval(cfg.switch_interval_ms / 1e3)
        for system in systems.values():
            _warm(system, queries, cfg)
        gc.collect()
        gc.freeze()  # NOTE: keeps full collections of the long-lived setup objects out of the runs
        for rate in cfg.rates:
            for rep in range(cfg.repeats):  # NOTE: repeats interleave the systems, as the VM drifts
                sched = poisson_schedule(rate, cfg.duration_s, cfg.classes, len(queries), seed=cfg.seed + rep)
                for name, system in systems.items():
                    # NOTE: the machine's phase just before this run (~0.06 s; the settle
                    # pause follows it): one table's rows can straddle a bandwidth swing.
                    probe = round(stream_bandwidth_gbs(128 << 20, repeats=2), 1)
                    time.sleep(cfg.settle_s)
                    before = system.counters()
                    with GpuBusy(enabled=cfg.device != "cpu") as busy:
                        rec = run_stream(system, sched, queries, cfg.drain_cap_s)
                    after = system.counters()
                    row = summarize_run(rec, name, refs, before, after, cfg.miss_target)
                    row["bandwidth_gbs"] = probe
                    if busy.enabled:
                        _gpu_fields(row, busy, before, after)
                    raw_rows.append({**row, "repeat": rep} if cfg.repeats > 1 else row)
                    c0 = cfg.classes[0].name
                    console.print(f"  {rate:>6g} req/s  {name:<13} thr {row['throughput_rps']:7.0f}/s  "
                                  f"{c0} p99 {row[f'{c0}_p99_ms']:8.1f} ms  miss {row['miss_pct']:5.1f}%  "
                                  f"bw {probe:4.0f} GB/s"
                                  + (f"  (repeat {rep + 1}/{cfg.repeats})" if cfg.repeats > 1 else ""), highlight=False)
    finally:
        sys.setswitchinterval(old_switch)
        gc.unfreeze()
        for system in systems.values():
            system.close()
    bandwidth["end"] = round(stream_bandwidth_gbs(), 1)
    console.print(f"memory read bandwidth (phase of the machine): {bandwidth['start']:g} GB/s before the runs, "
                  f"{bandwidth['end']:g} GB/s after", highlight=False)

    rows = merge_repeats(raw_rows, cfg) if cfg.repeats > 1 else raw_rows
    columns: list = [("rate", "rate", "g"), ("system", "system"), ("throughput_rps", "thr/s", ".0f")]
    for c in cfg.classes:
        columns += [(f"{c.name}_p50_ms", f"{c.name} p50", ".1f"), (f"{c.name}_p99_ms", f"{c.name} p99", ".1f")]
    columns += [("miss_pct", "miss%", ".2f"), ("late_pct", "late%", ".2f"), ("partial_pct", "partial%", ".2f"),
                ("rejected_pct", "rej%", ".2f"), ("submit_lag_p99_ms", "lag p99", ".1f"),
                ("agree_with_peer", "agree", ".2f"), ("bandwidth_gbs", "bw GB/s", ".0f")]
    if cfg.device != "cpu":
        columns += [("loop_ms_per_iter", "loop ms/it", ".3f"), ("gpu_ms_per_iter", "gpu ms/it", ".3f"),
                    ("host_share", "host", ".0%")]
    deadlines = ", ".join(f"{c.name} {c.deadline_ms:g} ms" for c in cfg.classes)
    median = f", median of {cfg.repeats} runs" if cfg.repeats > 1 else ""
    print_table(f"Engine bench: latency in ms from scheduled arrival (deadlines: {deadlines}{median})", rows, columns,
                console)
    summary = summarize(rows, cfg)
    lines = _summary_lines(summary, cfg)
    for line in lines:
        console.print(line, highlight=False)
    summary["lines"] = lines
    summary["verdicts"] = verdicts = target_verdicts(summary, cfg)
    if cfg.device != "cpu":
        summary["host_share_at_top_rate"] = top = next(
            (r.get("host_share") for r in rows if r["system"] == "trinity" and r["rate"] == max(cfg.rates)), None)
        verdicts.append(verdict(f"Trinity host share of an iteration at {max(cfg.rates):g} req/s "
                                f"(target iteration {cfg.target_iteration_ms:g} ms)", top, "<=", 0.10))
    print_verdicts(verdicts, console)

    out = Path(cfg.out) if cfg.out else default_out_path("engine")
    payload = {
        "bench": "engine",
        "machine": machine_info(),
        "params": cfg.to_dict(),
        "data": data.info,
        "index": index_info,
        "threads": {"torch": torch.get_num_threads(), "faiss": threads,
                    "numba": _numba_threads(), "switch_interval_s": cfg.switch_interval_ms / 1e3
                    if cfg.switch_interval_ms is not None else old_switch, "nice": _nice()},
        "git": _git_state(),
        "memory_bandwidth_gbs": bandwidth,
        "runs": rows,  # the median over repeats when --repeats > 1
        **({"raw_runs": raw_rows} if cfg.repeats > 1 else {}),
        "summary": summary,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if cfg.plot:
        png = out.with_suffix(".png")
        plot_results(rows, cfg, png, title=f"trinity bench engine: {data.info['num_vectors']:,} vectors, "
                                            f"IVF{cfg.nlist}, {machine_info()['cpu_usable']} cores",
                     crossing=summary.get("static_crossing_rate"))
        payload["plot"] = str(png)
    write_json(out, payload)
    console.print(f"wrote {out}" + (f" and {payload['plot']}" if cfg.plot else ""))
    payload["json"] = str(out)
    return payload


def _git_state() -> dict[str, Any] | None:
    """Commit and uncommitted engine/index files: results depend on that code."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "trinity/engine", "trinity/index"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "modified_engine_index_files": [ln[3:] for ln in dirty if ln.strip()]}


def _nice() -> int | None:
    import os

    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return None


def _numba_threads() -> int | None:
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001
        return None


def config_with(cfg: EngineBenchConfig, **changes: Any) -> EngineBenchConfig:
    """``dataclasses.replace`` that re-runs validation."""
    return replace(cfg, **changes)


def parse_float_list(text: str) -> tuple[float, ...]:
    """``"500,1000, 1500"`` -> ``(500.0, 1000.0, 1500.0)``; raises ``ValueError``."""
    values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    if not values or min(values) <= 0 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected comma-separated positive numbers, got {text!r}")
    return values
