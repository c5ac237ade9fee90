"""Child processes on loopback ports: the pool server, and any ``/health``-checked service.

A real process on a real loopback port: what a client sees, including start-up, WAL
replay after ``kill -9`` and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (racy in theory, fine for tests and local stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ManagedProcess:
    """One child process with a ``/health`` endpoint, logging to its own file.

    The child runs in its own session, so a terminal Ctrl-C reaches only the parent,
    which stops its children itself.  ``env`` entries are added to the parent's
    environment (an empty value for a variable the child must not inherit).
    """

    name: str
    argv: list[str]
    url: str
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds its own copy of the fd
        try:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, **(self.env or {})}, start_new_session=True)
        finally:
            log.close()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``GET /health`` until 200; raise with the log tail if the child dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy at {self.url} after {timeout_s:.0f} s:\n{self.log_tail()}")

    @contextlib.contextmanager
    def running(self, timeout_s: float) -> Iterator[str]:
        """Start, wait until healthy, yield the URL; stop on exit (also if it never got healthy)."""
        self.start()
        try:
            self.wait_ready(timeout_s)
            yield self.url
        finally:
            self.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks -- a crash."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; return the exit code (None if never started)."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return p.returncode


class ServerProcess(ManagedProcess):
    """``python -m trinity.pool`` on a free port with its own data directory."""

    def __init__(self, data_dir: str | os.PathLike, *args: str, api_keys: str | None = None,
                 log_path: str | os.PathLike | None = None, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        argv = [sys.executable, "-m", "trinity.pool", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--log-level", "warning", *args]
        # NOTE: an empty TRINITY_API_KEYS means "no keys": the child never inherits the parent's.
        super().__init__("pool", argv, f"http://127.0.0.1:{self.port}",
                         Path(log_path) if log_path else self.data_dir.parent / f"server-{self.port}.log",
                         env={"TRINITY_API_KEYS": api_keys or ""})

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout_s: float = 90.0) -> ServerProcess:
        super().start()
        self.wait_ready(timeout_s)
        return self

    def log(self) -> str:
        return self.log_tail(4000)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: graceful shutdown (snapshots every collection)."""
        rc = super().stop(timeout_s)
        return 0 if rc is None else rc

    def rss_bytes(self) -> int:
        return psutil.Process(self.pid).memory_info().rss
