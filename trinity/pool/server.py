"""Run the pool server under uvicorn until SIGTERM / SIGINT.

A graceful shutdown lets in-flight requests finish and snapshots every collection.
"""

from __future__ import annotations

import logging

import uvicorn

from trinity.pool.app import create_app
from trinity.pool.config import PoolConfig
from trinity.pool.memory import skip_unused_triton, tune_malloc

__all__ = ["run"]

log = logging.getLogger("trinity.pool")


def run(config: PoolConfig) -> None:
    """Validate the bind address against the auth setup, then serve until signalled."""
    tune_malloc()
    skip_unused_triton()
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.check_bind()
    if not config.auth_enabled:
        log.warning("no API keys configured (TRINITY_API_KEYS): authentication is off, so the server only "
                    "binds loopback (%s)", config.host)
    # NOTE: no access log (it costs more than a search; /metrics counts per route); httptools + uvloop are picked.
    uv = uvicorn.Config(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                        access_log=False, timeout_graceful_shutdown=30, lifespan="on", backlog=4096)
    uvicorn.Server(uv).run()
