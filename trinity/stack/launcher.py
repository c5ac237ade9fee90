"""Start and stop the whole local stack as processes: pool, emulated engines, gateway.

Used by ``trinity up``, ``trinity demo`` and the end-to-end tests. Every process is a
``python -m trinity.cli ...`` child on a loopback port, logging to its own file, in
its own session (so a terminal Ctrl-C reaches only the parent, which then stops the
children in reverse start order: SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trinity.stack.process import ManagedProcess, free_port

__all__ = ["Stack", "StackConfig"]


@dataclass(frozen=True)
class StackConfig:
    """Ports and knobs of a local stack; port 0 means "pick a free port"."""

    host: str = "127.0.0.1"
    pool_port: int = 8077
    gateway_port: int = 8000
    prefill_ports: tuple[int, ...] = (8100,)
    decode_ports: tuple[int, ...] = (8200,)
    pool_url: str | None = None  # use a running pool instead of starting one
    data_dir: Path | None = None  # pool data directory (default: a temporary one, removed on stop)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "trinity-up")
    time_scale: float = 1.0
    served_model_names: tuple[str, ...] = ()  # the engines' --served-model-name (default: their model)
    emulator_args: tuple[str, ...] = ()
    gateway_args: tuple[str, ...] = ()
    pool_args: tuple[str, ...] = ()
    startup_timeout_s: float = 180.0


class Stack:
    """The processes of one :class:`StackConfig`; a context manager (start on enter, stop on exit)."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        h = cfg.host
        port = lambda p: p or free_port(h)  # noqa: E731
        py = [sys.executable, "-m", "trinity.cli"]
        self.pool: ManagedProcess | None = None
        self._temp_data_dir: Path | None = None  # created here, so removed on stop
        if cfg.pool_url:
            self.pool_url = cfg.pool_url.rstrip("/")
        else:
            pp = port(cfg.pool_port)
            self.pool_url = f"http://{h}:{pp}"
            data_dir = cfg.data_dir
            if data_dir is None:
                data_dir = self._temp_data_dir = Path(tempfile.mkdtemp(prefix="trinity-pool-"))
            self.pool = ManagedProcess("pool", [*py, "serve", "--host", h, "--port", str(pp), "--data-dir",
                                                str(data_dir), *cfg.pool_args], self.pool_url, cfg.log_dir / "pool.log")
        self.engines: list[ManagedProcess] = []
        names = [a for n in cfg.served_model_names for a in ("--served-model-name", n)]
        for role, ports in (("prefill", cfg.prefill_ports), ("decode", cfg.decode_ports)):
            for i, p in enumerate(ports):
                p = port(p)
                self.engines.append(ManagedProcess(
                    f"{role}-{i}", [*py, "emulate", "--role", role, "--host", h, "--port", str(p), "--time-scale",
                                    str(cfg.time_scale), *names, *cfg.emulator_args],
                    f"http://{h}:{p}", cfg.log_dir / f"{role}-{i}.log"))
        self.prefill_urls = [e.url for e in self.engines if e.name.startswith("prefill")]
        self.decode_urls = [e.url for e in self.engines if e.name.startswith("decode")]
        gp = port(cfg.gateway_port)
        self.gateway_url = f"http://{h}:{gp}"
        argv = [*py, "gateway", "--host", h, "--port", str(gp), "--pool-url", self.pool_url, "--backend", "emulated"]
        for u in self.prefill_urls:
            argv += ["--prefill", u]
        for u in self.decode_urls:
            argv += ["--decode", u]
        self.gateway = ManagedProcess("gateway", [*argv, *cfg.gateway_args], self.gateway_url,
                                      cfg.log_dir / "gateway.log")

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.pool, *self.engines, self.gateway) if p is not None]

    def start(self) -> None:
        """Start every process at once, then wait until each answers ``/health``.

        NOTE: the gateway does not need the pool to start (it retries creating its caches),
        so nothing waits for anything else and start-up takes as long as the slowest child.
        """
        try:
            for p in self.processes:
                p.start()
            for p in self.processes:
                p.wait_ready(self.cfg.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop in reverse order: gateway first, so no new work reaches the engines or the pool."""
        for p in reversed(self.processes):
            p.stop()
        if self._temp_data_dir is not None:
            shutil.rmtree(self._temp_data_dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
