"""Typer bodies of ``trinity serve`` and ``trinity bench pool`` (registered in trinity/cli.py).

Only typer is imported at module level so that ``trinity --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    host: str = typer.Option("127.0.0.1", help="Bind address; non-loopback requires API keys."),
    port: int = typer.Option(8077, min=0, max=65535),
    data_dir: Path | None = typer.Option(None, help="Default: $TRINITY_DATA_DIR or ~/.local/share/trinity."),
    api_key: list[str] | None = typer.Option(None, help="Repeatable; adds to TRINITY_API_KEYS (comma separated)."),
    max_inflight: int = typer.Option(1024, min=1, help="Searches in flight at the HTTP layer before 429."),
    max_queue: int = typer.Option(20_000, min=1, help="Engine admission queue bound (429 beyond it)."),
    default_deadline_ms: str = typer.Option("", help="Server-side deadline of requests sent without one, e.g. "
                                                     "decode=100,prefill=1000,background=10000."),
    body_timeout_s: float = typer.Option(10.0, min=0.01, help="Time to receive a request body (408 beyond it)."),
    admission_share: float = typer.Option(0.25, min=0.01, help="Refuse a stage's requests (429) while its recent "
                                                              "answers take more than this share of their deadline."),
    snapshot_every: int = typer.Option(10_000, min=1, help="WAL records per collection between snapshots."),
    cache_sweep_s: float = typer.Option(1.0, min=0.01, help="TTL sweep period of the semantic caches."),
    embed_device: str | None = typer.Option(None, help="torch device of the text embedder (default: auto)."),
    switch_interval_ms: float = typer.Option(0.5, min=0.0, help="sys.setswitchinterval in ms (0 = Python's 5 ms)."),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
) -> None:
    """Run the vector pool server (HTTP API: see docs/api.md; OpenAPI at /openapi.json)."""
    from trinity.serving.config import ServerConfig, default_data_dir, keys_from_env, parse_stage_deadlines
    from trinity.serving.server import run

    try:
        config = ServerConfig(host=host, port=port, data_dir=data_dir or default_data_dir(),
                              api_keys=keys_from_env() | frozenset(api_key or ()), max_inflight=max_inflight,
                              max_queue=max_queue, snapshot_every=snapshot_every, cache_sweep_s=cache_sweep_s,
                              default_deadline_ms=parse_stage_deadlines(default_deadline_ms),
                              body_timeout_s=body_timeout_s, admission_share=admission_share,
                              embed_device=embed_device, log_level=log_level,
                              switch_interval_ms=switch_interval_ms or None)
        config.check_bind()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run(config)


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
    from trinity.serving.bench_pool import PoolBenchConfig, run_pool_bench

    try:
        levels = tuple(int(c) for c in clients.split(",") if c.strip())
        cfg = PoolBenchConfig(num_vectors=num_vectors, dim=dim, nlist=nlist, nprobe=nprobe, k=k, clients=levels,
                              duration_s=duration, overhead_queries=overhead_queries, data=data, seed=seed, out=out,
                              server_args=tuple(server_arg or ()))
        cfg.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_pool_bench(cfg)
