"""``trinity bench pool`` (registered by :mod:`trinity.cli`); only typer at import time."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["bench_pool"]


def bench_pool(
    num_vectors: int = typer.Option(200_000, "--num-vectors", "-n", min=1, help="Vectors loaded into the server."),
    dim: int = typer.Option(384, min=1),
    nlist: int = typer.Option(1024, min=1),
    nprobe: int = typer.Option(32, min=1),
    k: int = typer.Option(10, min=1, max=1024),
    clients: str = typer.Option("1,8,32,64", help="Comma-separated concurrency levels."),
    duration: float = typer.Option(5.0, min=0.5, help="Seconds per concurrency level."),
    overhead_queries: int = typer.Option(500, min=10, help="Sequential queries for the HTTP-overhead phase."),
    data: str = typer.Option("auto", help="auto: cached real corpus if it holds num_vectors, else synthetic."),
    seed: int = typer.Option(0),
    server_arg: list[str] | None = typer.Option(None, help="Extra flag for the server (repeatable), "
                                                             "e.g. --server-arg=--switch-interval-ms=5."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/pool-<host>-<date>.json]."),
) -> None:
    """Pool server over HTTP: QPS and per-stage p50/p99, HTTP overhead, RSS vs vector bytes."""
    from trinity.bench.pool_bench import PoolBenchConfig, run_pool_bench  # NOTE: lazy: numpy, torch

    try:
        levels = tuple(int(c) for c in clients.split(",") if c.strip())
        cfg = PoolBenchConfig(num_vectors=num_vectors, dim=dim, nlist=nlist, nprobe=nprobe, k=k, clients=levels,
                              duration_s=duration, overhead_queries=overhead_queries, data=data, seed=seed, out=out,
                              server_args=tuple(server_arg or ()))
        cfg.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_pool_bench(cfg)
