"""The ``trinity`` command line.

Kept thin: each command parses its options and calls into a library module, importing
it lazily so that ``trinity --help`` stays fast.  Groups are sub-apps (``trinity bench
...``); new top-level commands and groups register on :data:`app` the same way.
"""

from __future__ import annotations

from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from trinity.flags import LazyCommand

_SERVE_HELP = "Run the vector pool server (HTTP API: see docs/api.md; OpenAPI at /openapi.json)."


def _serve_command() -> click.Command:
    from trinity.pool.cli import serve_command  # NOTE: lazy: its flags come from SchedulerConfig (imports torch)

    return serve_command()


class _Commands(TyperGroup):
    """The root group; ``serve`` is built on first use so that ``trinity --help`` stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), "serve"]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "serve":
            return LazyCommand("serve", _SERVE_HELP, _serve_command)
        return super().get_command(ctx, name)


app = typer.Typer(
    cls=_Commands,
    name="trinity",
    help="Trinity: one shared, continuously batched vector-search pool for PD-disaggregated LLM serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # NOTE: click's plain help wraps long option names; rich's table cuts them at 80 columns
    context_settings={"max_content_width": 100},
)

bench_app = typer.Typer(help="Benchmarks (results go to benchmarks/results/ as JSON).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _parse_int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected positive integers, got {text!r}", param_hint=option)
    return values


@bench_app.command("index")
def bench_index(
    num_vectors: int = typer.Option(200_000, "--num-vectors", "-n", min=1, help="Vectors in the index."),
    dim: int = typer.Option(384, min=1, help="Vector dimension (fixed by the data: 384 for real)."),
    nlist: int = typer.Option(1024, min=1, help="IVF lists."),
    nprobe: int = typer.Option(32, min=1, help="IVF lists probed per query (same for Trinity and FAISS)."),
    batch_sizes: str = typer.Option("1,16,64,256", "--batch-sizes", help="Comma-separated query batch sizes."),
    k: int = typer.Option(10, min=1, help="Results per query (recall@k)."),
    num_queries: int = typer.Option(1024, min=1, help="Held-out queries (beyond the indexed vectors)."),
    data: str = typer.Option("real", help="real: embedded docstring corpus; synthetic: clustered Gaussian."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/index-<host>-<date>.json]."),
    threads: int | None = typer.Option(None, min=1, help="Threads for torch, numba and FAISS [default: all cores]."),
    max_seconds: float = typer.Option(10.0, min=0.0, help="Timing budget per (system, batch size); bounds flat."),
    faiss_blas_threshold: int = typer.Option(16, min=1, help="faiss.cvar.distance_compute_blas_threshold."),
    seed: int = typer.Option(0, help="Seed for k-means and synthetic data."),
    cuda: bool = typer.Option(True, help="Also run Trinity on CUDA when available."),
) -> None:
    """Trinity Flat/IVF vs FAISS Flat/IVFFlat (same centroids): QPS, latency, recall, memory."""
    from trinity.bench.index_bench import IndexBenchConfig, run_index_bench

    cfg = IndexBenchConfig(num_vectors=num_vectors, dim=dim, nlist=nlist, nprobe=nprobe,
                           batch_sizes=_parse_int_list(batch_sizes, "--batch-sizes"), k=k, num_queries=num_queries,
                           data=data, out=out, threads=threads, max_seconds=max_seconds,
                           faiss_blas_threshold=faiss_blas_threshold, seed=seed, cuda=cuda)
    try:
        cfg.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_index_bench(cfg)


# Options shared by the engine-level benches (same collection, same defaults).
_NUM_VECTORS = typer.Option(200_000, "--num-vectors", "-n", min=1, help="Vectors in the collection.")
_NLIST = typer.Option(1024, min=1, help="IVF lists.")
_NUM_QUERIES = typer.Option(1000, min=1, help="Held-out query pool (passages not in the index).")


@bench_app.command("engine")
def bench_engine(
    num_vectors: int = _NUM_VECTORS,
    nlist: int = _NLIST,
    num_queries: int = _NUM_QUERIES,
    rates: str = typer.Option("500,1000,1500,2000,2500,3000,3500,4000", help="Comma-separated offered rates (req/s)."),
    duration: float = typer.Option(3.0, min=0.05, help="Seconds of Poisson arrivals per (rate, system)."),
    repeats: int = typer.Option(1, min=1, help="Runs per (rate, system), interleaved; rows and verdicts use "
                                              "the median."),
    systems: str = typer.Option("static,trinity-fifo,trinity", help="Comma-separated subset of the systems."),
    request_class: list[str] | None = typer.Option(
        None, "--class", help="Replace the default mix; repeatable NAME:STAGE:K:NPROBE:DEADLINE_MS:WEIGHT "
                              "(e.g. rag:prefill:32:128:150:0.3)."),
    ttft_slo_ms: float = typer.Option(500.0, min=1.0, help="TTFT SLO; the default RAG deadline is --rag-share of it."),
    rag_share: float = typer.Option(0.3, min=0.01, max=1.0, help="Share of the TTFT SLO retrieval may use."),
    max_batch: int = typer.Option(64, min=1, help="Static batcher: dispatch a (k, nprobe) group at this size."),
    max_wait_ms: float = typer.Option(2.0, min=0.0, help="Static batcher: ... or when its oldest request waited this."),
    target_iteration_ms: float = typer.Option(4.0, min=0.1, help="Trinity: target iteration duration."),
    max_num_running: int | None = typer.Option(None, min=1, help="Trinity: requests holding runner state "
                                               "(default: SchedulerConfig's, 64)."),
    drain_cap: float = typer.Option(10.0, min=0.1, help="Seconds to wait for outstanding results after a stream."),
    data: str = typer.Option("real", help="real: embedded docstring corpus; synthetic: clustered random (tests)."),
    embed_missing: bool = typer.Option(False, help="Embed passages missing from the cache instead of shrinking."),
    cache_index: bool = typer.Option(True, help="Cache the trained+filled IVF index on disk."),
    threads: int | None = typer.Option(None, min=1, help="Threads for torch, numba and FAISS [default: all cores]."),
    faiss_blas_threshold: int = typer.Option(16, min=1, help="faiss.cvar.distance_compute_blas_threshold."),
    switch_interval_ms: float | None = typer.Option(None, min=0.01, help="sys.setswitchinterval during runs."),
    seed: int = typer.Option(0, help="Seed for the workload, k-means and synthetic data."),
    device: str = typer.Option("cpu", help="Where the collection lives: cpu or cuda[:n]."),
    dtype: str | None = typer.Option(None, help="Storage dtype of the collection (e.g. float16 on a GPU)."),
    peer: str = typer.Option("auto", help="Static batcher's index: faiss (CPU), torch (gather + bmm + topk); "
                                          "auto: faiss on cpu, torch on cuda."),
    index: str = typer.Option("ivf", help="The collection: ivf, or graph (GraphIndex: a class's NPROBE is its itopk; "
                                          "the static batcher runs GraphIndex.search)."),
    graph_degree: int = typer.Option(40, min=2, help="GraphIndex out-degree (--index graph)."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/engine-<host>-<date>.json]."),
    plot: bool = typer.Option(True, help="Write a PNG plot next to the JSON."),
) -> None:
    """Trinity (stage-aware, FIFO) vs static batching (faiss on CPU, torch on GPU): open-loop mixed-stage stream."""
    from trinity.bench.engine_bench import EngineBenchConfig, parse_float_list, run_engine_bench
    from trinity.bench.workload import default_classes, parse_class

    try:
        classes = (tuple(parse_class(s) for s in request_class) if request_class
                   else default_classes(ttft_slo_ms=ttft_slo_ms, rag_share=rag_share))
        cfg = EngineBenchConfig(
            num_vectors=num_vectors, nlist=nlist, num_queries=num_queries, rates=parse_float_list(rates),
            duration_s=duration, repeats=repeats, systems=tuple(s.strip() for s in systems.split(",") if s.strip()),
            classes=classes,
            max_batch=max_batch, max_wait_ms=max_wait_ms, target_iteration_ms=target_iteration_ms,
            drain_cap_s=drain_cap, data=data, embed_missing=embed_missing, cache_index=cache_index, threads=threads,
            blas_threshold=faiss_blas_threshold, switch_interval_ms=switch_interval_ms, seed=seed, out=out, plot=plot,
            device=device, dtype=dtype, peer=peer, index=index, graph_degree=graph_degree,
            scheduler_kwargs={} if max_num_running is None else {"max_num_running": max_num_running})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_engine_bench(cfg)


@bench_app.command("faults")
def bench_faults(
    quick: bool = typer.Option(False, help="The short version (what CI runs): fewer cycles, shorter streams."),
    only: str = typer.Option("", help="Comma-separated scenario names (default: all)."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/faults-<host>-<date>.json]."),
) -> None:
    """Reliability suite: kill -9 under writers, full disk, torn WAL, fsync EIO, overload, stalled LLM legs."""
    from trinity.bench.faults import FaultsConfig, run_faults

    try:
        payload = run_faults(FaultsConfig(quick=quick, only=tuple(s.strip() for s in only.split(",") if s.strip()),
                                          out=out))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(1 if payload["failed"] else 0)


@bench_app.command("ray")
def bench_ray(
    num_vectors: int = typer.Option(50_000, "--num-vectors", "-n", min=1, help="Vectors (synthetic, flat index)."),
    dim: int = typer.Option(128, min=1),
    k: int = typer.Option(10, min=1, max=1024),
    replicas: str = typer.Option("1,2", help="Comma-separated replica counts (1..N on the hardware at hand)."),
    clients: int = typer.Option(32, min=1, help="Closed-loop clients per system."),
    duration: float = typer.Option(5.0, min=0.5, help="Seconds of load per system."),
    cpus_per_replica: float = typer.Option(1.0, min=0.0, help="Ray CPUs reserved per replica."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/ray-<host>-<date>.json]."),
) -> None:
    """The pool on Ray Serve (1..N replicas, replicated and sharded) against the single-process pool."""
    from trinity.pool.ray import require_ray

    try:
        require_ray()
    except RuntimeError as exc:  # NOTE: one line naming the extra
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from trinity.bench.ray_bench import RayBenchConfig, run_ray_bench

    run_ray_bench(RayBenchConfig(num_vectors=num_vectors, dim=dim, k=k, clients=clients, duration_s=duration,
                                 replicas=_parse_int_list(replicas, "--replicas"), cpus_per_replica=cpus_per_replica,
                                 out=out))


@bench_app.command("overhead")
def bench_overhead(
    num_vectors: int = _NUM_VECTORS,
    nlist: int = _NLIST,
    num_queries: int = _NUM_QUERIES,
    rates: str = typer.Option("1000,1500,2000", help="Comma-separated offered rates (req/s)."),
    duration: float = typer.Option(2.0, min=0.05, help="Seconds of (modelled) Poisson arrivals per rate."),
    repeats: int = typer.Option(3, min=1, help="Replays per rate; timings are medians, plans must match."),
    fixed_ms: float = typer.Option(3.0, min=0.0, help="Modelled clock: fixed cost of an iteration."),
    scan_rate: float = typer.Option(30e6, min=1.0, help="Modelled clock: (query, vector) pairs per second."),
    target_iteration_ms: float = typer.Option(4.0, min=0.1, help="Trinity: target iteration duration."),
    data: str = typer.Option("real", help="real: embedded docstring corpus; synthetic: clustered random (tests)."),
    threads: int | None = typer.Option(None, min=1, help="Threads for torch and numba [default: all cores]."),
    seed: int = typer.Option(0, help="Seed for the workload, k-means and synthetic data."),
    contend: bool = typer.Option(False, help="Run a busy Python thread beside the loop (GIL and core contention)."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/overhead-<host>-<date>.json]."),
) -> None:
    """Engine host (Python) time per iteration, replayed on a modelled clock: same plans, kernels apart."""
    from trinity.bench.engine_bench import EngineBenchConfig, parse_float_list
    from trinity.bench.overhead_bench import ClockModel, run_overhead_bench

    try:
        cfg = EngineBenchConfig(num_vectors=num_vectors, nlist=nlist, num_queries=num_queries,
                                rates=parse_float_list(rates), duration_s=duration, repeats=repeats,
                                target_iteration_ms=target_iteration_ms, data=data, threads=threads, seed=seed,
                                out=out, plot=False)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_overhead_bench(cfg, ClockModel(fixed_s=fixed_ms / 1e3, pairs_per_s=scan_rate), contend=contend)


@bench_app.command("graph")
def bench_graph(
    num_vectors: int = typer.Option(200_000, "--num-vectors", "-n", min=1000, help="Vectors in the index."),
    num_queries: int = typer.Option(1000, min=1, help="Held-out queries (beyond the indexed vectors)."),
    k: int = typer.Option(10, min=1, help="Results per query (recall@k)."),
    graph_degree: int = typer.Option(40, min=2, help="Trinity's graph out-degree."),
    search_values: str = typer.Option("16,24,32,48,64,96,128,192,256", help="Comma-separated itopk / ef values."),
    batch_sizes: str = typer.Option("1,64", "--batch-sizes", help="Comma-separated query batch sizes."),
    threads: str = typer.Option("1,2", help="Comma-separated thread counts."),
    data: str = typer.Option("real", help="real: embedded docstring corpus; synthetic: clustered random (tests)."),
    seed: int = typer.Option(0, help="Seed for k-means, hnswlib and synthetic data."),
    plot: bool = typer.Option(True, help="Write a recall-vs-QPS PNG next to the JSON."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/graph-<host>-<date>.json]."),
) -> None:
    """Trinity GraphIndex vs hnswlib and faiss IndexHNSWFlat: recall@k vs QPS, build time."""
    from trinity.bench.graph_bench import GraphBenchConfig, run_graph_bench

    try:
        cfg = GraphBenchConfig(num_vectors=num_vectors, num_queries=num_queries, k=k, graph_degree=graph_degree,
                               search_values=_parse_int_list(search_values, "--search-values"),
                               batch_sizes=_parse_int_list(batch_sizes, "--batch-sizes"),
                               threads=_parse_int_list(threads, "--threads"), data=data, seed=seed, plot=plot, out=out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_graph_bench(cfg)


@bench_app.command("graph-engine")
def bench_graph_engine(
    num_vectors: int = typer.Option(200_000, "--num-vectors", "-n", min=1000, help="Vectors in the index."),
    num_queries: int = typer.Option(1000, min=1, help="Held-out queries (beyond the indexed vectors)."),
    itopk: str = typer.Option("32,64,128", help="Comma-separated itopk values."),
    batch: int = typer.Option(64, min=1, help="Queries in flight (closed loop)."),
    repeats: int = typer.Option(3, min=1, help="Interleaved passes over the queries; times are medians."),
    graph_degree: int = typer.Option(40, min=2, help="Graph out-degree."),
    data: str = typer.Option("real", help="real: embedded docstring corpus; synthetic: clustered random (tests)."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/graph-engine-<host>-<date>.json]."),
) -> None:
    """Graph queries through the engine vs one-shot GraphIndex.search at the same concurrency."""
    from trinity.bench.graph_engine_bench import GraphEngineBenchConfig, run_graph_engine_bench

    try:
        cfg = GraphEngineBenchConfig(num_vectors=num_vectors, num_queries=num_queries,
                                     itopk=_parse_int_list(itopk, "--itopk"), batch=batch, repeats=repeats,
                                     graph_degree=graph_degree, data=data, out=out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_graph_engine_bench(cfg)


@bench_app.command("serve")
def bench_serve(
    goodput_extra: list[str] | None = typer.Argument(None, hidden=True, help="vLLM style: --goodput ttft:MS tpot:MS"),
    base_url: str = typer.Option("http://127.0.0.1:8000", help="Gateway (or any OpenAI-compatible server)."),
    endpoint: str = typer.Option("completions", help="completions | chat"),
    model: str | None = typer.Option(None, help="Model name (default: the first of /v1/models)."),
    rate: float = typer.Option(float("inf"), "--rate", "--request-rate", help="Requests/s (inf: all at once)."),
    num_prompts: int = typer.Option(200, min=1, help="Requests to send."),
    burstiness: float = typer.Option(1.0, help="Gamma shape of arrivals (1 = Poisson)."),
    max_concurrency: int | None = typer.Option(None, min=1, help="Cap on requests in flight."),
    output_len: int = typer.Option(64, min=1, help="max_tokens per request."),
    goodput: list[str] | None = typer.Option(None, help="SLOs, e.g. --goodput ttft:500 tpot:50 (ms)."),
    mix: str | None = typer.Option(None, help="Classes plain,rag,rag_decode,repeat with weights, e.g. "
                                             "rag:0.5,repeat:0.2,plain:0.3 [default: plain, or a RAG mix with "
                                             "--collection]."),
    collection: str | None = typer.Option(None, help="Collection for the rag classes."),
    k: int = typer.Option(4, min=1, help="Passages per retrieval."),
    retrieval_interval: int = typer.Option(16, min=1, help="rag_decode: tokens between decode-stage retrievals."),
    slo_headers: bool = typer.Option(True, help="Send the goodput SLOs as x-slo-ttft-ms / x-slo-tpot-ms."),
    seed: int = typer.Option(0, help="Prompt sampling and arrivals."),
    out: Path | None = typer.Option(None, help="JSON output [default: benchmarks/results/serve-<host>-<date>.json]; "
                                         "the PNG goes next to it."),
    answer_cache: bool = typer.Option(True, help="--no-answer-cache: ask the gateway not to use its answer cache "
                                                 "(reruns then measure the same thing)."),
    percentile_metrics: str = typer.Option("ttft,tpot,itl,e2el", help="Metrics to report percentiles for."),
    metric_percentiles: str = typer.Option("99", help="Percentiles to report, e.g. 50,90,99."),
    label: str | None = typer.Option(None, help="Label stored in the result [default: the backend]."),
    plot: bool = typer.Option(True, help="Write a PNG next to the JSON."),
) -> None:
    """Load-generate against the gateway: vllm bench serve metrics + retrieval per stage + cache hit rate."""
    from trinity.bench.serve_bench import bench_serve as run

    try:
        run(goodput_extra, base_url=base_url, endpoint=endpoint, model=model, rate=rate, num_prompts=num_prompts,
            burstiness=burstiness, max_concurrency=max_concurrency, output_len=output_len, goodput=goodput, mix=mix,
            collection=collection, k=k, retrieval_interval=retrieval_interval, slo_headers=slo_headers, seed=seed,
            out=out, answer_cache=answer_cache, percentile_metrics=percentile_metrics,
            metric_percentiles=metric_percentiles, label=label, plot=plot)
    except ValueError as exc:  # NOTE: bad options and unreachable servers: one line, no traceback
        typer.echo(f"trinity bench serve: error: {exc}", err=True)
        raise typer.Exit(2) from None


# -- the pool, the gateway, the emulated engines, the local stack (command bodies live next to their code)
from trinity.bench.pool_cli import bench_pool as _bench_pool  # noqa: E402 - typer-only imports, cheap
from trinity.emulator.cli import emulate as _emulate  # noqa: E402
from trinity.gateway.cli import gateway as _gateway  # noqa: E402
from trinity.stack.demo import demo as _demo  # noqa: E402
from trinity.stack.demo import up as _up
from trinity.sim.cli import calibrate as _calibrate  # noqa: E402
from trinity.sim.cli import sim_app as _sim_app  # noqa: E402

app.command("emulate")(_emulate)
app.command("gateway")(_gateway)
app.command("up")(_up)
app.command("demo")(_demo)
bench_app.command("pool")(_bench_pool)
bench_app.command("calibrate")(_calibrate)
app.add_typer(_sim_app, name="sim")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
