"""``trinity bench calibrate``: fit the simulator's vector-search cost model on this machine.

The real engine (scheduler, runner, kernels) runs bursts of mixed searches on a real index,
stepped in this thread; each iteration's wall time (schedule + run + update, host included)
is recorded with its (query, vector) pairs, distinct vectors read and items, and
``seconds = fixed + pairs / pairs_per_s + reads / reads_per_s + items * per_item`` is fitted
by non-negative least squares.  The result is a JSON search profile the simulator loads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trinity.sim.profiles import PROFILE_DIR, SearchCost, write_search

MIX = (("decode", 4, 8, 20.0), ("prefill", 8, 32, 150.0), ("prefill", 1, 4, 20.0))  # stage, k, nprobe, deadline_ms


@dataclass(frozen=True)
class CalibrateConfig:
    num_vectors: int = 100_000
    dim: int = 384
    nlist: int = 256
    index: str = "ivf"  # ivf | flat
    bursts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    repeats: int = 5
    threads: int | None = None
    seed: int = 0
    name: str = "search-cpu-calibrated"
    out: Path | None = None
    device: str = "cpu"  # cpu | cuda (the index's device)


def _data(cfg: CalibrateConfig) -> np.ndarray:
    rng = np.random.default_rng(cfg.seed)
    centers = rng.standard_normal((max(cfg.nlist // 2, 8), cfg.dim)).astype(np.float32)
    w = rng.pareto(1.5, centers.shape[0]) + 1.0
    labels = rng.choice(centers.shape[0], cfg.num_vectors, p=w / w.sum())
    noise = rng.standard_normal((cfg.num_vectors, cfg.dim)).astype(np.float32) / np.sqrt(cfg.dim)
    return centers[labels] + 2.0 * noise


def _index(cfg: CalibrateConfig, x: np.ndarray):
    from trinity.index import FlatIndex, IVFIndex

    if cfg.index == "flat":
        idx = FlatIndex(cfg.dim, metric="ip", device=cfg.device)
    else:
        idx = IVFIndex(cfg.dim, cfg.nlist, metric="ip", nprobe=8, device=cfg.device)
        idx.train(x[: min(len(x), 64 * cfg.nlist)], niter=8, seed=cfg.seed)
    idx.add(x)
    return idx


def measure(cfg: CalibrateConfig, idx, x: np.ndarray) -> np.ndarray:
    """Rows of (pairs, reads, items, seconds), one per iteration of the real engine."""
    from trinity.engine import Collections, SchedulerConfig, SearchEngine, SearchRunner

    rows: list[tuple[int, int, int, float]] = []
    collections = Collections()
    collections.add("c", idx)
    inner = SearchRunner(collections)
    last: list = []

    class Recording:
        def run(self, plan):
            out = inner.run(plan)
            last.append((out.num_vectors_scanned, out.vectors_read, plan.num_items + len(plan.new_requests)))
            return out

    engine = SearchEngine(SchedulerConfig(target_iteration_ms=4.0), collections=collections, runner=Recording(),
                          start=False)
    rng = np.random.default_rng(cfg.seed + 1)
    for _ in range(cfg.repeats):
        for burst in cfg.bursts:
            for j in rng.integers(0, len(MIX), burst):
                stage, k, nprobe, _ = MIX[j]
                q = x[rng.integers(0, len(x))] + 0.05 * rng.standard_normal(cfg.dim).astype(np.float32)
                engine.submit("c", q, k, nprobe=nprobe if cfg.index == "ivf" else None, stage=stage)
            pending = True
            while pending:
                t = time.perf_counter()
                engine.step()
                t = time.perf_counter() - t
                if last:  # NOTE: an iteration with a head ran two plans: one row for both
                    rows.append((*np.sum(last, axis=0), t))
                    last.clear()
                pending = engine.scheduler.has_work
    engine.shutdown(drain=False)
    return np.asarray(rows, dtype=np.float64)


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a few columns: the best of every column subset's fit
    whose coefficients are all >= 0 (16 subsets for 4 columns)."""
    best, best_err = np.zeros(a.shape[1]), float((y ** 2).sum())
    for mask in range(1, 1 << a.shape[1]):
        cols = [j for j in range(a.shape[1]) if mask >> j & 1]
        coef = np.linalg.lstsq(a[:, cols], y, rcond=None)[0]
        if (coef < 0).any():
            continue
        err = float(((a[:, cols] @ coef - y) ** 2).sum())
        if err < best_err:
            best, best_err = np.zeros(a.shape[1]), err
            best[cols] = coef
    return best


