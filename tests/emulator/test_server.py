"""The emulator as a real server process, driven by the official ``openai`` client."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from trinity.stack.process import ManagedProcess, free_port


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = ManagedProcess("decode", [sys.executable, "-m", "trinity.cli", "emulate", "--role", "decode",
                                     "--port", str(port), "--max-model-len", "2048"],
                          f"http://127.0.0.1:{port}", Path(tmp_path_factory.mktemp("emu")) / "decode.log")
    with proc.running(60) as url:
        yield url


@pytest.fixture()
def client(emulator: str) -> openai.OpenAI:
    httpx.delete(emulator + "/debug/requests")
    httpx.post(emulator + "/debug/faults", json={"reset": True})
    return openai.OpenAI(base_url=emulator + "/v1", api_key="unused", max_retries=0)


def test_models_health_and_metrics(emulator: str, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["trinity-emulated-llama-3-8b"]
    assert httpx.get(emulator + "/health").json()["emulated"] is True
    assert "emulator_num_requests_running" in httpx.get(emulator + "/metrics").text


def test_completions_streaming_and_not(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="m", prompt="hello there", max_tokens=7, seed=3)
    assert resp.usage.completion_tokens == 7 and resp.usage.prompt_tokens == 4  # hell o ther e
    assert resp.choices[0].finish_reason == "length"
    again = client.completions.create(model="m", prompt="hello there", max_tokens=7, seed=3)
    assert again.choices[0].text == resp.choices[0].text  # deterministic filler
    chunks = list(client.completions.create(model="m", prompt="hello there", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 5
    assert chunks[-1].usage.completion_tokens == 5


def test_chat_streaming_and_not(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "What is PD disaggregation?"}]
    resp = client.chat.completions.create(model="m", messages=msgs, max_tokens=6)
    assert resp.choices[0].message.role == "assistant" and resp.usage.completion_tokens == 6
    stream = client.chat.completions.create(model="m", messages=msgs, max_tokens=4, stream=True)
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 4


def test_kv_transfer_handshake_over_http(emulator: str, client: openai.OpenAI) -> None:
    prefill = client.completions.create(model="m", prompt="x " * 100, max_tokens=1, extra_body={
        "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}})
    kv = prefill.model_extra["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and len(kv["remote_block_ids"]) == 7  # 100 tokens / 16
    out = client.completions.create(model="m", prompt="x " * 100, max_tokens=3, extra_body={"kv_transfer_params": kv},
                                    extra_headers={"X-Request-Id": "req-kv"})
    assert out.usage.completion_tokens == 3
    seen = httpx.get(emulator + "/debug/requests").json()
    assert seen[-1]["request_id"] == "req-kv" and seen[-1]["body"]["kv_transfer_params"] == kv
    assert seen[-1]["outcome"] == "completed"


def test_bad_requests_are_400_with_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="m", prompt="y " * 2000, max_tokens=100)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="m", messages=[], max_tokens=1)


def test_injected_faults(emulator: str, client: openai.OpenAI) -> None:
    httpx.post(emulator + "/debug/faults", json={"fail_next": 1, "fail_status": 503})
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="m", prompt="p", max_tokens=2)
    assert client.completions.create(model="m", prompt="p", max_tokens=2).usage.completion_tokens == 2
    httpx.post(emulator + "/debug/faults", json={"fail_after_tokens": 2})
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(client.completions.create(model="m", prompt="p", max_tokens=20, stream=True))
    assert httpx.post(emulator + "/debug/faults", json={"nope": 1}).status_code == 400


def test_client_disconnect_aborts_the_sequence(emulator: str, client: openai.OpenAI) -> None:
    stream = client.completions.create(model="m", prompt="long one", max_tokens=1500, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entry = httpx.get(emulator + "/debug/requests").json()[-1]
        if entry["outcome"] == "aborted" and httpx.get(emulator + "/debug/state").json()["running"] == 0:
            break
        time.sleep(0.05)
    assert entry["outcome"] == "aborted" and entry["completion_tokens"] < 1500
