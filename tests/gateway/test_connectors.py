"""Each PD connector's handshake end to end: gateway -> emulated prefill/decode engines that play
that connector's instance side (``--kv-connector``, decode with ``--require-kv-transfer``)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from trinity.emulator.connectors import P2P_REQUEST_ID
from trinity.stack.process import ManagedProcess, free_port

from .conftest import E2E, GATEWAY_FLAGS

PY = [sys.executable, "-m", "trinity.cli"]


@dataclass
class PD:
    connector: str
    gateway: str
    prefill: str
    decode: str
    zmq: dict[str, str]  # role -> ZMQ address (p2p-nccl)


def _proc(name: str, argv: list[str], port: int, log_dir: Path) -> ManagedProcess:
    return ManagedProcess(name, argv, f"http://127.0.0.1:{port}", log_dir / f"{name}.log")


@pytest.fixture(scope="module", params=["p2p-nccl", "mooncake"])
def pd(request: pytest.FixtureRequest, e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PD]:
    conn, log_dir = request.param, Path(tmp_path_factory.mktemp(f"pd-{request.param}"))
    ports = {role: free_port() for role in ("prefill", "decode", "gateway")}
    zmq = {role: f"127.0.0.1:{free_port()}" for role in ("prefill", "decode")}
    gw = [*PY, "gateway", "--port", str(ports["gateway"]), "--pool-url", e2e.pool, "--backend", "vllm-pd",
          "--kv-connector", conn, "--prefill", f"http://127.0.0.1:{ports['prefill']}", "--decode",
          f"http://127.0.0.1:{ports['decode']}", "--embed", "pool", "--no-answer-cache", *GATEWAY_FLAGS]
    if conn == "p2p-nccl":
        gw += ["--prefill-kv-address", zmq["prefill"], "--decode-kv-address", zmq["decode"]]
    else:
        gw += ["--bootstrap-port", "8998"]
    procs = [_proc("gateway", gw, ports["gateway"], log_dir)]
    for role in ("prefill", "decode"):
        argv = [*PY, "emulate", "--role", role, "--port", str(ports[role]), "--served-model-name", "m",
                "--kv-connector", conn, "--require-kv-transfer"]
        procs.append(_proc(role, argv + (["--kv-address", zmq[role]] if conn == "p2p-nccl" else []), ports[role],
                           log_dir))
    with ExitStack() as stack:
        urls = [stack.enter_context(p.running(120)) for p in procs]
        yield PD(conn, urls[0], urls[1], urls[2], zmq)


def _seen(url: str, path_has: str = "") -> list[dict[str, Any]]:
    return [e for e in httpx.get(url + "/debug/requests").json() if path_has in e["path"]]


def _metric(url: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(url + "/metrics").text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30.0)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_through_each_connector(pd: PD, stream: bool) -> None:
    received = _metric(pd.decode, "trinity_emulator_kv_transfers_received_total")
    httpx.delete(pd.prefill + "/debug/requests")
    httpx.delete(pd.decode + "/debug/requests")
    kw: dict[str, Any] = dict(model="m", messages=[{"role": "user", "content": f"{pd.connector} {uuid.uuid4().hex}"}],
                              max_tokens=5, extra_body={"trinity": {"collection": "docs", "k": 2}})
    if stream:
        chunks = list(_client(pd.gateway).chat.completions.create(stream=True, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        info = chunks[-1].model_extra["trinity"]
    else:
        resp = _client(pd.gateway).chat.completions.create(**kw)
        text, info = resp.choices[0].message.content, resp.model_extra["trinity"]
        assert resp.usage.completion_tokens == 5
    assert text and info["kv_transfer"] is True and (info["legs"]["prefill"], info["legs"]["decode"]) == (1, 1)
    (p,), (d,) = _seen(pd.prefill), _seen(pd.decode)
    assert p["body"]["max_tokens"] == 1 and p["body"]["stream"] is False and d["body"]["stream"] is stream
    assert p["outcome"] == d["outcome"] == "completed"
    assert _metric(pd.decode, "trinity_emulator_kv_transfers_received_total") == received + 1
    if pd.connector == "p2p-nccl":
        m = P2P_REQUEST_ID.match(p["request_id"])
        assert m and p["request_id"] == d["request_id"] == info["kv_request_id"]
        assert (m.group("prefill"), m.group("decode")) == (pd.zmq["prefill"], pd.zmq["decode"])
        assert "kv_transfer_params" not in p["body"] and "kv_transfer_params" not in d["body"]
    else:
        assert p["body"]["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False}
        assert d["body"]["kv_transfer_params"] == {"do_remote_decode": False, "do_remote_prefill": True,
                                                   "bootstrap_server_host": "127.0.0.1", "bootstrap_server_port": 8998}
        assert p["request_id"] == d["request_id"]


def test_raw_http_through_each_connector(pd: PD) -> None:
    body = {"model": "m", "prompt": f"raw {uuid.uuid4().hex}", "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", pd.gateway + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["usage"]["completion_tokens"] == 3 and last["trinity"]["kv_transfer"] is True
    assert sum(bool(json.loads(e)["choices"] and json.loads(e)["choices"][0]["text"]) for e in events[:-1]) == 3


def test_decode_refuses_a_request_without_the_handshake(pd: PD) -> None:
    r = httpx.post(pd.decode + "/v1/completions", json={"model": "m", "prompt": "no handshake", "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] in ("x-request-id", "kv_transfer_params")
