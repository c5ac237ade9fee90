"""``trinity bench engine``: Trinity's stage-aware engine vs static batching under an
open-loop Poisson stream of mixed-stage retrievals.

Three systems answer the same seeded stream over the same IVF collection (real MiniLM
embeddings; the faiss peer uses Trinity's own centroids, so at equal ``nprobe`` both
return the same ids):

* ``static`` -- a dynamic batcher over faiss-cpu ``IndexIVFFlat``: one queue per
  ``(k, nprobe)`` (as faiss/cuVS force), dispatch at ``max_batch`` or after ``max_wait_ms``;
* ``trinity-fifo`` -- :class:`~trinity.engine.SearchEngine` with ``stage_aware=False``
  (FIFO continuous batching);
* ``trinity`` -- the stage-aware, deadline-driven engine.

Rates run interleaved (static, fifo, trinity at one rate, then the next rate) so machine
noise hits all systems alike.  Latency is completion minus *scheduled* arrival.  A
request *misses* when it is answered after its deadline, answered partially (Trinity's
best-so-far at the deadline), rejected, or not answered within the drain cap.  Latency
percentiles are over answers (complete or partial); a request without an answer
(rejected, failed, unanswered) counts as infinitely late.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from trinity.bench.report import (default_out_path, machine_info, make_console, print_table, print_verdicts,
                                  set_threads, verdict, write_json)
from trinity.bench.static_batcher import StaticBatcher, faiss_ivf_like
from trinity.bench.workload import (
    DEFAULT_CLASSES, OpenLoopDriver, RequestClass, RunRecord, Schedule, Status, poisson_schedule,
)

__all__ = [
    "DEFAULT_RATES", "SYSTEMS", "EngineBenchConfig", "StaticSystem", "TrinitySystem", "load_bench_data",
    "build_or_load_ivf", "run_engine_bench", "summarize_run",
]

SYSTEMS = ("static", "trinity-fifo", "trinity")
DEFAULT_RATES = (500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 4000.0)
_COLLECTION = "bench"
_INF_MS = 1e12  # stands in for "never answered" inside percentiles


@dataclass
class EngineBenchConfig:
    """Parameters of one ``trinity bench engine`` run (all recorded in the JSON)."""

    num_vectors: int = 200_000
    nlist: int = 1024
    num_queries: int = 1000  # held-out query pool (passages not in the index)
    rates: tuple[float, ...] = DEFAULT_RATES
    duration_s: float = 3.0
    systems: tuple[str, ...] = SYSTEMS
    classes: tuple[RequestClass, ...] = DEFAULT_CLASSES
    max_batch: int = 64
    max_wait_ms: float = 2.0
    target_iteration_ms: float = 4.0
    drain_cap_s: float = 10.0
    settle_s: float = 0.3  # idle pause between runs
    warmup_s: float = 1.0
    warmup_rate: float = 300.0
    seed: int = 0
    data: str = "real"  # "real" (embedded corpus) or "synthetic" (clustered random vectors, for tests)
    embed_missing: bool = False  # embed corpus passages missing from the cache (slow on CPU)
    cache_index: bool = True
    threads: int | None = None  # torch, numba and faiss threads; None = every usable core
    blas_threshold: int = 16
    switch_interval_ms: float | None = None  # sys.setswitchinterval for the run; None = Python default
    miss_target: float = 0.01
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)  # extra SchedulerConfig fields (ablations)
    out: Path | None = None
    plot: bool = True

    def __post_init__(self) -> None:
        if self.data not in ("real", "synthetic"):
            raise ValueError(f"data: expected 'real' or 'synthetic', got {self.data!r}")
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"systems: unknown {sorted(unknown)}; expected a subset of {SYSTEMS}")
        if not self.rates or min(self.rates) <= 0:
            raise ValueError("rates: need at least one positive rate")
        if self.num_vectors < self.nlist:
            raise ValueError("num_vectors must be >= nlist")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names) or not names:
            raise ValueError("classes: need at least one class, with unique names")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = [c.to_dict() for c in self.classes]
        d["out"] = str(self.out) if self.out else None
        return d


# --------------------------------------------------------------------------- data
@dataclass
class BenchData:
    vectors: np.ndarray  # (n, dim) float32, indexed
    queries: np.ndarray  # (q, dim) float32, held out
    info: dict[str, Any] = field(default_factory=dict)


def cached_corpus_sizes(cache_dir: Path | None = None) -> list[int]:
    """Sizes of complete embedded-corpus caches usable by this Python (ascending)."""
    from trinity.data.corpus import CORPUS_VERSION
    from trinity.data.embed import MODEL_NAME, default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    sizes = []
    for meta_path in root.glob("corpus-*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
            p = meta["params"]
            if p["corpus_version"] == CORPUS_VERSION and p["python"] == py and p["model"] == MODEL_NAME:
                sizes.append(int(meta["num_passages"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(sizes)


def _synthetic(n: int, q: int, dim: int, nlist: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(2 * nlist, 8), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n + q)] + 0.6 * rng.standard_normal((n + q, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])


def load_bench_data(cfg: EngineBenchConfig, console: Console | None = None) -> BenchData:
    """Indexed vectors and held-out queries.

    Real data: the first ``num_vectors`` corpus passages are indexed and the next
    ``num_queries`` are the query pool.  If the embedding cache holds fewer than
    ``num_vectors + num_queries`` passages and ``embed_missing`` is off, the collection
    shrinks to what the largest cache holds (and says so) rather than embedding for hours.
    """
    console = console or make_console()
    if cfg.data == "synthetic":
        x, q = _synthetic(cfg.num_vectors, cfg.num_queries, 384, cfg.nlist, cfg.seed)
        return BenchData(x, q, {"source": "synthetic", "num_vectors": len(x), "num_queries": len(q),
                                "dim": x.shape[1], "requested_num_vectors": cfg.num_vectors})
    from trinity.data.embed import default_cache_dir, load_embedded_corpus

    need = cfg.num_vectors + cfg.num_queries
    sizes = cached_corpus_sizes()
    largest = sizes[-1] if sizes else 0
    n = cfg.num_vectors
    note = ""
    if largest < need and not cfg.embed_missing:
        if largest < cfg.num_queries + cfg.nlist:
            raise RuntimeError(
                f"no usable embedded corpus in {default_cache_dir()} (largest cached: {largest} passages; "
                f"need {need}). Build it (trinity.data.load_embedded_corpus({need})), pass --embed-missing, "
                "or use --data synthetic.")
        n = largest - cfg.num_queries
        note = (f"embedding cache holds {largest} passages < {need} needed; indexing {n} "
                f"(not {cfg.num_vectors}) + {cfg.num_queries} held-out queries")
        console.print(f"[yellow]note:[/] {note}")
    total = n + cfg.num_queries
    t = time.perf_counter()
    texts, emb = load_embedded_corpus(total, progress=True)
    del texts  # only the vectors are needed; 200k strings would slow every full GC
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    info = {"source": "real: stdlib/site-packages docstring passages, all-MiniLM-L6-v2 (normalised)",
            "num_vectors": n, "num_queries": cfg.num_queries, "dim": int(emb.shape[1]),
            "requested_num_vectors": cfg.num_vectors, "largest_cached_corpus": largest,
            "load_s": round(time.perf_counter() - t, 2)}
    if note:
        info["note"] = note
    return BenchData(emb[:n], emb[n:total], info)


def _fingerprint(x: np.ndarray) -> str:
    h = hashlib.sha256(str(x.shape).encode())
    h.update(np.ascontiguousarray(x[:: max(1, len(x) // 4096)]).tobytes())
    h.update(np.ascontiguousarray(x[-64:]).tobytes())
    return h.hexdigest()[:16]


def build_or_load_ivf(data: BenchData, cfg: EngineBenchConfig, console: Console | None = None):
    """Trinity ``IVFIndex`` (inner product) over ``data.vectors``: loaded from the on-disk
    cache keyed by (num_vectors, nlist, corpus fingerprint), else trained, filled and saved."""
    from trinity.data.embed import default_cache_dir
    from trinity.index import IVFIndex, IndexFormatError, load_index, save_index

    console = console or make_console()
    n = len(data.vectors)
    key = f"ivf-ip-n{n}-nlist{cfg.nlist}-{_fingerprint(data.vectors)}"
    path = default_cache_dir() / "bench-indexes" / key
    use_cache = cfg.cache_index and cfg.data == "real"
    t = time.perf_counter()
    if use_cache and (path / "CURRENT").exists():
        try:
            ivf = load_index(path)
            if isinstance(ivf, IVFIndex) and ivf.ntotal == n and ivf.nlist == cfg.nlist:
                return ivf, {"index_cache": str(path), "index_loaded": True,
                             "index_s": round(time.perf_counter() - t, 2)}
            console.print(f"[yellow]cached index at {path} does not match; rebuilding[/]")
        except IndexFormatError as e:
            console.print(f"[yellow]cached index unreadable ({e}); rebuilding[/]")
    ivf = IVFIndex(data.vectors.shape[1], cfg.nlist, metric="ip", nprobe=8)
    ivf.train(data.vectors, seed=cfg.seed)
    ivf.add(data.vectors)
    info: dict[str, Any] = {"index_loaded": False, "index_s": round(time.perf_counter() - t, 2)}
    if use_cache:
        try:
            save_index(ivf, path)
            info["index_cache"] = str(path)
        except (OSError, ValueError) as e:
            console.print(f"[yellow]could not cache the index ({e})[/]")
    return ivf, info


# --------------------------------------------------------------------------- systems
class _System:
    name = "?"

    def submitter(self, schedule: Schedule, queries: np.ndarray) -> Callable[[int, RunRecord, float], None]:
        raise NotImplementedError

    def abandon(self, record: RunRecord) -> None:
        """Give up on requests still outstanding after the drain cap."""

    def counters(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


class StaticSystem(_System):
    """Static (dynamic) batching over faiss IVF; deadline-blind."""

    name = "static"

    def __init__(self, index, max_batch: int, max_wait_ms: float) -> None:
        self.batcher = StaticBatcher(index, max_batch=max_batch, max_wait_ms=max_wait_ms)

    def submitter(self, schedule, queries):
        classes, cls, qi, submit = schedule.classes, schedule.cls, schedule.query, self.batcher.submit_cb

        def go(i: int, rec: RunRecord, lag_s: float) -> None:
            c = classes[cls[i]]

            def done(D, I, i=i):
                rec.complete(i, Status.COMPLETE if I is not None else Status.ERROR, 1.0, I)

            submit(queries[qi[i]], c.k, c.nprobe, done)

        return go

    def abandon(self, record):
        self.batcher.cancel_pending()
        time.sleep(0.5)  # let a batch already running finish before marking the rest

    def counters(self):
        s = self.batcher.stats
        return {"batches": s.batches, "batched_requests": s.requests, "busy_s": s.busy_s}

    def close(self):
        self.batcher.shutdown()


class _TimedRunner:
    """Wraps the engine's runner to time the runner part of every iteration."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.busy_s = 0.0
        self.calls = 0

    def run(self, plan):
        t = time.perf_counter()
        out = self.runner.run(plan)
        self.busy_s += time.perf_counter() - t
        self.calls += 1
        return out


