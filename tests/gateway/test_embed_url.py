"""``--embed-url``: the gateway embeds queries on an OpenAI-compatible ``/v1/embeddings`` server
(here a real HTTP server on loopback with a deterministic 384-d hashing "model")."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from trinity.stack.process import free_port

from .conftest import E2E, _gateway


def _vector(text: str) -> list[float]:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
    v = rng.standard_normal(384)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture(scope="module")
def embed_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    app, seen = FastAPI(), []

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "hash-384", "object": "model"}]}

    @app.post("/v1/embeddings")
    async def embeddings(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"object": "list", "model": body["model"], "usage": {"prompt_tokens": 0, "total_tokens": 0},
                "data": [{"object": "embedding", "index": i, "embedding": _vector(t)} for i, t in enumerate(texts)]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", seen
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def gateway_embed_url(e2e: E2E, embed_server: tuple[str, list]) -> Iterator[str]:
    yield from _gateway(e2e, "gateway-embed-url", e2e.pool, "--embed", "openai", "--embed-url",
                        embed_server[0])


def test_queries_are_embedded_on_the_embedding_server(gateway_embed_url: str, embed_server: tuple[str, list]) -> None:
    _, seen = embed_server
    before = len(seen)
    r = httpx.post(gateway_embed_url + "/v1/completions", timeout=30, json={
        "model": "m", "prompt": "What does the decode phase do?", "max_tokens": 6,
        "trinity": {"collection": "docs", "k": 2, "retrieval_interval": 3, "answer_cache": False}})
    assert r.status_code == 200, r.text
    info = r.json()["trinity"]
    assert len(info["retrieval"]["passage_ids"]) == 2 and info["timings_ms"]["embed"] > 0
    assert info["decode_retrievals"] and all("embed_ms" in d for d in info["decode_retrievals"])
    assert len(seen) > before and seen[-1]["model"] == "hash-384"  # the first /v1/models entry
    assert any("What does the decode phase do?" in t for b in seen[before:] for t in b["input"])
    metrics = httpx.get(gateway_embed_url + "/metrics").text
    for stage, part in (("prefill", "embed"), ("prefill", "search"), ("prefill", "network"), ("decode", "embed")):
        assert f'trinity_gateway_retrieval_part_seconds_count{{part="{part}",stage="{stage}"}}' in metrics


def test_bad_embed_url_is_refused_at_startup() -> None:
    from trinity.gateway.cli import build_config

    with pytest.raises(ValueError, match="embed_url"):
        build_config(None, prefill_urls=["http://p"], decode_urls=["http://d"], embed="openai", embed_url="host:8400")
    with pytest.raises(ValueError, match="embed=pool"):
        build_config(None, prefill_urls=["http://p"], decode_urls=["http://d"], embed="pool", embed_url="http://e/v1")
