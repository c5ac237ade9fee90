"""``trinity bench graph``: Trinity's GraphIndex vs hnswlib and faiss ``IndexHNSWFlat``.

Real embeddings (the ``bench engine --data real`` corpus), inner product.  Each system is
built once (all cores); then for every (threads, batch, itopk/ef) point the held-out
queries run in batches, the systems interleaved batch by batch so that background load
hits them alike.  Reported: recall@k vs QPS curves (table, JSON, PNG), build times, and
the issue's targets: Trinity's QPS at recall 0.95 vs hnswlib's (batch 64, 2 threads),
build time ratio, recall at itopk = L vs hnswlib at ef = L.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trinity.bench.report import (default_out_path, machine_info, make_console, print_table, print_verdicts,
                                  recall_at_k, set_threads, time_interleaved, verdict, write_json)

SYSTEMS = ("trinity", "hnswlib", "faiss-hnsw")


@dataclass(frozen=True)
class GraphBenchConfig:
    num_vectors: int = 200_000
    num_queries: int = 1000
    k: int = 10
    graph_degree: int = 40
    search_values: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256)
    batch_sizes: tuple[int, ...] = (1, 64)
    threads: tuple[int, ...] = (1, 2)
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    recall_target: float = 0.95
    data: str = "real"
    seed: int = 0
    out: Path | None = None
    plot: bool = True

    def __post_init__(self) -> None:
        if self.num_vectors < 1000:
            raise ValueError(f"num_vectors: need at least 1000, got {self.num_vectors}")
        if min(self.search_values) < 1 or min(self.batch_sizes) < 1 or min(self.threads) < 1:
            raise ValueError("search_values, batch_sizes, threads: expected positive integers")


def _builders(cfg: GraphBenchConfig, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    def trinity():
        from trinity.index import GraphIndex

        index = GraphIndex(x.shape[1], metric="ip", graph_degree=cfg.graph_degree, seed=cfg.seed)
        index.add(x)
        return index

    def hnsw():
        import hnswlib

        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.init_index(len(x), M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, random_seed=cfg.seed)
        index.set_num_threads(max(cfg.threads))
        index.add_items(x, np.arange(len(x)))
        return index

    def faiss_hnsw():
        import faiss

        index = faiss.IndexHNSWFlat(x.shape[1], cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.add(x)
        return index

    return {"trinity": trinity, "hnswlib": hnsw, "faiss-hnsw": faiss_hnsw}


def _searcher(name: str, index: Any, k: int, value: int, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    if name == "trinity":
        return lambda q: index.search(q, k, itopk=value)[1]
    if name == "hnswlib":
        index.set_ef(value)
        return lambda q: index.knn_query(q, k, num_threads=threads)[0]
    index.hnsw.efSearch = value
    return lambda q: index.search(q, k)[1]


def qps_at_recall(points: list[dict[str, Any]], target: float) -> float | None:
    """QPS where the curve crosses ``target`` recall (linear between the bracketing points)."""
    pts = sorted((p["recall"], p["qps"]) for p in points)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            return q0 if r1 == r0 else q0 + (q1 - q0) * (target - r0) / (r1 - r0)
    return pts[0][1] if pts and pts[0][0] >= target else None


def run_graph_bench(cfg: GraphBenchConfig) -> dict[str, Any]:
    from trinity.bench.engine_config import EngineBenchConfig
    from trinity.bench.engine_systems import load_bench_data
    from trinity.index import FlatIndex

    console = make_console()
    ecfg = EngineBenchConfig(num_vectors=cfg.num_vectors, num_queries=cfg.num_queries, nlist=min(1024, cfg.num_vectors),
                             data=cfg.data, seed=cfg.seed)
    data = load_bench_data(ecfg, console)
    x, q = data.vectors, data.queries
    set_threads(max(cfg.threads))
    flat = FlatIndex(x.shape[1], metric="ip")
    flat.add(x)
    truth = flat.search(q, cfg.k)[1]
    del flat
    indexes, builds = {}, []
    for name, build in _builders(cfg, x).items():
        try:
            t = time.perf_counter()
            indexes[name] = build()
        except ImportError as exc:
            console.print(f"[yellow]skipping {name}:[/] {exc} (pip install hnswlib / faiss-cpu)")
            continue
        builds.append({"system": name, "build_s": time.perf_counter() - t})
        console.print(f"built {name} in {builds[-1]['build_s']:.1f} s")
    points = []
    for threads in cfg.threads:
        set_threads(threads)
        for batch in cfg.batch_sizes:
            inputs = [q[s:s + batch] for s in range(0, len(q), batch)]
            for value in cfg.search_values:
                fns = {n: _searcher(n, ix, cfg.k, value, threads) for n, ix in indexes.items()}
                lat, outs = time_interleaved(fns, inputs)
                for n in fns:
                    found = np.concatenate(outs[n])
                    points.append({"system": n, "threads": threads, "batch": batch, "search": value,
                                   "recall": recall_at_k(found, truth[:len(found)]),
                                   "qps": len(found) / sum(lat[n])})
    set_threads(max(cfg.threads))
    summary = _summarise(cfg, points, builds)
    _print(cfg, points, builds, summary["verdicts"], console)
    payload = {"benchmark": "graph", "schema_version": 1, "machine": machine_info(), "config": asdict(cfg),
               "data": data.info, "builds": builds, "points": points, **summary}
    out = write_json(cfg.out or default_out_path("graph"), payload)
    console.print(f"wrote {out}")
    if cfg.plot:
        console.print(f"wrote {plot_curves(points, cfg, out.with_suffix('.png'))}")
    return payload


def _summarise(cfg: GraphBenchConfig, points: list[dict], builds: list[dict]) -> dict[str, Any]:
    bt, bb = max(cfg.threads), max(cfg.batch_sizes)
    curve = {s: [p for p in points if p["system"] == s and p["threads"] == bt and p["batch"] == bb] for s in SYSTEMS}
    qps = {s: qps_at_recall(c, cfg.recall_target) for s, c in curve.items() if c}
    ratio = qps["trinity"] / qps["hnswlib"] if qps.get("trinity") and qps.get("hnswlib") else None
    build = {b["system"]: b["build_s"] for b in builds}
    build_ratio = build["trinity"] / build["hnswlib"] if "hnswlib" in build else None
    by_l = {s: {p["search"]: p["recall"] for p in c} for s, c in curve.items()}
    gaps = {v: by_l["trinity"][v] - by_l["hnswlib"][v] for v in cfg.search_values if by_l.get("hnswlib")}
    worst = min(gaps.values()) if gaps else None
    verdicts = [
        verdict(f"QPS at recall {cfg.recall_target} vs hnswlib (batch {bb}, {bt} threads)", ratio, ">=", 0.8),
        verdict("build time vs hnswlib", build_ratio, "<=", 1.5),
        verdict("recall at itopk=L minus hnswlib's at ef=L (worst L)", worst, ">=", 0.0),
    ]
    return {"qps_at_recall": qps, "qps_ratio": ratio, "build_ratio": build_ratio, "recall_gap_by_l": gaps,
            "verdicts": verdicts}


def _print(cfg: GraphBenchConfig, points: list[dict], builds: list[dict], verdicts: list[dict], console) -> None:
    print_table("build", builds, ["system", ("build_s", "build s", ".1f")], console)
    rows: dict[tuple, dict[str, Any]] = {}
    for p in points:
        row = rows.setdefault((p["system"], p["search"]), {"system": p["system"], "L": p["search"]})
        row["recall"] = p["recall"]
        row[f"qps_b{p['batch']}_t{p['threads']}"] = p["qps"]
    cols = ["system", ("L", "itopk/ef"), ("recall", f"recall@{cfg.k}", ".4f")]
    cols += [(f"qps_b{b}_t{t}", f"QPS b{b} t{t}", ",.0f") for b in cfg.batch_sizes for t in cfg.threads]
    print_table("recall vs QPS", list(rows.values()), cols, console)
    print_verdicts(verdicts, console)


def plot_curves(points: list[dict], cfg: GraphBenchConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = [(b, t) for b in cfg.batch_sizes for t in cfg.threads]
    fig, axes = plt.subplots(1, len(combos), figsize=(4.5 * len(combos), 4), squeeze=False, sharey=True)
    colors = {"trinity": "tab:blue", "hnswlib": "tab:orange", "faiss-hnsw": "tab:green"}
    for ax, (b, t) in zip(axes[0], combos):
        for s in SYSTEMS:
            pts = sorted((p["recall"], p["qps"]) for p in points if p["system"] == s and p["batch"] == b
                         and p["threads"] == t)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=s, color=colors[s])
        ax.axvline(cfg.recall_target, ls=":", color="grey")
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{cfg.k}")
        ax.set_title(f"batch {b}, {t} thread{'s' if t > 1 else ''}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("queries / s")
    axes[0][0].legend()
    fig.suptitle(f"graph search, {cfg.num_vectors:,} MiniLM vectors (itopk / ef {min(cfg.search_values)}-"
                 f"{max(cfg.search_values)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