class TrinitySystem(_System):
    """Trinity's engine (stage-aware or FIFO) with the real runner."""

    def __init__(self, ivf, stage_aware: bool, target_iteration_ms: float, **scheduler_kwargs: Any) -> None:
        from trinity.engine import Collections, RequestStatus, SchedulerConfig, SearchEngine, SearchRunner

        self.name = "trinity" if stage_aware else "trinity-fifo"
        collections = Collections()
        collections.add(_COLLECTION, ivf)
        self.runner = _TimedRunner(SearchRunner(collections))
        config = SchedulerConfig(stage_aware=stage_aware, target_iteration_ms=target_iteration_ms, **scheduler_kwargs)
        self.engine = SearchEngine(config,
                                   collections=collections, runner=self.runner)
        self._status = {RequestStatus.FINISHED_COMPLETE: Status.COMPLETE,
                        RequestStatus.FINISHED_PARTIAL: Status.PARTIAL,
                        RequestStatus.FINISHED_REJECTED: Status.REJECTED,
                        RequestStatus.FINISHED_ABORTED: Status.UNFINISHED}
        self._rids: list[str | None] = []

    def submitter(self, schedule, queries):
        classes, cls, qi = schedule.classes, schedule.cls, schedule.query
        submit, status = self.engine.submit, self._status
        rids = self._rids = [None] * len(schedule)

        def go(i: int, rec: RunRecord, lag_s: float) -> None:
            c = classes[cls[i]]
            # NOTE: the client holds an absolute deadline; a late submission leaves less of it.
            deadline_ms = max(c.deadline_ms - lag_s * 1e3, 1e-3)
            fut = submit(_COLLECTION, queries[qi[i]], c.k, nprobe=c.nprobe, stage=c.stage, deadline_ms=deadline_ms)
            rids[i] = fut.request_id

            def done(f, i=i):
                try:
                    r = f.result()
                except Exception:  # noqa: BLE001 - engine closed
                    rec.complete(i, Status.ERROR)
                    return
                rec.complete(i, status.get(r.status, Status.ERROR), r.fraction_scanned, r.ids)

            fut.add_done_callback(done)

        return go

    def abandon(self, record):
        for i in np.nonzero(record.status == Status.PENDING)[0]:
            if self._rids[i] is not None:
                self.engine.abort(self._rids[i])
        end = time.monotonic() + 2.0
        while record.outstanding and time.monotonic() < end:
            time.sleep(0.01)

    def counters(self):
        sch, reg = self.engine.scheduler, self.engine.metrics.registry
        return {"iterations": sch.iteration, "preemptions": sch.num_preemptions, "iteration_est_ms": 1e3 * sch.iteration_s,
                "runner_busy_s": self.runner.busy_s, "budget_vectors": sch.budget_vectors,
                "vectors_scanned": reg.get_sample_value("trinity_engine_vectors_scanned_total") or 0.0}

    def close(self):
        self.engine.shutdown(drain=False, timeout_s=2.0)


