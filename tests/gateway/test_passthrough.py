"""What the decode engine returns reaches the client unchanged (plus ``trinity``): tool calls,
logprobs, ``n``, ``stop``, ``response_format``, streaming or not, through the vLLM-PD gateway."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from .conftest import E2E

TOOLS = [{"type": "function", "function": {"name": "search_docs", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}}}}]
NO_CACHE = {"trinity": {"answer_cache": False}}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30.0)


def _chat(e2e: E2E, **kw: Any) -> Any:
    msgs = [{"role": "user", "content": f"Find the docs about prefill {uuid.uuid4().hex}"}]
    return _client(e2e.gateway).chat.completions.create(model="m", messages=msgs, max_tokens=6,
                                                        extra_body=NO_CACHE, **kw)


def test_tool_calls_pass_through(e2e: E2E) -> None:
    resp = _chat(e2e, tools=TOOLS)
    (call,) = resp.choices[0].message.tool_calls
    assert resp.choices[0].finish_reason == "tool_calls" and call.function.name == "search_docs"
    assert json.loads(call.function.arguments)["query"] and call.id.startswith("chatcmpl-tool-")
    chunks = list(_chat(e2e, tools=TOOLS, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ())]
    assert len(deltas) == 1 and deltas[0].function.name == "search_docs"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].model_extra["trinity"]["kv_transfer"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_pass_through(e2e: E2E, stream: bool) -> None:
    client = _client(e2e.gateway)
    kw = dict(model="m", prompt=f"logprobs {uuid.uuid4().hex}", max_tokens=4, logprobs=2, extra_body=NO_CACHE)
    if stream:
        lps = [c.choices[0].logprobs for c in client.completions.create(stream=True, **kw)
               if c.choices and c.choices[0].text]
        assert len(lps) == 4 and all(len(lp.tokens) == 1 and 2 <= len(lp.top_logprobs[0]) <= 3 for lp in lps)
    else:
        lp = client.completions.create(**kw).choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == 4 and all(x < 0 for x in lp.token_logprobs)
    chat = _chat(e2e, logprobs=True, top_logprobs=2)
    assert len(chat.choices[0].logprobs.content) == 6 and len(chat.choices[0].logprobs.content[0].top_logprobs) == 2


def test_n_stop_and_response_format_pass_through(e2e: E2E) -> None:
    client = _client(e2e.gateway)
    resp = client.completions.create(model="m", prompt="two answers", max_tokens=3, n=2, extra_body=NO_CACHE)
    assert sorted(c.index for c in resp.choices) == [0, 1]
    chunks = list(client.completions.create(model="m", prompt="two streams", max_tokens=3, n=2, stream=True,
                                            extra_body=NO_CACHE))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    prompt = f"stop test {uuid.uuid4().hex}"
    full = client.completions.create(model="m", prompt=prompt, max_tokens=8, extra_body=NO_CACHE).choices[0].text
    word = full.split()[2]
    cut = client.completions.create(model="m", prompt=prompt, max_tokens=8, stop=[" " + word],
                                    extra_body=NO_CACHE).choices[0]
    assert cut.finish_reason == "stop" and full.startswith(cut.text) and len(cut.text) < len(full)
    as_json = _chat(e2e, response_format={"type": "json_object"})
    assert isinstance(json.loads(as_json.choices[0].message.content), dict)


def test_client_stream_options_reach_the_decode_leg(e2e: E2E) -> None:
    rid = uuid.uuid4().hex
    list(_client(e2e.gateway).completions.create(
        model="m", prompt=f"usage stats {rid}", max_tokens=2, stream=True, extra_body=NO_CACHE,
        stream_options={"include_usage": False, "continuous_usage_stats": True}, extra_headers={"X-Request-Id": rid}))
    (d,) = [e for e in httpx.get(e2e.decode + "/debug/requests").json() if (e["request_id"] or "").startswith(rid)]
    assert d["body"]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_upstream_rejections_pass_through(e2e: E2E) -> None:
    client = _client(e2e.gateway)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="m", prompt="x", max_tokens=2, temperature=-1)
