"""Run the pool server: ``trinity serve`` or ``python -m trinity.serving.server``.

``trinity serve`` with no flags listens on 127.0.0.1:8077 with data in
``$TRINITY_DATA_DIR`` or ``~/.local/share/trinity``.  API keys come from
``TRINITY_API_KEYS`` (comma separated) or ``--api-key``; without keys only loopback
addresses are accepted.  SIGTERM / SIGINT shut down gracefully: in-flight requests
finish, every collection is snapshotted and its WAL trimmed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from trinity.serving.config import ServerConfig, default_data_dir, keys_from_env, parse_stage_deadlines
from trinity.serving.memory import skip_unused_triton, tune_malloc

log = logging.getLogger("trinity.serving")


def quiet_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spin (call before torch is imported).

    NOTE: torch's GEMMs and numba's ``omp`` threading layer bring two OpenMP runtimes;
    with the default spin-wait each one's idle workers burn the cores the other needs.
    Measured on 2 cores: one 200k x 384 flat search through the engine 246 ms -> 22 ms,
    a 100-vector search 27 ms -> 0.3 ms.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run(config: ServerConfig) -> None:
    """Validate the bind address against the auth setup, then serve until signalled."""
    quiet_openmp()
    tune_malloc()
    skip_unused_triton()
    if config.switch_interval_ms is not None:
        # NOTE: the event loop and the engine loop are both Python threads; the engine drops
        # the GIL around every kernel and must get it back to continue.  With the default
        # 5 ms switch interval a busy event loop keeps it up to 5 ms each time (a convoy),
        # so under concurrent load iterations stretch and throughput falls.
        sys.setswitchinterval(config.switch_interval_ms / 1e3)
    import uvicorn

    from trinity.serving.app import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.check_bind()
    if not config.auth_enabled:
        log.warning("no API keys configured (TRINITY_API_KEYS): authentication is off, so the server only "
                    "binds loopback (%s)", config.host)
    app = create_app(config)
    # NOTE: no access log (it costs more than the request on the hot path; /metrics has
    # per-route counts and latencies); the graceful timeout bounds the shutdown snapshot wait.
    # uvicorn picks httptools and uvloop when installed (both are dependencies): against h11
    # and asyncio they cut what HTTP adds to a search from 1.4-1.7 ms to 0.5-1.0 ms p50
    # (1 client, 2-core VM) and raised 1-client QPS ~45%, for ~2 MiB of RSS.
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
                        timeout_graceful_shutdown=30, lifespan="on", backlog=4096)
    uvicorn.Server(uv).run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trinity serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8077)
    p.add_argument("--data-dir", type=Path, default=None, help=f"default: {default_data_dir()}")
    p.add_argument("--api-key", action="append", default=[], help="repeatable; adds to TRINITY_API_KEYS")
    p.add_argument("--max-inflight", type=int, default=1024, help="searches in flight before 429")
    p.add_argument("--max-queue", type=int, default=20_000, help="engine admission queue bound (429 beyond)")
    p.add_argument("--default-deadline-ms", default="", help="server-side deadline of requests sent without one, "
                   "e.g. decode=100,prefill=1000,background=10000")
    p.add_argument("--body-timeout-s", type=float, default=10.0, help="time to receive a request body (408 beyond)")
    p.add_argument("--admission-share", type=float, default=0.25, help="refuse a stage's requests (429) while its "
                   "recent answers take more than this share of their deadline")
    p.add_argument("--snapshot-every", type=int, default=10_000, help="WAL records between snapshots")
    p.add_argument("--cache-sweep-s", type=float, default=1.0, help="TTL sweep period of semantic caches")
    p.add_argument("--embed-device", default=None, help="torch device for the text embedder")
    p.add_argument("--switch-interval-ms", type=float, default=0.5, help="sys.setswitchinterval (0 = keep 5 ms)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(host=args.host, port=args.port, data_dir=args.data_dir or default_data_dir(),
                        api_keys=keys_from_env() | frozenset(args.api_key), max_inflight=args.max_inflight,
                        max_queue=args.max_queue, snapshot_every=args.snapshot_every,
                        default_deadline_ms=parse_stage_deadlines(args.default_deadline_ms),
                        body_timeout_s=args.body_timeout_s, admission_share=args.admission_share,
                        cache_sweep_s=args.cache_sweep_s, embed_device=args.embed_device, log_level=args.log_level,
                        switch_interval_ms=args.switch_interval_ms or None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        config.check_bind()
    except ValueError as e:
        print(f"trinity serve: {e}", file=sys.stderr)
        return 2
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