# --------------------------------------------------------------------------- one stream
def run_stream(system: _System, schedule: Schedule, queries: np.ndarray, drain_cap_s: float) -> RunRecord:
    """Replay ``schedule`` open-loop against ``system``; wait (capped) for every result."""
    driver = OpenLoopDriver(schedule, system.submitter(schedule, queries))
    driver.start()
    rec = driver.join()
    if not driver.wait_done(drain_cap_s):
        system.abandon(rec)
        rec.mark_unfinished()
    return rec


def _pct(values: np.ndarray, p: float) -> float:
    if values.size == 0:
        return math.nan
    v = float(np.percentile(values, p))
    return math.inf if v >= _INF_MS / 10 else v


def summarize_run(rec: RunRecord, system: str, refs: dict[str, np.ndarray] | None = None,
                  before: dict[str, float] | None = None, after: dict[str, float] | None = None,
                  miss_target: float = 0.01) -> dict[str, Any]:
    """One table/JSON row: throughput, per-class p50/p99 and miss rates, quality."""
    sched = rec.schedule
    n = len(sched)
    lat = rec.latency_ms()
    status = rec.status
    answered = status != Status.UNFINISHED
    # NOTE: percentiles are over answers (complete or partial); a rejected, failed or
    # unanswered request has no answer and counts as infinitely late.
    has_answer = (status == Status.COMPLETE) | (status == Status.PARTIAL)
    lat_all = np.where(has_answer & np.isfinite(lat), lat, _INF_MS)
    deadline = np.array([c.deadline_ms for c in sched.classes])[sched.cls]
    complete = status == Status.COMPLETE
    late = complete & (lat_all > deadline)
    miss = ~complete | late
    t_end = np.nanmax(rec.t_done[answered]) if answered.any() else rec.t0
    span = max(t_end - rec.t0, sched.duration_s)
    row: dict[str, Any] = {
        "rate": sched.rate, "system": system, "requests": n,
        "offered_rps": n / sched.duration_s,
        "throughput_rps": complete.sum() / span,
        "goodput_rps": (complete & ~late).sum() / sched.duration_s,
        "miss_pct": 100.0 * miss.mean() if n else math.nan,
        "late_pct": 100.0 * late.mean() if n else math.nan,
        "partial_pct": 100.0 * (status == Status.PARTIAL).mean() if n else math.nan,
        "rejected_pct": 100.0 * (status == Status.REJECTED).mean() if n else math.nan,
        "unfinished_pct": 100.0 * (status == Status.UNFINISHED).mean() if n else math.nan,
        "error_pct": 100.0 * (status == Status.ERROR).mean() if n else math.nan,
        "submit_lag_p99_ms": _pct(rec.submit_lag_ms()[np.isfinite(rec.t_submit)], 99),
        "drain_s": max(0.0, t_end - (rec.t0 + sched.duration_s)),
    }
    within = True
    for ci, c in enumerate(sched.classes):
        m = sched.cls == ci
        row[f"{c.name}_n"] = int(m.sum())
        row[f"{c.name}_p50_ms"] = _pct(lat_all[m], 50)
        row[f"{c.name}_p99_ms"] = p99 = _pct(lat_all[m], 99)
        row[f"{c.name}_miss_pct"] = 100.0 * miss[m].mean() if m.any() else math.nan
        within &= bool(m.any()) and p99 <= c.deadline_ms
    row["p99_within_deadlines"] = bool(within)
    row["sustained"] = bool(within and row["miss_pct"] <= 100.0 * miss_target)
    if refs is not None:
        agree, recall_partial = [], []
        for i in np.nonzero((status == Status.COMPLETE) | (status == Status.PARTIAL))[0]:
            ids = rec.results[i]
            if ids is None:
                continue
            c = sched.classes[sched.cls[i]]
            ref = refs[c.name][sched.query[i]]
            ref_set = set(ref[ref >= 0].tolist())
            got = set(np.asarray(ids)[np.asarray(ids) >= 0].tolist())
            frac = len(got & ref_set) / max(len(ref_set), 1)
            (agree if status[i] == Status.COMPLETE else recall_partial).append(frac)
        row["agree_with_faiss"] = float(np.mean(agree)) if agree else math.nan
        row["partial_recall"] = float(np.mean(recall_partial)) if recall_partial else math.nan
    if before is not None and after is not None:
        d = {k: after[k] - before.get(k, 0.0) for k in after}
        if "batches" in d:
            row["mean_batch"] = d["batched_requests"] / d["batches"] if d["batches"] else math.nan
            row["busy_pct"] = 100.0 * d["busy_s"] / span
        if "iterations" in d:
            row["iterations"] = int(d["iterations"])
            row["mean_iter_ms"] = 1e3 * d["runner_busy_s"] / d["iterations"] if d["iterations"] else math.nan
            row["busy_pct"] = 100.0 * d["runner_busy_s"] / span
            row["vectors_per_iter"] = d["vectors_scanned"] / d["iterations"] if d["iterations"] else math.nan
            row["preemptions"] = int(d["preemptions"])
            row["budget_vectors"] = int(after["budget_vectors"])
            row["iteration_est_ms_at_start"] = before["iteration_est_ms"]
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


