"""Data, index and the systems under test for ``trinity bench engine``: the indexed vectors
and held-out queries (embedded corpus or synthetic clusters), the cached Trinity index (IVF
or graph), one submit/abandon/counters adapter per compared system (:class:`StaticSystem`,
:class:`TrinitySystem` in stage-aware or FIFO mode), and :func:`run_stream`, which replays one
open-loop schedule against a system.  Config: :mod:`~trinity.bench.engine_config`; summaries
and plots: :mod:`~trinity.bench.engine_report`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from trinity.bench.report import PhaseTimer, make_console
from trinity.bench.static_batcher import StaticBatcher
from trinity.bench.workload import OpenLoopDriver, RunRecord, Schedule, Status

if TYPE_CHECKING:
    from trinity.bench.engine_config import EngineBenchConfig

_COLLECTION = "bench"


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


def build_or_load_index(data: BenchData, cfg: EngineBenchConfig, console: Console | None = None):
    """The bench collection over ``data.vectors`` (inner product): a Trinity ``IVFIndex``, or a
    ``GraphIndex`` with ``cfg.index == "graph"``; loaded from the on-disk cache keyed by
    (num_vectors, nlist or degree, corpus fingerprint), else built and saved."""
    from trinity.data.embed import default_cache_dir
    from trinity.index import GraphIndex, IndexFormatError, IVFIndex, load_index, save_index

    console = console or make_console()
    n, graph = len(data.vectors), cfg.index == "graph"
    shape = f"graph-ip-n{n}-degree{cfg.graph_degree}" if graph else f"ivf-ip-n{n}-nlist{cfg.nlist}"
    path = default_cache_dir() / "bench-indexes" / f"{shape}-{_fingerprint(data.vectors)}"
    use_cache = cfg.cache_index and cfg.data == "real" and cfg.device == "cpu"
    t = time.perf_counter()
    if use_cache and (path / "CURRENT").exists():
        try:
            index = load_index(path)
            if isinstance(index, GraphIndex if graph else IVFIndex) and index.ntotal == n:
                return index, {"index_cache": str(path), "index_loaded": True,
                               "index_s": round(time.perf_counter() - t, 2)}
            console.print(f"[yellow]cached index at {path} does not match; rebuilding[/]")
        except IndexFormatError as e:
            console.print(f"[yellow]cached index unreadable ({e}); rebuilding[/]")
    if graph:
        index = GraphIndex(data.vectors.shape[1], metric="ip", graph_degree=cfg.graph_degree, seed=cfg.seed)
    else:
        index = IVFIndex(data.vectors.shape[1], cfg.nlist, metric="ip", nprobe=8, device=cfg.device, dtype=cfg.dtype)
        index.train(data.vectors, seed=cfg.seed)
    index.add(data.vectors)
    info: dict[str, Any] = {"index_loaded": False, "index_s": round(time.perf_counter() - t, 2)}
    if use_cache:
        try:
            save_index(index, path)
            info["index_cache"] = str(path)
        except (OSError, ValueError) as e:
            console.print(f"[yellow]could not cache the index ({e})[/]")
    return index, info


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
    """Static (dynamic) batching over a batch-search index (faiss IVF on the CPU, the torch
    gather + bmm + topk scan on a GPU); deadline-blind."""

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

    def __init__(self, ivf, name: str, target_iteration_ms: float, **scheduler_kwargs: Any) -> None:
        from trinity.engine import Collections, RequestStatus, SchedulerConfig, SearchEngine, SearchRunner

        self.name, stage_aware = name, name != "trinity-fifo"
        collections = Collections()
        collections.add(_COLLECTION, ivf)
        self.runner = _TimedRunner(SearchRunner(collections))
        config = SchedulerConfig(stage_aware=stage_aware, target_iteration_ms=target_iteration_ms, **scheduler_kwargs)
        self.engine = SearchEngine(config, collections=collections, runner=self.runner)
        # NOTE: instance attributes shadow the methods the loop calls: whole iterations and
        # the scheduler's two phases are timed (the runner by _TimedRunner).
        self.phases = PhaseTimer()
        sch, inner = self.engine.scheduler, self.runner.runner
        sch.schedule = self.phases.wrap(sch.schedule, "schedule_s")
        sch.update_from_output = self.phases.wrap(sch.update_from_output, "update_s")
        self.engine._iterate = self.phases.wrap(self.engine._iterate, "step_s")
        # the runner's calls into the index, and taking results (its host sync)
        inner._results = self.phases.wrap(inner._results, "take_s")
        for name in ("prepare_validated", "assign_prepared", "scan", "seed_rows", "advance"):
            if hasattr(ivf, name):
                setattr(ivf, name, self.phases.wrap(getattr(ivf, name), f"{name}_s"))
        self._status = {RequestStatus.FINISHED_COMPLETE: Status.COMPLETE,
                        RequestStatus.FINISHED_PARTIAL: Status.PARTIAL,
                        RequestStatus.FINISHED_REJECTED: Status.REJECTED,
                        RequestStatus.FINISHED_ABORTED: Status.UNFINISHED}
        self._rids: list[str | None] = []

    def submitter(self, schedule, queries):
        from trinity.engine import OverloadedError

        classes, cls, qi = schedule.classes, schedule.cls, schedule.query
        submit, status = self.engine.submit, self._status
        rids = self._rids = [None] * len(schedule)

        def go(i: int, rec: RunRecord, lag_s: float) -> None:
            c = classes[cls[i]]
            # NOTE: the client holds an absolute deadline; a late submission leaves less of it.
            deadline_ms = max(c.deadline_ms - lag_s * 1e3, 1e-3)
            try:
                fut = submit(_COLLECTION, queries[qi[i]], c.k, nprobe=c.nprobe, stage=c.stage, deadline_ms=deadline_ms)
            except OverloadedError:  # sojourn admission (``admission_share``) refused it
                rec.complete(i, Status.REJECTED)
                return
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
                "vectors_scanned": reg.get_sample_value("trinity_engine_vectors_scanned_total") or 0.0,
                "vectors_read": reg.get_sample_value("trinity_engine_vectors_read_total") or 0.0,
                **self._longest(), **self.phases.seconds}

    def _longest(self) -> dict[str, float]:
        """Each phase's longest call since the last reading (``longest_step_ms``: whole iterations)."""
        out = {f"longest_{k.removesuffix('_s')}_ms": 1e3 * v for k, v in self.phases.longest.items()}
        self.phases.longest.clear()
        return out

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