def fit(rows: np.ndarray, rounds: int = 3) -> tuple[SearchCost, dict[str, float]]:
    """Non-negative least squares of seconds on (1, pairs, reads, items); iterations whose
    residual exceeds 3x the median absolute residual (a preempted thread on a shared
    machine) are dropped and the fit repeated."""
    design = np.column_stack([np.ones(len(rows)), rows[:, 0], rows[:, 1], rows[:, 2]])
    scale = np.maximum(design.max(axis=0), 1.0)
    keep = np.ones(len(rows), dtype=bool)
    for _ in range(rounds):
        coef = _nnls(design[keep] / scale, rows[keep, 3])
        coef = coef / scale
        resid = np.abs(rows[:, 3] - design @ coef)
        keep = resid <= 3 * np.median(resid[keep]) + 1e-12
    y = rows[keep, 3]
    resid = y - (design @ coef)[keep]
    r2 = 1.0 - float((resid ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-18))
    rel = np.abs(rows[:, 3] - design @ coef) / np.maximum(rows[:, 3], 1e-9)
    cost = SearchCost(float(coef[0]), 1.0 / max(coef[1], 1e-15), 1.0 / max(coef[2], 1e-15), float(coef[3]))
    return cost, {"r2": r2, "median_rel_error": float(np.median(rel)), "iterations": int(len(rows)),
                  "kept": int(keep.sum())}


def run_calibrate(cfg: CalibrateConfig, console=None) -> dict[str, Any]:
    from trinity.bench.report import machine_info, set_threads

    threads = set_threads(cfg.threads)
    x = _data(cfg)
    t = time.perf_counter()
    idx = _index(cfg, x)
    build_s = time.perf_counter() - t
    measure(CalibrateConfig(**{**cfg.__dict__, "bursts": (4, 32), "repeats": 1}), idx, x)  # NOTE: JIT warm-up
    rows = measure(cfg, idx, x)
    cost, quality = fit(rows)
    machine = machine_info()
    path = cfg.out or PROFILE_DIR / f"{cfg.name}.json"
    sources = [f"Fitted by `trinity bench calibrate` on {machine.get('host', 'this machine')} ({threads} threads, "
               f"{machine.get('cpu', 'cpu')}, device {cfg.device}), {time.strftime('%Y-%m-%d')}: the real engine on a "
               f"{cfg.index} index of "
               f"{cfg.num_vectors} x {cfg.dim} synthetic clustered vectors, bursts {list(cfg.bursts)} x {cfg.repeats}.",
               f"Fit quality: R^2 {quality['r2']:.3f}, median relative error {quality['median_rel_error']:.1%} over "
               f"{quality['iterations']} iterations ({quality['kept']} kept after trimming outliers) (iteration wall time: schedule + run + update)."]
    gpu = cfg.device != "cpu"
    write_search(Path(path), cfg.name, "gpu" if gpu else "cpu", cost, cfg.dim, (2 if gpu else 4) * cfg.dim, threads,
                 sources,
                 {"calibration": {**quality, "index": cfg.index, "num_vectors": cfg.num_vectors, "nlist": cfg.nlist,
                                  "build_s": build_s}})
    return {"path": str(path), "cost": cost, "quality": quality, "threads": threads}
