"""``trinity bench index``: Trinity Flat/IVF against FAISS Flat/IVFFlat, in one run.

Both IVF indexes share Trinity's trained centroids, so recall is compared at equal
``nprobe`` on identical inverted lists.  Ground truth is Trinity's exact flat search
(checked against FAISS's).  Per (system, batch size): QPS, p50/p99 batch latency and
recall@k; plus Trinity/FAISS QPS ratios, memory per stored vector and target verdicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from trinity.bench.report import (cuda_copy_gbps, default_out_path, latency_summary_ms, machine_info, make_console,
                                  print_table, print_verdicts, recall_at_k, set_threads, time_interleaved, verdict,
                                  write_json)

TARGET_IVF_QPS_RATIO = 0.8  # Trinity IVF QPS / FAISS IVF QPS at VERDICT_BATCH
TARGET_MEMORY_RATIO = 1.15  # Trinity IVF storage bytes / raw vector bytes
VERDICT_BATCH = 64
MIN_BATCHES = 3  # timed batches per (system, batch size), even past the time budget
SearchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class IndexBenchConfig:
    num_vectors: int = 200_000
    dim: int = 384
    nlist: int = 1024
    nprobe: int = 32
    batch_sizes: tuple[int, ...] = (1, 16, 64, 256)
    k: int = 10
    num_queries: int = 1024
    data: str = "real"  # "real" (embedded corpus) or "synthetic" (clustered Gaussian)
    out: Path | None = None
    threads: int | None = None  # None: every usable core
    max_seconds: float = 10.0  # timing budget per (system, batch size)
    faiss_blas_threshold: int = 16
    seed: int = 0
    cuda: bool = True  # also run Trinity on CUDA when available

    def validate(self) -> None:
        if self.data not in ("real", "synthetic"):
            raise ValueError(f"data: expected 'real' or 'synthetic', got {self.data!r}")
        if min(self.num_vectors, self.dim, self.nlist, self.nprobe, self.k, self.num_queries) < 1:
            raise ValueError("num_vectors, dim, nlist, nprobe, k and num_queries must be >= 1")
        if self.nlist > self.num_vectors or self.k > self.num_vectors:
            raise ValueError("nlist and k must not exceed num_vectors")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or max(self.batch_sizes) > self.num_queries:
            raise ValueError(f"batch sizes must be in [1, num_queries={self.num_queries}]")


def synthetic_clustered(n: int, dim: int, seed: int = 0, num_clusters: int | None = None,
                        noise: float = 2.0) -> np.ndarray:
    """``n`` unit vectors around random unit centres (a Gaussian mixture), float32."""
    rng = np.random.default_rng(seed)
    num_clusters = num_clusters or max(8, n // 200)
    centres = rng.standard_normal((num_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):  # chunked: no second full-size temporary
        x = centres[rng.integers(0, num_clusters, min(65536, n - s))]
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def load_vectors(cfg: IndexBenchConfig, console: Console) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(database, queries, info)``; queries are held-out rows beyond the database rows."""
    n, x = cfg.num_vectors + cfg.num_queries, None
    info: dict[str, Any] = {"requested": cfg.data, "source": cfg.data, "corpus": "clustered Gaussian, unit norm"}
    if cfg.data == "real":
        try:
            from trinity.data import load_embedded_corpus
        except ImportError as exc:  # NOTE: a development fallback only; "real" stays the default
            info.update(source="synthetic", fallback_reason=f"trinity.data.load_embedded_corpus unavailable: {exc}")
            console.print(f"[yellow]warning:[/] {info['fallback_reason']}; using synthetic data")
        else:
            x = load_embedded_corpus(n)[1]
            info["corpus"] = "MiniLM-L6 embeddings of docstring passages (trinity.data)"
            if len(x) < n:
                raise ValueError(f"corpus has {len(x)} passages, need num_vectors + num_queries = {n}")
    x = np.ascontiguousarray(synthetic_clustered(n, cfg.dim, cfg.seed) if x is None else x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != cfg.dim:
        raise ValueError(f"data has shape {x.shape}, expected (*, {cfg.dim}); --dim is fixed by the data")
    return x[:cfg.num_vectors], x[cfg.num_vectors:n], info


def _memory_row(name: str, ntotal: int, dim: int, parts: dict[str, int], centroid_bytes: int = 0) -> dict[str, Any]:
    raw, total = ntotal * dim * 4, sum(parts.values())
    return {"system": name, **parts, "total_bytes": total, "bytes_per_vector": total / ntotal,
            "raw_bytes_per_vector": dim * 4, "ratio_to_raw": total / raw, "centroid_bytes": centroid_bytes,
            "ratio_to_raw_with_centroids": (total + centroid_bytes) / raw}


def run_index_bench(cfg: IndexBenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole benchmark, print tables and verdicts, write JSON; return the payload."""
    import faiss

    from trinity.index import FlatIndex, IVFIndex

    cfg.validate()
    console = console or make_console()
    xb, xq, data_info = load_vectors(cfg, console)
    threads = set_threads(cfg.threads)  # after loading: the embedder may touch torch threads
    # NOTE: FAISS's flat search (and IVF's coarse quantizer) scores a batch smaller than
    # this threshold with a per-query loop parallelised over queries only -- one full pass
    # over the data per query, single-threaded at batch 1; at >= threshold it runs one BLAS
    # GEMM per data block for the whole batch.  The default (20) leaves batch 16 on the
    # memory-bound per-query path; 16 puts every batch >= 16 on BLAS.
    faiss.cvar.distance_compute_blas_threshold = cfg.faiss_blas_threshold
    build: dict[str, float] = {}

    def timed(key: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        fn()
        build[key] = round(time.perf_counter() - t0, 3)

    with console.status("building indexes"):
        tflat, tivf = FlatIndex(cfg.dim, metric="ip"), IVFIndex(cfg.dim, cfg.nlist, metric="ip", nprobe=cfg.nprobe)
        timed("trinity_flat_add_s", lambda: tflat.add(xb))
        timed("trinity_ivf_train_s", lambda: tivf.train(xb, seed=cfg.seed))
        timed("trinity_ivf_add_s", lambda: tivf.add(xb))
        centroids = np.ascontiguousarray(tivf.centroids.cpu().numpy())
        fflat, quantizer = faiss.IndexFlatIP(cfg.dim), faiss.IndexFlatIP(cfg.dim)
        timed("faiss_flat_add_s", lambda: fflat.add(xb))
        quantizer.add(centroids)
        fivf = faiss.IndexIVFFlat(quantizer, cfg.dim, cfg.nlist, faiss.METRIC_INNER_PRODUCT)
        fivf.is_trained = True  # the quantizer already holds Trinity's centroids
        timed("faiss_ivf_add_s", lambda: fivf.add(xb))
        fivf.nprobe = cfg.nprobe
    with console.status("exact ground truth"):
        gt_d, gt = tflat.search(xq, cfg.k)
        f_d, f_i = fflat.search(xq, cfg.k)
    sizes, fsizes = tivf.list_sizes(), np.array([fivf.invlists.list_size(i) for i in range(cfg.nlist)])
    checks = {"ground_truth": "trinity-flat", "faiss_flat_recall_vs_truth": recall_at_k(f_i, gt),
              "faiss_flat_max_abs_score_diff": float(np.abs(f_d - gt_d).max()),
              "ivf_lists_identical_sizes": bool(np.array_equal(sizes, fsizes)),
              "ivf_list_size": {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max()),
                                "imbalance": float(fivf.invlists.imbalance_factor())}}
    systems: dict[str, SearchFn] = {
        "trinity-flat": lambda q: tflat.search(q, cfg.k), "faiss-flat": lambda q: fflat.search(q, cfg.k),
        "trinity-ivf": lambda q: tivf.search(q, cfg.k, nprobe=cfg.nprobe), "faiss-ivf": lambda q: fivf.search(q, cfg.k),
    }
    results, ratios = [], []
    for bs in cfg.batch_sizes:
        with console.status(f"timing batch size {bs}"):  # round-robin; slow flat cells are time-bounded
            batches = [xq[i:i + bs] for i in range(0, len(xq) - bs + 1, bs)]
            lat, outs = time_interleaved(systems, batches, cfg.max_seconds, MIN_BATCHES)
        found = {s: np.concatenate([o[1] for o in outs[s]]) for s in systems}
        qps = {s: len(found[s]) / sum(lat[s]) for s in systems}
        results += [{"system": s, "batch_size": bs, "queries": len(found[s]), "batches": len(lat[s]), "qps": qps[s],
                     **latency_summary_ms(lat[s]), f"recall_at_{cfg.k}": recall_at_k(found[s], gt[:len(found[s])])}
                    for s in systems]
        ratios.append({"batch_size": bs, "ivf_qps_ratio": qps["trinity-ivf"] / qps["faiss-ivf"],
                       "flat_qps_ratio": qps["trinity-flat"] / qps["faiss-flat"]})
    parts = ("vectors_used", "vectors_free_slots", "ids", "aux", "block_table")
    n, d, cb, m_ivf, m_flat = cfg.num_vectors, cfg.dim, centroids.nbytes, tivf.memory_bytes(), tflat.memory_bytes()
    # NOTE: FAISS's figures are used bytes (list sizes); std::vector capacity slack is not visible.
    memory = [_memory_row("trinity-ivf", n, d, {p: m_ivf[p] for p in parts}, cb),
              _memory_row("faiss-ivf", n, d, {"vectors_used": int(fsizes.sum()) * fivf.code_size,
                                              "ids": int(fsizes.sum()) * 8}, cb),
              _memory_row("trinity-flat", n, d, {p: m_flat[p] for p in parts}),
              _memory_row("faiss-flat", n, d, {"vectors_used": fflat.ntotal * d * 4})]
    r_at = {r["batch_size"]: r["ivf_qps_ratio"] for r in ratios}.get(VERDICT_BATCH)
    verdicts = [verdict(f"IVF QPS ratio Trinity/FAISS at batch {VERDICT_BATCH}", r_at, ">=", TARGET_IVF_QPS_RATIO),
                verdict("Trinity IVF memory / raw vector bytes", memory[0]["ratio_to_raw"], "<=", TARGET_MEMORY_RATIO)]
    payload: dict[str, Any] = {
        "benchmark": "index", "schema_version": 1, "machine": machine_info(),
        "params": {**asdict(cfg), "out": None, "threads": threads, "metric": "ip"},
        "data": {**data_info, "num_vectors": n, "num_queries": len(xq), "dim": d},
        "build_s": build, "checks": checks, "results": results, "ratios": ratios,
        "memory": memory, "verdicts": verdicts, "cuda": None}
    _print_report(payload, cfg, console)
    if cfg.cuda:
        import torch

        if torch.cuda.is_available():
            payload["cuda"] = cuda_bench(cfg, xb, xq, gt, centroids, console)
    out = write_json(cfg.out or default_out_path("index"), payload)
    console.print(f"wrote [bold]{out}[/]")
    return {**payload, "out": str(out)}


def _print_report(p: dict[str, Any], cfg: IndexBenchConfig, console: Console) -> None:
    di, c, rk = p["data"], p["checks"], f"recall_at_{cfg.k}"
    console.print(f"data: {di['source']} ({di['corpus']}), {di['num_vectors']} x {di['dim']}, {di['num_queries']} "
                  f"held-out queries; nlist={cfg.nlist} nprobe={cfg.nprobe} k={cfg.k} threads={p['params']['threads']}")
    console.print(f"ground truth = trinity-flat; faiss-flat recall vs it {c['faiss_flat_recall_vs_truth']:.4f}, "
                  f"max |dD| {c['faiss_flat_max_abs_score_diff']:.1e}; IVF lists identical: "
                  f"{c['ivf_lists_identical_sizes']}; list sizes {c['ivf_list_size']}")
    print_table(f"Index search ({di['source']} data, {di['num_vectors']} x {di['dim']})", p["results"],
                ["system", ("batch_size", "batch"), "queries", ("qps", "QPS", ",.0f"), ("p50_ms", "p50 ms", ".3f"),
                 ("p99_ms", "p99 ms", ".3f"), (rk, f"recall@{cfg.k}", ".4f")], console)
    print_table("Trinity / FAISS QPS", p["ratios"],
                [("batch_size", "batch"), ("ivf_qps_ratio", "IVF", ".2f"), ("flat_qps_ratio", "Flat", ".2f")], console)
    print_table("Memory", p["memory"],
                ["system", ("total_bytes", "total bytes", ",d"), ("bytes_per_vector", "bytes/vector", ".1f"),
                 ("raw_bytes_per_vector", "raw bytes/vector", "d"), ("ratio_to_raw", "x raw", ".3f"),
                 ("ratio_to_raw_with_centroids", "x raw (+centroids)", ".3f")], console)
    print_verdicts(p["verdicts"], console)


def cuda_bench(cfg: IndexBenchConfig, xb: np.ndarray, xq: np.ndarray, gt: np.ndarray,
               centroids: np.ndarray, console: Console) -> dict[str, Any]:
    """Trinity Flat/IVF on CUDA: QPS, latency, recall and effective GB/s scanned.

    Scanned bytes per batch: flat reads the whole database once (one GEMM per chunk for
    the batch); IVF reads each probed list once per (query, list) pair (the torch scan
    gathers blocks per pair).  Shown next to a device-to-device copy's (read + write)
    GB/s.  Needs a GPU, so the CPU test suite does not exercise it.
    """
    import torch

    from trinity.index import FlatIndex, IVFIndex

    flat, ivf = FlatIndex(cfg.dim, metric="ip", device="cuda"), IVFIndex(cfg.dim, cfg.nlist, metric="ip", device="cuda")
    flat.add(xb)
    ivf.set_centroids(centroids)
    ivf.add(xb)
    copy_gbps, sizes, rows = cuda_copy_gbps(), ivf.list_sizes(), []
    for bs in cfg.batch_sizes:
        for name, search in (("trinity-flat-cuda", lambda q: flat.search(q, cfg.k)),
                             ("trinity-ivf-cuda", lambda q: ivf.search(q, cfg.k, nprobe=cfg.nprobe))):
            search(xq[:bs])  # warm-up
            lat, found, scanned = [], [], 0
            for i in range(len(xq) // bs):
                q = xq[i * bs:(i + 1) * bs]
                scanned += len(xb) if "flat" in name else int(sizes[ivf.assign(q, cfg.nprobe)].sum())
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                found.append(search(q)[1])  # returns host arrays, so the GPU work is done
                lat.append(time.perf_counter() - t0)
            ids, gbps = np.concatenate(found), scanned * cfg.dim * 4 / sum(lat) / 1e9
            rows.append({"system": name, "batch_size": bs, "queries": len(ids), "qps": len(ids) / sum(lat),
                         **latency_summary_ms(lat), f"recall_at_{cfg.k}": recall_at_k(ids, gt[:len(ids)]),
                         "scanned_gbps": gbps, "copy_gbps": copy_gbps, "fraction_of_copy": gbps / copy_gbps})
    print_table(f"Trinity on CUDA ({torch.cuda.get_device_name(0)}; d2d copy {copy_gbps:.0f} GB/s r+w)", rows,
                ["system", ("batch_size", "batch"), ("qps", "QPS", ",.0f"), ("p50_ms", "p50 ms", ".3f"),
                 ("p99_ms", "p99 ms", ".3f"), (f"recall_at_{cfg.k}", f"recall@{cfg.k}", ".4f"),
                 ("scanned_gbps", "GB/s scanned", ".0f"), ("fraction_of_copy", "x copy", ".2f")], console)
    return {"device": torch.cuda.get_device_name(0), "copy_gbps": copy_gbps, "results": rows}
