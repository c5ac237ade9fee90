"""``trinity bench ray``: the pool on Ray Serve against the single-process pool, over HTTP.

Same vectors, queries and load for every system: the single-process pool (``trinity serve``),
then the pool deployed on a local Ray cluster with 1..N replicas (a replicated collection; a
sharded one too from 2 replicas).  Per system: sequential latency at one client (what Ray adds
per request: the proxy, the router and one more hop), then closed-loop throughput with a
50/30/20 decode/prefill/background mix and per-stage p50/p99.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from trinity.bench.pool_bench import _COLLECTION, STAGES, _closed_loop, _sequential, make_queries
from trinity.bench.report import default_out_path, latency_summary_ms, machine_info, make_console, print_table, write_json
from trinity.stack.process import ServerProcess, free_port

__all__ = ["RayBenchConfig", "run_ray_bench"]


@dataclass(frozen=True)
class RayBenchConfig:
    num_vectors: int = 50_000
    dim: int = 128
    k: int = 10
    replicas: tuple[int, ...] = (1, 2)
    clients: int = 32
    duration_s: float = 5.0
    sequential_queries: int = 300
    cpus_per_replica: float = 1.0
    seed: int = 0
    out: Path | None = None


def _load(url: str, x: np.ndarray, placement: str | None, batch: int = 5000) -> None:
    import httpx

    create: dict[str, Any] = {"name": _COLLECTION, "dim": x.shape[1], "metric": "cosine"}
    if placement is not None:
        create["placement"] = placement
    with httpx.Client(base_url=url, timeout=600) as c:
        c.post("/v1/collections", json=create).raise_for_status()
        for s in range(0, len(x), batch):
            part = np.ascontiguousarray(x[s:s + batch], dtype="<f4")
            c.put(f"/v1/collections/{_COLLECTION}/vectors", json={
                "ids": list(range(s, s + len(part))), "vectors_b64": base64.b64encode(part.tobytes()).decode()},
            ).raise_for_status()


def _measure(port: int, queries: np.ndarray, cfg: RayBenchConfig) -> dict[str, Any]:
    def body(q: np.ndarray, stage: str) -> bytes:
        return json.dumps({"vector": [round(float(v), 6) for v in q], "k": cfg.k, "stage": stage,
                           "with_payloads": False}).encode()

    target = SimpleNamespace(port=port)
    seq = asyncio.run(_sequential(target, [body(q, "decode") for q in queries[:cfg.sequential_queries]]))
    bodies = {s: [body(q, s) for q in queries[:256]] for s, _ in STAGES}
    row = asyncio.run(_closed_loop(target, bodies, cfg.clients, cfg.duration_s, cfg.seed))
    one = latency_summary_ms(seq)
    return {**row, "seq_p50_ms": one["p50_ms"], "seq_p99_ms": one["p99_ms"]}


def _single(x: np.ndarray, queries: np.ndarray, cfg: RayBenchConfig, tmp: Path) -> dict[str, Any]:
    server = ServerProcess(tmp / "single", log_path=tmp / "single.log").start()
    try:
        _load(server.url, x, None)
        return {"system": "single process", "placement": "-", "replicas": 1, **_measure(server.port, queries, cfg)}
    finally:
        server.stop()


def _on_ray(x: np.ndarray, queries: np.ndarray, cfg: RayBenchConfig, tmp: Path) -> list[dict[str, Any]]:
    import ray

    from trinity.pool.config import PoolConfig
    from trinity.pool.ray import deploy, undeploy
    from trinity.pool.ray.config import RayConfig

    rows = []
    port = free_port()
    ray.init(num_cpus=max(1, int(np.ceil(max(cfg.replicas) * cfg.cpus_per_replica))), include_dashboard=False,
             log_to_driver=False)
    try:
        for n in cfg.replicas:
            for placement in ("replicated", "sharded") if n > 1 else ("replicated",):
                ray_cfg = RayConfig(num_replicas=n, num_cpus_per_replica=cfg.cpus_per_replica, placement=placement)
                pool = PoolConfig(data_dir=tmp / f"ray-{n}-{placement}", port=port, log_level="warning")
                t0 = time.perf_counter()
                url = deploy(pool, ray_cfg)
                up_s = time.perf_counter() - t0
                try:
                    _load(url, x, placement)
                    rows.append({"system": "ray serve", "placement": placement, "replicas": n, "deploy_s": up_s,
                                 **_measure(port, queries, cfg)})
                finally:
                    undeploy(ray_cfg)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return rows


def run_ray_bench(cfg: RayBenchConfig) -> dict[str, Any]:
    console = make_console()
    rng = np.random.default_rng(cfg.seed)
    x = rng.standard_normal((cfg.num_vectors, cfg.dim)).astype(np.float32)
    queries = make_queries(x, max(cfg.sequential_queries, 256), cfg.seed)
    with tempfile.TemporaryDirectory(prefix="trinity-bench-ray-") as tmp:
        rows = [_single(x, queries, cfg, Path(tmp))] + _on_ray(x, queries, cfg, Path(tmp))
    base = rows[0]
    ray1 = next(r for r in rows if r["system"] == "ray serve" and r["replicas"] == 1)
    added = {"p50_ms": ray1["seq_p50_ms"] - base["seq_p50_ms"], "p99_ms": ray1["seq_p99_ms"] - base["seq_p99_ms"]}
    payload = {"bench": "ray", "config": {**asdict(cfg), "out": str(cfg.out)}, "machine": machine_info(),
               "rows": rows, "ray_added_latency": added}
    cols = [("system", "system"), ("placement", "placement"), ("replicas", "replicas"), ("qps", "QPS", ".0f")]
    cols += [(f"{s}_p{p}_ms", f"{s[:3]} p{p}", ".1f") for s, _ in STAGES for p in (50, 99)]
    cols += [("seq_p50_ms", "1-client p50", ".2f"), ("seq_p99_ms", "1-client p99", ".2f")]
    print_table(f"Ray Serve vs single process: {cfg.num_vectors} x {cfg.dim} flat, k {cfg.k}, "
                f"{cfg.clients} clients x {cfg.duration_s:g} s (ms)", rows, cols, console)
    console.print(f"latency Ray adds per request (1 client, 1 replica vs single process): "
                  f"p50 {added['p50_ms']:+.2f} ms, p99 {added['p99_ms']:+.2f} ms")
    out = write_json(cfg.out or default_out_path("ray"), payload)
    console.print(f"wrote {out}")
    return payload
