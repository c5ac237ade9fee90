"""Start-up checks of ``trinity gateway`` and ``/health?deep=true`` with nothing behind it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx

from trinity.stack.process import ManagedProcess, free_port

GW = [sys.executable, "-m", "trinity.cli", "gateway"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GW, *args], capture_output=True, text=True, timeout=120)


def test_bad_configurations_fail_at_startup() -> None:
    res = _run("--backend", "vllm-pd", "--decode", "http://127.0.0.1:8200", "--embed", "pool")
    assert res.returncode != 0 and "--prefill" in res.stderr + res.stdout  # no silent 127.0.0.1:8100
    res = _run("--backend", "openai", "--decode", "127.0.0.1:8200", "--embed", "pool")
    assert res.returncode != 0 and "not an http(s) URL" in res.stderr + res.stdout


def test_banner_only_after_the_port_is_bound() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        res = _run("--port", str(taken.getsockname()[1]), "--backend", "openai", "--decode",
                   "http://127.0.0.1:8200", "--embed", "pool")
    finally:
        taken.close()
    assert res.returncode != 0 and "trinity gateway on" not in res.stdout
    assert "cannot listen on" in res.stderr + res.stdout


def test_deep_health_is_not_ok_when_everything_behind_is_down(tmp_path: Path) -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(3)]
    port = free_port()
    argv = [*GW, "--port", str(port), "--backend", "vllm-pd", "--prefill", dead[0], "--decode", dead[1],
            "--pool-url", dead[2], "--embed", "pool"]
    with ManagedProcess("gateway-dead", argv, f"http://127.0.0.1:{port}", tmp_path / "gw.log").running(60) as url:
        assert httpx.get(url + "/health").json()["status"] == "ok"  # shallow: the gateway itself answers
        r = httpx.get(url + "/v1/nope")
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"  # OpenAI's shape
        r = httpx.get(url + "/health", params={"deep": "true"}, timeout=10)
        body = r.json()
        assert r.status_code == 503 and body["status"] == "unavailable", body
        assert body["pool"].startswith("error") and body["down_roles"] == ["decode", "prefill"]
        assert not any(i["ok"] for i in body["instances"].values())
