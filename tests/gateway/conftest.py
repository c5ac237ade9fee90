"""End-to-end fixtures: a real pool, emulated prefill/decode engines and gateways on loopback."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from trinity.stack.launcher import Stack, StackConfig
from trinity.stack.process import ManagedProcess, free_port

PASSAGES = [
    "Paris is the capital and most populous city of France.",
    "The prefill phase processes the whole prompt and builds the KV cache.",
    "The decode phase generates one token per step for every running sequence.",
    "Cats sleep between twelve and sixteen hours a day.",
    "A vector database answers nearest-neighbour queries over embeddings.",
    "Tokyo is the capital of Japan.",
]
GATEWAY_FLAGS = ("--ttft-ms", "5000", "--tpot-ms", "500")  # NOTE: generous: CI CPUs are shared and slow


@dataclass
class E2E:
    gateway: str
    pool: str
    prefill: str
    decode: str
    log_dir: Path


def _black_hole() -> tuple[str, socket.socket]:
    """A TCP server that accepts connections and never answers: a hung pool."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", srv


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    """Pool + 1 prefill + 1 decode + a gateway (local MiniLM embedding), docs loaded."""
    log_dir = Path(tmp_path_factory.mktemp("e2e-logs"))
    cfg = StackConfig(
        served_model_names=("m",), pool_port=0, gateway_port=0, prefill_ports=(0,), decode_ports=(0,), log_dir=log_dir,
                      data_dir=Path(tmp_path_factory.mktemp("pool-data")), gateway_args=GATEWAY_FLAGS)
    with Stack(cfg) as stack:
        ids = list(range(1, len(PASSAGES) + 1))
        r = httpx.post(stack.pool_url + "/v1/collections", json={"name": "docs"}, timeout=60)
        assert r.status_code == 201, r.text
        r = httpx.put(stack.pool_url + "/v1/collections/docs/vectors", timeout=60,
                      json={"ids": ids, "texts": PASSAGES, "payloads": [{"text": t} for t in PASSAGES]})
        assert r.status_code == 200, r.text
        for _ in range(20):  # NOTE: warm the pool's kernels and its iteration-time estimate
            httpx.post(stack.pool_url + "/v1/collections/docs/search", json={"text": "warm up", "k": 2}, timeout=60)
        yield E2E(stack.gateway_url, stack.pool_url, stack.prefill_urls[0], stack.decode_urls[0], log_dir)


def _gateway(e2e: E2E, name: str, pool_url: str, *extra: str, openai_backend: bool = False,
             env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    backend = ["--backend", "openai", "--decode", e2e.decode] if openai_backend else \
        ["--backend", "emulated", "--prefill", e2e.prefill, "--decode", e2e.decode]
    proc = ManagedProcess(name, [sys.executable, "-m", "trinity.cli", "gateway", "--port", str(port), "--pool-url",
                                 pool_url, *backend, "--embed", "pool", *GATEWAY_FLAGS, *extra],
                          f"http://127.0.0.1:{port}", e2e.log_dir / f"{name}.log", env=env)
    with proc.running(60) as url:
        yield url


@pytest.fixture(scope="session")
def gateway_pool_down(e2e: E2E) -> Iterator[str]:
    """A gateway whose pool URL has nothing listening (embedding in the pool: no torch here)."""
    yield from _gateway(e2e, "gateway-pool-down", f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="session")
def gateway_openai(e2e: E2E) -> Iterator[str]:
    """A gateway over one plain OpenAI-compatible server (no disaggregation), pool-side embedding."""
    yield from _gateway(e2e, "gateway-openai", e2e.pool, openai_backend=True)


@pytest.fixture(scope="session")
def gateway_pool_hung(e2e: E2E) -> Iterator[str]:
    """A gateway whose pool accepts connections and never answers."""
    url, srv = _black_hole()
    try:
        yield from _gateway(e2e, "gateway-pool-hung", url, "--deadline-factor", "5")
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _reset_engines(request: pytest.FixtureRequest) -> None:
    """Clear fault injection on the emulated engines before each end-to-end test."""
    if "e2e" in request.fixturenames:
        e2e = request.getfixturevalue("e2e")
        for url in (e2e.prefill, e2e.decode):
            httpx.post(url + "/debug/faults", json={"reset": True})
