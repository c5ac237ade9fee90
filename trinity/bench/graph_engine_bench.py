"""``trinity bench graph-engine``: graph queries through the engine vs one-shot ``GraphIndex.search``.

The same queries, itopk and hop limit, at the same concurrency: a closed loop with
``batch`` queries in flight.  One-shot: ``search`` on the batch; engine: the batch submitted
at once (background stage, no deadline) and waited for.  The two run on one index,
interleaved batch by batch; the engine's overhead is the ratio of their summed times
(issue 24: at most 1.15), and its answers must equal the one-shot ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trinity.bench.report import (default_out_path, machine_info, make_console, print_table, print_verdicts,
                                  set_threads, time_interleaved, verdict, write_json)


@dataclass(frozen=True)
class GraphEngineBenchConfig:
    num_vectors: int = 200_000
    num_queries: int = 1000
    k: int = 10
    itopk: tuple[int, ...] = (32, 64, 128)
    batch: int = 64
    repeats: int = 3
    graph_degree: int = 40
    data: str = "real"
    seed: int = 0
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.batch < 1 or self.repeats < 1 or self.k < 1 or not self.itopk or min(self.itopk) < 1:
            raise ValueError("batch, repeats, k, itopk: expected positive integers")


def run_graph_engine_bench(cfg: GraphEngineBenchConfig) -> dict[str, Any]:
    from trinity.bench.engine_config import EngineBenchConfig
    from trinity.bench.engine_systems import build_or_load_index, load_bench_data
    from trinity.engine import Collections, SchedulerConfig, SearchEngine
    from trinity.engine.graph_rows import graph_itopk, hop_limit

    console = make_console()
    ecfg = EngineBenchConfig(num_vectors=cfg.num_vectors, num_queries=cfg.num_queries, data=cfg.data, seed=cfg.seed,
                             nlist=min(1024, cfg.num_vectors), index="graph", graph_degree=cfg.graph_degree)
    data = load_bench_data(ecfg, console)
    threads = set_threads(None)
    index, info = build_or_load_index(data, ecfg, console)
    collections = Collections()
    collections.add("g", index)
    engine = SearchEngine(SchedulerConfig(), collections=collections)
    q = data.queries
    inputs = [q[s:s + cfg.batch] for s in range(0, len(q), cfg.batch)]
    rows = []
    try:
        for itopk in cfg.itopk:
            itopk = graph_itopk(itopk, cfg.k)
            hops = int(hop_limit(itopk))

            def one_shot(x, itopk=itopk, hops=hops):
                return index.search(x, cfg.k, itopk=itopk, max_hops=hops)[1]

            def through_engine(x, itopk=itopk):
                futs = [engine.submit("g", v, cfg.k, nprobe=itopk, stage="background", deadline_ms=600_000.0)
                        for v in x]
                return np.stack([f.result(timeout=60).ids for f in futs])

            times: dict[str, list[float]] = {"one-shot": [], "engine": []}
            for _ in range(cfg.repeats):
                lat, outs = time_interleaved({"one-shot": one_shot, "engine": through_engine}, inputs)
                for name in times:
                    times[name].append(sum(lat[name]))
            agree = float((np.concatenate(outs["one-shot"]) == np.concatenate(outs["engine"])).all(axis=1).mean())
            t_one, t_eng = float(np.median(times["one-shot"])), float(np.median(times["engine"]))
            rows.append({"itopk": itopk, "max_hops": hops, "one_shot_qps": len(q) / t_one,
                         "engine_qps": len(q) / t_eng, "engine_over_one_shot": t_eng / t_one, "agree": agree,
                         "one_shot_s": times["one-shot"], "engine_s": times["engine"]})
            console.print(f"  itopk {itopk:4d}: one-shot {len(q) / t_one:8.0f} q/s, engine {len(q) / t_eng:8.0f} q/s, "
                          f"ratio {t_eng / t_one:.2f}, answers agree {agree:.3f}", highlight=False)
    finally:
        engine.shutdown()
    print_table(f"Graph queries through the engine vs one-shot search ({cfg.batch} in flight, "
                f"{threads} threads, median of {cfg.repeats})", rows,
                [("itopk", "itopk", "d"), ("max_hops", "hop limit", "d"), ("one_shot_qps", "one-shot q/s", ".0f"),
                 ("engine_qps", "engine q/s", ".0f"), ("engine_over_one_shot", "time ratio", ".2f"),
                 ("agree", "agree", ".3f")], console)
    worst = max(r["engine_over_one_shot"] for r in rows)
    verdicts = [verdict("engine time / one-shot time (worst itopk)", worst, "<=", 1.15),
                verdict("answers equal to one-shot search (worst itopk)", min(r["agree"] for r in rows), ">=", 1.0)]
    print_verdicts(verdicts, console)
    payload = {"benchmark": "graph-engine", "schema_version": 1, "machine": machine_info(), "config": asdict(cfg),
               "data": data.info, "index": info, "threads": threads, "rows": rows, "verdicts": verdicts}
    out = write_json(cfg.out or default_out_path("graph-engine"), payload)
    console.print(f"wrote {out}")
    return payload
