"""Gateway replicas on Ray Serve: two replicas of the PD gateway behind the proxy that also serves
the pool, over emulated prefill and decode engines; the official openai client, RAG on a small
collection embedded by the pool."""

from __future__ import annotations

import contextlib
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from trinity.gateway.config import BackendConfig, GatewayConfig, RetrievalConfig, SLOConfig
from trinity.stack.process import ManagedProcess, free_port

PASSAGES = [
    "Paris is the capital and most populous city of France.",
    "The decode phase generates one token per step for every running sequence.",
    "Cats sleep between twelve and sixteen hours a day.",
    "Tokyo is the capital of Japan.",
]
HEADER = "x-trinity-gateway-replica"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """An emulated prefill and decode engine (``trinity emulate``), as the local stack starts them."""
    log_dir = tmp_path_factory.mktemp("ray-engines")
    with contextlib.ExitStack() as stack:
        urls = {}
        for role in ("prefill", "decode"):
            port = free_port()
            proc = ManagedProcess(role, [sys.executable, "-m", "trinity.cli", "emulate", "--role", role, "--port",
                                         str(port), "--served-model-name", "m"],
                                  f"http://127.0.0.1:{port}", log_dir / f"{role}.log")
            urls[role] = stack.enter_context(proc.running(60))
        yield urls


@pytest.fixture(scope="module")
def gateway(ray_pool, engines):
    from ray import serve

    from trinity.pool.ray.gateway import deploy_gateway

    r = ray_pool.client.post("/v1/collections", json={"name": "gwdocs"})
    assert r.status_code == 201, r.text
    r = ray_pool.client.put("/v1/collections/gwdocs/vectors", json={
        "ids": list(range(1, len(PASSAGES) + 1)), "texts": PASSAGES, "payloads": [{"text": t} for t in PASSAGES]})
    assert r.status_code == 200, r.text
    cfg = GatewayConfig(backend=BackendConfig(kind="emulated", prefill_urls=(engines["prefill"],),
                                              decode_urls=(engines["decode"],)),
                        slo=SLOConfig(ttft_ms=5000, tpot_ms=500), retrieval=RetrievalConfig(embed="pool"))
    url = deploy_gateway(ray_pool.config, cfg, 2)
    try:
        yield url
    finally:
        serve.delete(ray_pool.config.ray.gateway_app_name)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(url: str, question: str):
    raw = _client(url).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": question}], max_tokens=8,
        extra_body={"trinity": {"collection": "gwdocs", "k": 2}})
    return raw.headers.get(HEADER), raw.parse()


def test_rag_chat_through_the_proxy(gateway, ray_pool):
    replica, resp = _ask(gateway, "What is the capital of France?")
    info = resp.model_extra["trinity"]
    assert replica and resp.usage.completion_tokens == 8 and resp.choices[0].finish_reason == "length"
    assert info["degraded"] is False, info
    assert 1 in info["retrieval"]["passage_ids"], info  # the Paris passage, embedded and searched by the pool
    assert info["legs"] == {"prefill": 1, "decode": 1}
    assert ray_pool.client.get("/health").status_code == 200  # the pool keeps its own prefix on the same port
    health = httpx.get(gateway + "/health", params={"deep": "true"}, timeout=30).json()
    assert health["status"] == "ok" and health["pool"] == "ok", health


def test_streaming_completion_through_the_proxy(gateway):
    stream = _client(gateway).completions.create(
        model="m", prompt="Tell me about the decode phase", max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"trinity": {"collection": "gwdocs"}})
    chunks = list(stream)
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 6
    assert chunks[-1].usage.completion_tokens == 6


def test_both_gateway_replicas_serve(gateway):
    questions = ["What is the capital of France?", "What is the capital of Japan?", "How long do cats sleep?"] * 4
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda q: _ask(gateway, q), questions))
    seen = {replica for replica, _ in answers}
    assert len(seen) == 2 and None not in seen, seen
    assert all(a.usage.completion_tokens == 8 and not a.model_extra["trinity"]["degraded"] for _, a in answers)