# --------------------------------------------------------------------------- summary
def summarize(rows: Sequence[dict[str, Any]], cfg: EngineBenchConfig) -> dict[str, Any]:
    """The issue's two targets, computed from the rows."""
    decode = next((c for c in cfg.classes if c.stage == "decode"), cfg.classes[0])
    by = {(r["system"], r["rate"]): r for r in rows}
    rates = sorted({r["rate"] for r in rows})
    out: dict[str, Any] = {"decode_class": decode.name, "decode_deadline_ms": decode.deadline_ms}
    key = f"{decode.name}_p99_ms"
    crossing = next((r for r in rates if ("static", r) in by and by[("static", r)][key] > decode.deadline_ms), None)
    out["static_crossing_rate"] = crossing
    if crossing is not None:
        s = by[("static", crossing)]
        out["static_decode_p99_ms_at_crossing"] = s[key]
        for name in ("trinity", "trinity-fifo"):
            t = by.get((name, crossing))
            if t is None:
                continue
            if math.isinf(s[key]):  # static never answered 1% of them
                ratio = 0.0 if math.isfinite(t[key]) else math.nan
            else:
                ratio = t[key] / s[key] if s[key] > 0 else math.nan
            out[name] = {"decode_p99_ms_at_crossing": t[key], "decode_p99_ratio": ratio,
                         "miss_pct_at_crossing": t["miss_pct"], "decode_miss_pct_at_crossing": t[f"{decode.name}_miss_pct"],
                         "meets_latency_target": bool(ratio <= 1 / 3 and t["miss_pct"] <= 100 * cfg.miss_target)}
    sustained = {}
    for system in cfg.systems:
        ok = [r for r in rates if (system, r) in by and by[(system, r)]["sustained"]]
        sustained[system] = max(ok) if ok else 0.0
    out["sustained_rate"] = sustained
    s0 = sustained.get("static", 0.0)
    for name in ("trinity", "trinity-fifo"):
        if name in sustained:
            ratio = sustained[name] / s0 if s0 else (math.inf if sustained[name] else math.nan)
            out.setdefault(name, {})["sustained_ratio_vs_static"] = ratio
            out[name]["meets_throughput_target"] = bool(ratio >= 1.5)
    out["rates_capped"] = bool(sustained and max(sustained.values()) >= max(rates))
    return out


