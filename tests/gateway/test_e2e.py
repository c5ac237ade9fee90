"""The gateway end to end on loopback: openai client -> gateway -> pool + emulated P/D engines."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from trinity.gateway.backends.vllm_pd import PREFILL_KV_TRANSFER_PARAMS

from .conftest import E2E


def _client(url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, **kw)


def _seen(engine_url: str, request_id: str) -> list[dict[str, Any]]:
    """Requests an engine received for a client request id (legs carry ``<id>-<suffix>``)."""
    return [e for e in httpx.get(engine_url + "/debug/requests").json()
            if (e["request_id"] or "").rsplit("-", 1)[0] == request_id]


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_chat_non_streaming_with_rag(e2e: E2E) -> None:
    rid = uuid.uuid4().hex
    resp = _client(e2e.gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8,
        extra_body={"trinity": {"collection": "docs", "k": 2}}, extra_headers={"X-Request-Id": rid})
    info = resp.model_extra["trinity"]
    assert resp.usage.completion_tokens == 8 and resp.choices[0].finish_reason == "length"
    assert info["degraded"] is False, info
    assert 1 in info["retrieval"]["passage_ids"]  # the Paris passage
    assert info["legs"] == {"prefill": 1, "decode": 1} and info["kv_transfer"] is True
    for phase in ("queue", "embed", "retrieval", "prefill", "decode", "ttft", "total"):
        assert info["timings_ms"][phase] >= 0, phase
    # the decode leg's prompt carries the retrieved passage
    decode_body = _seen(e2e.decode, rid)[0]["body"]
    assert "Paris is the capital" in decode_body["messages"][0]["content"]


def test_completions_streaming_with_openai_client(e2e: E2E) -> None:
    stream = _client(e2e.gateway).completions.create(
        model="m", prompt="Tell me about the decode phase", max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"trinity": {"collection": "docs"}})
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert len(texts) == 6
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 6 and not chunks[-1].choices  # the upstream's usage event
    assert chunks[-1].model_extra["trinity"]["legs"]["decode"] == 1  # on the last event before [DONE]


def test_vllm_pd_legs_carry_the_right_fields(e2e: E2E) -> None:
    rid = uuid.uuid4().hex
    _client(e2e.gateway).completions.create(model="m", prompt="PD legs please", max_tokens=5,
                                            extra_headers={"X-Request-Id": rid},
                                            extra_body={"min_tokens": 2, "trinity": {"answer_cache": False}})
    (p,), (d,) = _seen(e2e.prefill, rid), _seen(e2e.decode, rid)
    assert p["request_id"] == d["request_id"] != rid  # one unique upstream id for both legs
    assert p["body"]["kv_transfer_params"] == PREFILL_KV_TRANSFER_PARAMS
    assert p["body"]["stream"] is False and p["body"]["max_tokens"] == 1
    assert "stream_options" not in p["body"] and "min_tokens" not in p["body"]
    engine_id = httpx.get(e2e.prefill + "/debug/state").json()["engine_id"]
    kv = d["body"]["kv_transfer_params"]
    assert kv["do_remote_prefill"] is True and kv["remote_engine_id"] == engine_id and kv["remote_block_ids"]
    assert d["body"]["stream"] is False  # the client's own stream flag
    assert d["body"]["max_tokens"] == 5 and d["body"]["min_tokens"] == 2
    assert d["body"]["prompt"] == p["body"]["prompt"] and d["outcome"] == "completed"


def test_answer_cache_hit_skips_the_engines(e2e: E2E) -> None:
    client, prompt = _client(e2e.gateway), f"Cache me {uuid.uuid4().hex[:8]} please"
    first = client.completions.create(model="m", prompt=prompt, max_tokens=5)
    assert first.model_extra["trinity"]["cache"] == "miss"
    deadline, second = time.monotonic() + 10, None
    while time.monotonic() < deadline:  # the insert runs in the background
        rid = uuid.uuid4().hex
        raw = client.completions.with_raw_response.create(model="m", prompt=prompt, max_tokens=5,
                                                          extra_headers={"X-Request-Id": rid})
        second = raw.parse()
        if second.model_extra["trinity"]["cache"] == "hit":
            break
        time.sleep(0.1)
    assert second is not None and second.model_extra["trinity"]["cache"] == "hit"
    assert raw.headers["x-trinity-cache"] == "hit"
    assert second.choices[0].text == first.choices[0].text
    assert _seen(e2e.prefill, rid) == [] and _seen(e2e.decode, rid) == []
    # streamed hits are replayed too, and a different max_tokens is not served from the cache
    chunks = list(client.completions.create(model="m", prompt=prompt, max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == first.choices[0].text
    other = client.completions.create(model="m", prompt=prompt, max_tokens=7)
    assert other.model_extra["trinity"]["cache"] == "miss"


def test_decode_time_retrieval_continues_on_the_same_decode_instance(e2e: E2E) -> None:
    rid = uuid.uuid4().hex
    hits_before = _metric(e2e.decode, "vllm:prefix_cache_hits_total")
    legs_before = _metric(e2e.gateway, "trinity_gateway_legs_total")
    resp = _client(e2e.gateway).completions.create(
        model="m", prompt="Explain prefill and decode", max_tokens=12, extra_headers={"X-Request-Id": rid},
        extra_body={"trinity": {"collection": "docs", "retrieval_interval": 4, "answer_cache": False}})
    info = resp.model_extra["trinity"]
    assert resp.usage.completion_tokens == 12
    assert info["legs"] == {"prefill": 1, "decode": 1, "continuation": 2}
    assert len(info["decode_retrievals"]) == 2 and "decode_retrieval" in info["timings_ms"]  # the stall
    assert all(d["ms"] > 0 and d["passage_ids"] for d in info["decode_retrievals"]), info
    parts = ("embed_ms", "cache_ms", "search_ms", "network_ms")
    for r in (info["retrieval"], *info["decode_retrievals"]):  # one definition: first step to passages = the parts
        assert r["ms"] >= sum(r[p] for p in parts) - 0.01 and r["embed_ms"] > 0 and r["search_ms"] > 0, r
    assert info["retrieval"]["cache_ms"] == 0 and all(d["cache_ms"] == 0 for d in info["decode_retrievals"])
    legs = _seen(e2e.decode, rid)
    assert len(legs) == 3 and "kv_transfer_params" in legs[0]["body"]
    for prev, nxt in zip(legs, legs[1:]):
        assert nxt["body"]["prompt"].startswith(prev["body"]["prompt"])  # old context is a prefix
        assert "kv_transfer_params" not in nxt["body"]
    assert _metric(e2e.decode, "vllm:prefix_cache_hits_total") > hits_before
    assert _metric(e2e.gateway, "trinity_gateway_legs_total") - legs_before == 4


def test_slo_header_carves_the_retrieval_deadline(e2e: E2E) -> None:
    client = _client(e2e.gateway)
    kw = {"model": "m", "prompt": "What is a vector database?", "max_tokens": 2}
    rid = uuid.uuid4().hex
    with pytest.raises(openai.APIStatusError) as exc:  # 0.3 ms for retrieval, then too late for any leg
        client.completions.create(**kw, extra_headers={"x-slo-ttft-ms": "1", "X-Request-Id": rid},
                                  extra_body={"trinity": {"collection": "docs", "answer_cache": False}})
    assert exc.value.status_code == 504 and exc.value.body["param"] == "x-slo-ttft-ms"
    assert _seen(e2e.prefill, rid) == []  # no upstream work starts for a request already past its deadline
    with pytest.raises(openai.APIStatusError) as exc:
        client.completions.create(**kw, extra_headers={"x-slo-ttft-ms": "1", "x-trinity-on-pool-error": "fail"},
                                  extra_body={"trinity": {"collection": "docs"}})
    assert exc.value.status_code in (503, 504)  # the pool's search deadline, or a leg's on a loaded machine


def test_pool_down_degrades_or_fails_per_policy(gateway_pool_down: str) -> None:
    health = httpx.get(gateway_pool_down + "/health", params={"deep": True}).json()
    assert health["status"] == "degraded" and health["pool"].startswith("error")  # still serves, without retrieval
    client = _client(gateway_pool_down)
    t0 = time.monotonic()
    resp = client.completions.create(model="m", prompt="anything", max_tokens=3,
                                     extra_body={"trinity": {"collection": "docs"}})
    info = resp.model_extra["trinity"]
    assert resp.usage.completion_tokens == 3 and info["degraded"] is True
    assert any(r.startswith("retrieval: unavailable") for r in info["degraded_reasons"]), info
    assert time.monotonic() - t0 < 5.0
    with pytest.raises(openai.APIStatusError) as exc:
        client.completions.create(model="m", prompt="anything", max_tokens=3,
                                  extra_body={"trinity": {"collection": "docs", "on_pool_error": "fail"}})
    assert exc.value.status_code == 503 and exc.value.response.headers["retry-after"] == "1"


def test_hung_pool_never_holds_a_request_past_its_deadline(gateway_pool_hung: str) -> None:
    resp = _client(gateway_pool_hung).completions.create(
        model="m", prompt="anything", max_tokens=2, extra_headers={"x-slo-ttft-ms": "400"},
        extra_body={"trinity": {"collection": "docs", "answer_cache": False}})
    info = resp.model_extra["trinity"]
    assert info["degraded_reasons"] == ["retrieval: timeout"]
    # budget = prefill_share * TTFT; the slack is event-loop lag on a shared, oversubscribed CI CPU
    assert info["timings_ms"]["retrieval"] <= 0.3 * 400 + 150


def test_prefill_error_cancels_the_decode_leg(e2e: E2E) -> None:
    httpx.post(e2e.prefill + "/debug/faults", json={"fail_next": 1, "fail_status": 500})
    rid = uuid.uuid4().hex
    errors_before = _metric(e2e.gateway, "trinity_gateway_upstream_errors_total")
    with pytest.raises(openai.APIStatusError) as exc:
        _client(e2e.gateway).completions.create(model="m", prompt="fail my prefill", max_tokens=4,
                                                extra_headers={"X-Request-Id": rid})
    assert exc.value.status_code == 502 and "prefill" in str(exc.value)
    assert [e["outcome"] for e in _seen(e2e.prefill, rid)] == ["injected_500"]
    assert _seen(e2e.decode, rid) == []  # the decode leg never started
    assert _metric(e2e.gateway, "trinity_gateway_upstream_errors_total") == errors_before + 1


def test_missing_kv_transfer_params_is_counted(e2e: E2E) -> None:
    httpx.post(e2e.prefill + "/debug/faults", json={"drop_kv_transfer_params": True})
    before = _metric(e2e.gateway, "trinity_gateway_decode_without_kv_transfer_total")
    emu_before = _metric(e2e.decode, "trinity_emulator_requests_without_kv_transfer_total")
    resp = _client(e2e.gateway).completions.create(model="m", prompt=f"no kv {uuid.uuid4().hex}", max_tokens=2)
    assert resp.model_extra["trinity"]["kv_transfer"] is False
    assert _metric(e2e.gateway, "trinity_gateway_decode_without_kv_transfer_total") == before + 1
    assert _metric(e2e.decode, "trinity_emulator_requests_without_kv_transfer_total") == emu_before + 1


def test_client_disconnect_aborts_upstream_work(e2e: E2E) -> None:
    rid = uuid.uuid4().hex
    stream = _client(e2e.gateway).completions.create(model="m", prompt="a very long answer", max_tokens=2000,
                                                     stream=True, extra_headers={"X-Request-Id": rid})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [e["outcome"] for e in _seen(e2e.decode, rid)] != ["aborted"]:
        time.sleep(0.05)
    (entry,) = _seen(e2e.decode, rid)
    assert entry["outcome"] == "aborted" and entry["completion_tokens"] < 2000
    assert _metric(e2e.gateway, "trinity_gateway_client_disconnects_total") >= 1


def test_bad_requests_name_the_field(e2e: E2E) -> None:
    client = _client(e2e.gateway)
    with pytest.raises(openai.BadRequestError, match="trinity.k"):
        client.completions.create(model="m", prompt="x", extra_body={"trinity": {"k": 0}})
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="m", messages=[])
    assert [m.id for m in client.models.list().data] == ["m"]  # the engines' --served-model-name
    assert httpx.get(e2e.gateway + "/health", params={"deep": True}).json()["pool"] == "ok"


def test_single_openai_server_backend_has_no_prefill_leg(e2e: E2E, gateway_openai: str) -> None:
    rid = uuid.uuid4().hex
    resp = _client(gateway_openai).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Which city is the capital of Japan?"}], max_tokens=4,
        extra_headers={"X-Request-Id": rid}, extra_body={"trinity": {"collection": "docs", "k": 1}})
    info = resp.model_extra["trinity"]
    assert info["legs"] == {"decode": 1} and info["kv_transfer"] is None and info["retrieval"]["passage_ids"] == [6]
    assert _seen(e2e.prefill, rid) == []
    (leg,) = _seen(e2e.decode, rid)
    assert "kv_transfer_params" not in leg["body"] and leg["outcome"] == "completed"


def test_prompt_cache_serves_the_passages_of_a_similar_prompt(e2e: E2E) -> None:
    client, prompt = _client(e2e.gateway), f"Where do cats sleep? ({uuid.uuid4().hex[:6]})"
    opts = {"collection": "docs", "k": 2, "prompt_cache": True, "answer_cache": False}
    first = client.completions.create(model="m", prompt=prompt, max_tokens=2, extra_body={"trinity": opts})
    assert first.model_extra["trinity"]["prompt_cache"] == "miss"
    deadline, info = time.monotonic() + 10, {}
    while time.monotonic() < deadline and info.get("prompt_cache") != "hit":
        info = client.completions.create(model="m", prompt=prompt, max_tokens=2,
                                         extra_body={"trinity": opts}).model_extra["trinity"]
        time.sleep(0.1)
    assert info["prompt_cache"] == "hit" and info["retrieval"]["from_prompt_cache"] is True
    assert info["retrieval"]["passage_ids"] == first.model_extra["trinity"]["retrieval"]["passage_ids"]
    assert "retrieval" not in info["timings_ms"]  # no search was run


def test_decode_failure_before_the_first_token_is_a_502(e2e: E2E) -> None:
    httpx.post(e2e.decode + "/debug/faults", json={"fail_next": 1, "fail_status": 500})
    with pytest.raises(openai.APIStatusError) as exc:
        list(_client(e2e.gateway).completions.create(model="m", prompt=f"d {uuid.uuid4().hex}", max_tokens=3,
                                                     stream=True))
    assert exc.value.status_code == 502 and "decode" in str(exc.value)


def test_non_streaming_client_disconnect_aborts_upstream_work(e2e: E2E) -> None:
    rid = uuid.uuid4().hex
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(e2e.gateway + "/v1/completions", timeout=httpx.Timeout(0.5, connect=5),
                   headers={"X-Request-Id": rid}, json={"model": "m", "prompt": "long", "max_tokens": 2000})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [e["outcome"] for e in _seen(e2e.decode, rid)] != ["aborted"]:
        time.sleep(0.05)
    assert [e["outcome"] for e in _seen(e2e.decode, rid)] == ["aborted"]
