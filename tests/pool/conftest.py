"""Fixtures: one shared pool server process (tests that embed text use it, so the model
loads once) and an httpx client for it."""

from __future__ import annotations

import itertools
import signal
import uuid

import httpx
import pytest

from trinity.bench.tmpfs import MountError, tmpfs
from trinity.engine import SearchEngine
from trinity.stack.process import ServerProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    proc = ServerProcess(root / "data", "--cache-sweep-s", "0.2", log_path=root / "server.log").start()
    yield proc
    # NOTE: uvicorn re-raises the caught SIGTERM after its graceful shutdown, hence -15.
    assert proc.stop() in (0, -signal.SIGTERM), proc.log()


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120.0) as c:
        yield c


@pytest.fixture
def name():
    """A collection / cache name no other test uses."""
    return f"t{next(_names)}-{uuid.uuid4().hex[:6]}"


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "field", "message"}, body
    return body["error"]


@pytest.fixture
def engine():
    """A private in-process engine (store-level tests)."""
    with SearchEngine() as e:
        yield e


@pytest.fixture
def small_fs(tmp_path):
    """A real 4 MiB file system to fill (a tmpfs: needs root; skipped otherwise)."""
    try:
        with tmpfs(tmp_path / "fs", 4 << 20) as root:
            yield root
    except MountError as e:
        pytest.skip(f"no tmpfs: {e}")