def _summary_lines(summary: dict[str, Any], cfg: EngineBenchConfig) -> list[str]:
    lines = []
    dn, dd = summary["decode_class"], summary["decode_deadline_ms"]
    cr = summary["static_crossing_rate"]
    if cr is None:
        lines.append(f"(1) static's {dn} p99 never exceeded {dd:g} ms at the tested rates: no crossing rate; "
                     "raise --rates to find it.")
    else:
        t = summary.get("trinity", {})
        line = f"(1) static's {dn} p99 first exceeds {dd:g} ms at {cr:g} req/s ({summary['static_decode_p99_ms_at_crossing']:.1f} ms)"
        if "decode_p99_ms_at_crossing" in t:
            line += (f"; Trinity's {dn} p99 there: {t['decode_p99_ms_at_crossing']:.1f} ms = "
                     f"{t['decode_p99_ratio']:.2f}x static (target <= 0.33), misses {t['miss_pct_at_crossing']:.2f}% "
                     f"(target <= {100 * cfg.miss_target:g}%) -> {'MET' if t['meets_latency_target'] else 'NOT MET'}")
        lines.append(line)
    sr = summary["sustained_rate"]
    line = "(2) sustained rate (every class p99 <= deadline and misses <= " f"{100 * cfg.miss_target:g}%): " + ", ".join(
        f"{k} {v:g}" for k, v in sr.items())
    t = summary.get("trinity", {})
    if "sustained_ratio_vs_static" in t:
        line += (f"; trinity/static = {t['sustained_ratio_vs_static']:.2f}x (target >= 1.5) -> "
                 f"{'MET' if t['meets_throughput_target'] else 'NOT MET'}")
    if summary.get("rates_capped"):
        line += " (a system passed the highest tested rate: its sustained rate is a lower bound)"
    lines.append(line)
    return lines


