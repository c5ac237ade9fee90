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

MODEL = "trinity-emulated-llama-3-8b"


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
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(emulator + "/health").json()["emulated"] is True
    client.completions.create(model=MODEL, prompt="metrics", max_tokens=3)
    text = httpx.get(emulator + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:e2e_request_latency_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:time_per_output_token_seconds_bucket"):
        assert any(ln.startswith(name + "{") and f'model_name="{MODEL}"' in ln for ln in text.splitlines()), name
    ttft = [ln for ln in text.splitlines() if ln.startswith("vllm:time_to_first_token_seconds_bucket")]
    assert len(ttft) == 23  # vLLM's 22 buckets + Inf
    assert any(ln.startswith("vllm:request_success_total{") and 'finished_reason="length"' in ln
               for ln in text.splitlines())


def test_completions_streaming_and_not(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="hello there", max_tokens=7, seed=3)
    assert resp.usage.completion_tokens == 7 and resp.usage.prompt_tokens == 2  # WordPiece: hello, there
    assert resp.choices[0].finish_reason == "length"
    again = client.completions.create(model=MODEL, prompt="hello there", max_tokens=7, seed=3)
    assert again.choices[0].text == resp.choices[0].text  # deterministic filler
    chunks = list(client.completions.create(model=MODEL, prompt="hello there", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 5
    assert chunks[-1].usage.completion_tokens == 5


def test_chat_streaming_and_not(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "What is PD disaggregation?"}]
    resp = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6)
    assert resp.choices[0].message.role == "assistant" and resp.usage.completion_tokens == 6
    stream = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, stream=True)
    deltas = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 4


def test_kv_transfer_handshake_over_http(emulator: str, client: openai.OpenAI) -> None:
    prefill = client.completions.create(model=MODEL, prompt="x " * 100, max_tokens=1, extra_body={
        "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False}})
    kv = prefill.model_extra["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and len(kv["remote_block_ids"]) == 7  # 100 tokens / 16
    out = client.completions.create(model=MODEL, prompt="x " * 100, max_tokens=3, extra_body={"kv_transfer_params": kv},
                                    extra_headers={"X-Request-Id": "req-kv"})
    assert out.usage.completion_tokens == 3
    seen = httpx.get(emulator + "/debug/requests").json()
    assert seen[-1]["request_id"] == "req-kv" and seen[-1]["body"]["kv_transfer_params"] == kv
    assert seen[-1]["outcome"] == "completed"


def test_bad_requests_are_400_with_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=MODEL, prompt="y " * 2000, max_tokens=100)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=1)


def test_injected_faults(emulator: str, client: openai.OpenAI) -> None:
    httpx.post(emulator + "/debug/faults", json={"fail_next": 1, "fail_status": 503})
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model=MODEL, prompt="p", max_tokens=2)
    assert client.completions.create(model=MODEL, prompt="p", max_tokens=2).usage.completion_tokens == 2
    httpx.post(emulator + "/debug/faults", json={"fail_after_tokens": 2})
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(client.completions.create(model=MODEL, prompt="p", max_tokens=20, stream=True))
    assert httpx.post(emulator + "/debug/faults", json={"nope": 1}).status_code == 400


def test_client_disconnect_aborts_the_sequence(emulator: str, client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt="long one", max_tokens=1500, stream=True)
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


def _raw(emulator: str, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(emulator + path, json=body, timeout=30)


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "gpt-4"}, 404, "model"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"n": 0}, 400, "n"),
    ({"stop": 3}, 400, "stop"),
    ({"tools": [{"type": "function"}]}, 400, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"function": {"name": "g"}}},
     400, "tool_choice"),
    ({"logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
    ({"response_format": {"type": "xml"}}, 400, "response_format"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
])
def test_rejects_what_vllm_rejects(emulator: str, body: dict, status: int, param: str) -> None:
    r = _raw(emulator, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == status and err["message"]


def test_unknown_routes_and_methods_are_openai_errors(emulator: str) -> None:
    r = httpx.get(emulator + "/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    r = httpx.get(emulator + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_stop_n_tools_logprobs_and_json(client: openai.OpenAI) -> None:
    base = client.completions.create(model=MODEL, prompt="stop here", max_tokens=12, seed=1).choices[0].text
    word = base.split()[3]
    stopped = client.completions.create(model=MODEL, prompt="stop here", max_tokens=12, seed=1, stop=[word])
    assert stopped.choices[0].finish_reason == "stop" and word not in stopped.choices[0].text
    assert base.startswith(stopped.choices[0].text)
    many = client.completions.create(model=MODEL, prompt="many", max_tokens=4, n=3, logprobs=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2] and many.usage.completion_tokens == 12
    assert len(many.choices[0].logprobs.tokens) == 4 and len(many.choices[0].logprobs.top_logprobs[0]) == 3
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "find it"}]
    call = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, tools=tools)
    assert call.choices[0].finish_reason == "tool_calls"
    assert call.choices[0].message.tool_calls[0].function.name == "search"
    stream = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, tools=tools, stream=True))
    deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.arguments == call.choices[0].message.tool_calls[0].function.arguments
    lp = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, logprobs=True, top_logprobs=2)
    assert len(lp.choices[0].logprobs.content) == 3 and len(lp.choices[0].logprobs.content[0].top_logprobs) == 2
    js = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3,
                                        response_format={"type": "json_object"})
    assert isinstance(__import__("json").loads(js.choices[0].message.content), dict)


def _emulator(tmp: Path, role: str, *flags: str) -> ManagedProcess:
    port = free_port()
    return ManagedProcess(role, [sys.executable, "-m", "trinity.cli", "emulate", "--role", role, "--port", str(port),
                                 *flags], f"http://127.0.0.1:{port}", tmp / f"{role}-{port}.log")


def test_connector_sides_refuse_the_wrong_handshake(tmp_path: Path) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    with _emulator(tmp_path, "decode", "--kv-connector", "mooncake", "--require-kv-transfer").running(60) as url:
        assert httpx.post(url + "/v1/completions", json=body).json()["error"]["param"] == "kv_transfer_params"
        kv = {"do_remote_prefill": True, "do_remote_decode": False, "bootstrap_server_host": "127.0.0.1"}
        r = httpx.post(url + "/v1/completions", json={**body, "kv_transfer_params": kv})
        assert r.json()["error"]["param"] == "kv_transfer_params.bootstrap_server_port"
        ok = httpx.post(url + "/v1/completions",
                        json={**body, "kv_transfer_params": {**kv, "bootstrap_server_port": 8998}})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    with _emulator(tmp_path, "decode", "--kv-connector", "p2p-nccl", "--kv-address", "127.0.0.1:21002",
                   "--require-kv-transfer").running(60) as url:
        r = httpx.post(url + "/v1/completions", json=body, headers={"X-Request-Id": "plain"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "x-request-id"
        wrong = "___prefill_addr_127.0.0.1:21001___decode_addr_127.0.0.1:9_0123abcd"
        assert httpx.post(url + "/v1/completions", json=body, headers={"X-Request-Id": wrong}).status_code == 400
        good = "___prefill_addr_127.0.0.1:21001___decode_addr_127.0.0.1:21002_0123abcd"
        assert httpx.post(url + "/v1/completions", json=body, headers={"X-Request-Id": good}).status_code == 200
