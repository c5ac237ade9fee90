"""SLO-derived deadlines on the LLM legs: a stalled (SIGSTOP) or killed (SIGKILL) engine process."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from trinity.stack.launcher import Stack, StackConfig
from trinity.stack.process import ManagedProcess

from .conftest import E2E, GATEWAY_FLAGS

MARGIN_S = 1.0  # NOTE: event-loop lag on a shared, oversubscribed CI CPU


@dataclass
class Legs:
    gateway: str
    prefill: ManagedProcess
    decode: ManagedProcess


@pytest.fixture(scope="module")
def legs(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Legs]:
    """A gateway with its own prefill and decode engines, so tests may stop or kill them."""
    cfg = StackConfig(
        served_model_names=("m",), pool_url=e2e.pool, gateway_port=0, prefill_ports=(0,), decode_ports=(0,),
                      log_dir=Path(tmp_path_factory.mktemp("legs-logs")),
                      gateway_args=("--embed", "pool", "--no-answer-cache", *GATEWAY_FLAGS))
    with Stack(cfg) as stack:
        prefill, decode = stack.engines
        yield Legs(stack.gateway_url, prefill, decode)


@contextmanager
def stopped(proc: ManagedProcess) -> Iterator[None]:
    assert proc.popen is not None
    os.kill(proc.popen.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10.0)


def _seen(engine_url: str, request_id: str) -> list[dict[str, Any]]:
    return [e for e in httpx.get(engine_url + "/debug/requests").json()
            if (e["request_id"] or "").rsplit("-", 1)[0] == request_id]


def _serves_normally(legs: Legs) -> None:
    resp = _client(legs.gateway).completions.create(model="m", prompt=f"ok {uuid.uuid4().hex}", max_tokens=3,
                                                    extra_headers={"x-slo-ttft-ms": "2000"})
    assert resp.usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_stalled_decode_fails_by_the_ttft_deadline(legs: Legs, stream: bool) -> None:
    rid = uuid.uuid4().hex
    with stopped(legs.decode):
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as exc:
            out = _client(legs.gateway).completions.create(
                model="m", prompt="stalled decode", max_tokens=4, stream=stream,
                extra_headers={"x-slo-ttft-ms": "500", "X-Request-Id": rid})
            if stream:
                list(out)
        elapsed = time.monotonic() - t0
    assert exc.value.status_code == 504 and elapsed <= 0.5 + MARGIN_S, elapsed
    err = exc.value.body
    assert "decode" in err["message"] and err["param"] == "x-slo-ttft-ms" and err["code"] == 504, err
    deadline = time.monotonic() + 5  # resumed, the engine sees the closed connection and runs nothing
    while time.monotonic() < deadline and httpx.get(legs.decode.url + "/debug/state").json()["running"]:
        time.sleep(0.05)
    assert httpx.get(legs.decode.url + "/debug/state").json()["running"] == 0
    assert all(e["outcome"] != "completed" for e in _seen(legs.decode.url, rid))
    _serves_normally(legs)


def test_stalled_prefill_fails_by_the_ttft_deadline(legs: Legs) -> None:
    rid = uuid.uuid4().hex
    with stopped(legs.prefill):
        t0 = time.monotonic()
        r = httpx.post(legs.gateway + "/v1/completions", json={"model": "m", "prompt": "stalled", "max_tokens": 2},
                       headers={"x-slo-ttft-ms": "500", "X-Request-Id": rid}, timeout=10)
        elapsed = time.monotonic() - t0
    assert r.status_code == 504 and elapsed <= 0.5 + MARGIN_S, (r.status_code, elapsed)
    assert "prefill" in r.json()["error"]["message"] and r.json()["error"]["param"] == "x-slo-ttft-ms"
    assert _seen(legs.decode.url, rid) == []  # the decode leg never started
    _serves_normally(legs)


def test_a_started_stream_ends_with_an_error_event_at_its_deadline(legs: Legs) -> None:
    rid, max_tokens = uuid.uuid4().hex, 100
    end_s = 0.5 + 0.010 * (max_tokens - 1)  # TTFT + TPOT x the tokens after the first
    t0 = time.monotonic()
    stream = _client(legs.gateway).completions.create(
        model="m", prompt="stall me mid-stream", max_tokens=max_tokens, stream=True,
        extra_headers={"x-slo-ttft-ms": "500", "x-slo-tpot-ms": "10", "X-Request-Id": rid})
    texts = []
    with pytest.raises(openai.APIError, match="decode") as exc:
        for chunk in stream:
            texts.append(chunk)
            if len(texts) == 2:
                os.kill(legs.decode.popen.pid, signal.SIGSTOP)
    elapsed = time.monotonic() - t0
    os.kill(legs.decode.popen.pid, signal.SIGCONT)
    assert elapsed <= end_s + MARGIN_S and len(texts) < max_tokens, elapsed
    assert exc.value.body["code"] == 504 and exc.value.body["param"] == "x-slo-tpot-ms", exc.value.body
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [e["outcome"] for e in _seen(legs.decode.url, rid)] != ["aborted"]:
        time.sleep(0.05)
    (entry,) = _seen(legs.decode.url, rid)
    assert entry["outcome"] == "aborted" and entry["completion_tokens"] < max_tokens
    _serves_normally(legs)


def test_killed_decode_fails_fast_and_recovers_after_a_restart(legs: Legs) -> None:
    client = _client(legs.gateway)
    stream = client.completions.create(model="m", prompt="a long answer", max_tokens=2000, stream=True,
                                       extra_headers={"x-slo-ttft-ms": "2000"})
    t0 = None
    with pytest.raises(openai.APIError, match="decode"):
        for i, _ in enumerate(stream):
            if i == 2:
                t0 = time.monotonic()
                legs.decode.kill()
    assert t0 is not None and time.monotonic() - t0 <= MARGIN_S
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        client.completions.create(model="m", prompt="decode is gone", max_tokens=2)
    assert exc.value.status_code == 502 and "decode" in exc.value.message
    assert time.monotonic() - t0 <= MARGIN_S
    legs.decode.start()
    legs.decode.wait_ready(60)
    _serves_normally(legs)