# --------------------------------------------------------------------------- plot
def plot_results(rows: Sequence[dict[str, Any]], cfg: EngineBenchConfig, path: Path, title: str = "",
                 crossing: float | None = None) -> Path:
    """p99 per class vs offered rate per system (deadline dashed, static's crossing rate
    dotted) and the miss rate vs rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    classes = list(cfg.classes)
    panels = len(classes) + 1
    cols = 2
    nrows = math.ceil(panels / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    colors = {"static": "tab:red", "trinity-fifo": "tab:orange", "trinity": "tab:blue"}
    systems = [s for s in cfg.systems if any(r["system"] == s for r in rows)]
    for ax, c in zip(axes.flat, classes):
        key = f"{c.name}_p99_ms"
        finite = [r[key] for r in rows if math.isfinite(r[key])]
        ceiling = 2 * max(finite + [c.deadline_ms])  # where "no answer for >= 1%" is drawn
        marked = False
        for s in systems:
            rs = sorted((r for r in rows if r["system"] == s), key=lambda r: r["rate"])
            xs = [r["rate"] for r in rs]
            ax.plot(xs, [r[key] if math.isfinite(r[key]) else math.nan for r in rs], "o-", color=colors.get(s), label=s)
            inf_x = [r["rate"] for r in rs if not math.isfinite(r[key])]
            if inf_x:
                ax.plot(inf_x, [ceiling] * len(inf_x), "^", color=colors.get(s), ms=9,
                        label=None if marked else "p99 = inf (>= 1% without an answer)")
                marked = True
        ax.axhline(c.deadline_ms, color="k", ls="--", lw=1, label=f"deadline {c.deadline_ms:g} ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        if crossing is not None:
            ax.axvline(crossing, color="grey", ls=":", lw=1)
        ax.set_title(f"{c.name} ({c.stage}, k={c.k}, nprobe={c.nprobe}): p99")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("p99 latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[len(classes)]
    for s in systems:
        rs = sorted((r for r in rows if r["system"] == s), key=lambda r: r["rate"])
        ax.plot([r["rate"] for r in rs], [r["miss_pct"] for r in rs], "o-", color=colors.get(s), label=s)
    ax.axhline(100 * cfg.miss_target, color="k", ls="--", lw=1, label=f"{100 * cfg.miss_target:g}% target")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(0, 100)
    ax.set_title("deadline misses (late, partial, rejected or unanswered)")
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    for extra in list(axes.flat)[panels:]:
        extra.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_from_json(path: str | Path, png: str | Path | None = None) -> Path:
    """Redraw the PNG of a saved result file (e.g. after changing the plot)."""
    payload = json.loads(Path(path).read_text())
    p = payload["params"]
    cfg = EngineBenchConfig(classes=tuple(RequestClass(**c) for c in p["classes"]), systems=tuple(p["systems"]),
                            rates=tuple(p["rates"]), miss_target=p["miss_target"])
    d = payload["data"]
    title = (f"trinity bench engine: {d['num_vectors']:,} vectors, IVF{p['nlist']}, "
             f"{payload['machine']['cpu_usable']} cores")
    return plot_results(payload["runs"], cfg, Path(png) if png else Path(path).with_suffix(".png"), title=title,
                        crossing=payload["summary"].get("static_crossing_rate"))


# --------------------------------------------------------------------------- driver
def _warm(system: _System, queries: np.ndarray, cfg: EngineBenchConfig) -> None:
    sched = poisson_schedule(cfg.warmup_rate, cfg.warmup_s, cfg.classes, len(queries), seed=cfg.seed + 7919)
    run_stream(system, sched, queries, cfg.drain_cap_s)


def _reference(faiss_index, queries: np.ndarray, classes: Sequence[RequestClass]) -> dict[str, np.ndarray]:
    import faiss

    return {c.name: faiss_index.search(queries, c.k, params=faiss.SearchParametersIVF(nprobe=c.nprobe))[1]
            for c in classes}


def run_engine_bench(cfg: EngineBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole comparison; print tables and summary; write JSON (+ PNG); return the payload."""
    import faiss
    import torch

    console = console or make_console()
    started = time.perf_counter()
    data = load_bench_data(cfg, console)
    threads = set_threads(cfg.threads)  # after loading: the embedder may touch torch threads
    faiss.cvar.distance_compute_blas_threshold = cfg.blas_threshold
    ivf, index_info = build_or_load_ivf(data, cfg, console)
    t = time.perf_counter()
    peer = faiss_ivf_like(ivf, data.vectors)
    index_info["faiss_build_s"] = round(time.perf_counter() - t, 2)
    sizes = ivf.list_sizes()
    index_info.update(nlist=cfg.nlist, list_size_mean=float(sizes.mean()), list_size_max=int(sizes.max()),
                      list_size_biased_mean=float((sizes.astype(float) ** 2).sum() / max(sizes.sum(), 1)))
    queries = data.queries
    refs = _reference(peer, queries, cfg.classes)
    console.print(f"[bold]engine bench[/]: {data.info['num_vectors']:,} x {data.info['dim']} "
                  f"({data.info['source'].split(':')[0]}), IVF nlist {cfg.nlist}, {len(queries)} held-out queries; "
                  f"rates {', '.join(f'{r:g}' for r in cfg.rates)} req/s x {cfg.duration_s:g} s; "
                  f"index {'loaded' if index_info.get('index_loaded') else 'built'} in {index_info['index_s']} s")

    # NOTE: compile/load the numba kernels before any engine exists: the engine folds the
    # duration of every iteration into its iteration-time estimate, and one JIT-length
    # iteration poisons it (see the report's engine notes).
    for c in cfg.classes:
        ivf.search(queries[:8], c.k, nprobe=c.nprobe)
    systems: dict[str, _System] = {}
    for name in cfg.systems:
        if name == "static":
            systems[name] = StaticSystem(peer, cfg.max_batch, cfg.max_wait_ms)
        else:
            systems[name] = TrinitySystem(ivf, stage_aware=name == "trinity", target_iteration_ms=cfg.target_iteration_ms,
                                          **cfg.scheduler_kwargs)
    old_switch = sys.getswitchinterval()
    rows: list[dict[str, Any]] = []
    try:
        if cfg.switch_interval_ms is not None:
            sys.setswitchinterval(cfg.switch_interval_ms / 1e3)
        for system in systems.values():
            _warm(system, queries, cfg)
        gc.collect()
        gc.freeze()  # NOTE: keeps full collections of the long-lived setup objects out of the runs
        for rate in cfg.rates:
            sched = poisson_schedule(rate, cfg.duration_s, cfg.classes, len(queries), seed=cfg.seed)
            for name, system in systems.items():
                time.sleep(cfg.settle_s)
                before = system.counters()
                rec = run_stream(system, sched, queries, cfg.drain_cap_s)
                row = summarize_run(rec, name, refs, before, system.counters(), cfg.miss_target)
                rows.append(row)
                c0 = cfg.classes[0].name
                console.print(f"  {rate:>6g} req/s  {name:<13} thr {row['throughput_rps']:7.0f}/s  "
                              f"{c0} p99 {row[f'{c0}_p99_ms']:8.1f} ms  miss {row['miss_pct']:5.1f}%", highlight=False)
    finally:
        sys.setswitchinterval(old_switch)
        gc.unfreeze()
        for system in systems.values():
            system.close()

    columns: list = [("rate", "rate", "g"), ("system", "system"), ("throughput_rps", "thr/s", ".0f")]
    for c in cfg.classes:
        columns += [(f"{c.name}_p50_ms", f"{c.name} p50", ".1f"), (f"{c.name}_p99_ms", f"{c.name} p99", ".1f")]
    columns += [("miss_pct", "miss%", ".2f"), ("late_pct", "late%", ".2f"), ("partial_pct", "partial%", ".2f"),
                ("rejected_pct", "rej%", ".2f"), ("submit_lag_p99_ms", "lag p99", ".1f"),
                ("agree_with_faiss", "agree", ".2f")]
    deadlines = ", ".join(f"{c.name} {c.deadline_ms:g} ms" for c in cfg.classes)
    print_table(f"Engine bench: latency in ms from scheduled arrival (deadlines: {deadlines})", rows, columns, console)
    summary = summarize(rows, cfg)
    lines = _summary_lines(summary, cfg)
    for line in lines:
        console.print(line, highlight=False)
    summary["lines"] = lines
    t = summary.get("trinity", {})
    summary["verdicts"] = verdicts = [
        verdict("Trinity/static decode p99 at static's crossing rate", t.get("decode_p99_ratio"), "<=", round(1 / 3, 3)),
        verdict("Trinity miss % at static's crossing rate", t.get("miss_pct_at_crossing"), "<=", 100 * cfg.miss_target),
        verdict("Trinity/static sustained rate", t.get("sustained_ratio_vs_static"), ">=", 1.5),
    ]
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
        "runs": rows,
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
