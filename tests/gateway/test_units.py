"""Gateway building blocks without processes: routing, PD bodies, options, prompt rewriting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from trinity.client.pool import PoolError, _parse_search
from trinity.errors import BadRequest
from trinity.gateway.backends.instances import InstancePool
from trinity.gateway.backends.vllm_pd import PREFILL_KV_TRANSFER_PARAMS, prefill_body
from trinity.gateway.cli import build_config
from trinity.gateway.config import GatewayConfig, UpstreamConfig
from trinity.gateway.decode import answer_tail, combined_query
from trinity.gateway.options import resolve_options
from trinity.gateway.request import ClientRequest, augment, continuation_body
from trinity.gateway.retrieval import EmbedBatcher, Passage


def test_routing_prefers_the_least_loaded_instance_and_rotates_ties() -> None:
    async def go() -> None:
        pool = InstancePool("decode", ["http://a", "http://b", "http://c"], UpstreamConfig())
        a, b, c = pool.instances
        a.inflight, b.inflight, c.inflight = 3, 1, 1
        assert {pool.pick().url for _ in range(4)} == {"http://b", "http://c"}
        b.inflight = 0
        assert all(pool.pick() is b for _ in range(3))
        pool.mark_down(b)  # a refused connection: skipped while others remain
        assert pool.pick() is c
        assert pool.pick(exclude=[c]) is a
        async with pool.use(a):
            assert a.inflight == 4
        assert a.inflight == 3
        await pool.aclose()

    asyncio.run(go())


def test_prefill_body_is_what_vllms_proxy_sends() -> None:
    client = {"model": "m", "prompt": "p", "max_tokens": 50, "stream": True, "stream_options": {"include_usage": True},
              "min_tokens": 3, "temperature": 0.2, "max_completion_tokens": 50}
    body = prefill_body(client)
    assert body["kv_transfer_params"] == PREFILL_KV_TRANSFER_PARAMS
    assert PREFILL_KV_TRANSFER_PARAMS == {"do_remote_decode": True, "do_remote_prefill": False,
                                          "remote_engine_id": None, "remote_block_ids": None, "remote_host": None,
                                          "remote_port": None}
    assert body["stream"] is False and body["max_tokens"] == 1 and body["max_completion_tokens"] == 1
    assert "stream_options" not in body and "min_tokens" not in body and body["temperature"] == 0.2
    assert client["max_tokens"] == 50  # the client body is untouched


PD = {"backend": {"prefill_urls": ["http://127.0.0.1:8100"], "decode_urls": ["http://127.0.0.1:8200"]}}


def test_options_precedence_config_then_headers_then_body() -> None:
    cfg = GatewayConfig(**PD)
    opts = resolve_options(cfg, None, {}, "default")
    assert (opts.collection, opts.k, opts.ttft_ms, opts.answer_cache) == (None, 4, 1000.0, True)
    hdrs = {"x-trinity-collection": "docs", "x-trinity-k": "7", "x-slo-ttft-ms": "250", "x-trinity-answer-cache": "off"}
    opts = resolve_options(cfg, {"k": 2}, hdrs, "t1")
    assert (opts.collection, opts.k, opts.ttft_ms, opts.answer_cache, opts.tenant) == ("docs", 2, 250.0, False, "t1")
    for bad, param in (({"k": 0}, "trinity.k"), ({"k": "x"}, "trinity.k"), ({"bogus": 1}, "trinity"),
                       ({"on_pool_error": "maybe"}, "on_pool_error"), ({"answer_cache": "perhaps"}, "trinity.answer")):
        with pytest.raises(BadRequest) as exc:
            resolve_options(cfg, bad, {}, "t")
        assert exc.value.field.startswith(param)
    with pytest.raises(BadRequest, match="x-slo-tpot-ms"):
        resolve_options(cfg, None, {"x-slo-tpot-ms": "nan"}, "t")


def test_config_file_sections_and_cli_flags(tmp_path: Any) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('port = 9000\n[backend]\nkind = "openai"\ndecode_urls = ["http://x:1"]\nprefill_urls = []\n'
                    '[slo]\nttft_ms = 300\n[retrieval]\ncollection = "docs"\n')
    cfg = build_config(path, tpot_ms=42.0, decode_urls=["http://y:2", "http://z:3"])
    assert (cfg.port, cfg.backend.kind, cfg.slo.ttft_ms, cfg.slo.tpot_ms) == (9000, "openai", 300.0, 42.0)
    assert cfg.backend.decode_urls == ("http://y:2", "http://z:3") and cfg.retrieval.collection == "docs"
    with pytest.raises(ValueError, match="unknown keys"):
        GatewayConfig(**{"slo": {"ttft": 1}})
    with pytest.raises(ValueError, match="prefill"):
        GatewayConfig(**{"backend": {"kind": "vllm-pd", "prefill_urls": []}})
    pd = build_config(None, kind="vllm-pd", prefill_urls=["http://p"], decode_urls=["http://d"])
    assert pd.backend.prefill_urls == ("http://p",)
    for bad, match in (({"kind": "vllm-pd", "decode_urls": ["http://d"]}, "--prefill"),  # no silent default
                       ({"kind": "openai", "decode_urls": ["127.0.0.1:8000"]}, "not an http"),
                       ({"kind": "openai", "decode_urls": ["http://d"], "pool_url": "pool:8077"}, "pool_url")):
        with pytest.raises(ValueError, match=match):
            build_config(None, **bad)


def test_client_request_parsing() -> None:
    req = ClientRequest.parse("completions", {"model": "m", "prompt": ["hi"], "stream": True,
                                              "stream_options": {"include_usage": True}})
    assert (req.query, req.max_tokens, req.stream, req.include_usage) == ("hi", 16, True, True)
    assert "stream" not in req.upstream_body() and "stream_options" not in req.upstream_body()
    chat = ClientRequest.parse("chat", {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                                                  {"role": "user", "content": "q?"}]}, "override")
    assert chat.query == "be brief\nq?" and chat.max_tokens is None and chat.model == "override"
    for endpoint, body, param in (("completions", {"prompt": [1, 2]}, "prompt"), ("chat", {"messages": []}, "messages"),
                                  ("completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
                                  ("completions", {"prompt": "x", "n": 0}, "n")):
        with pytest.raises(BadRequest) as exc:
            ClientRequest.parse(endpoint, body)
        assert exc.value.field == param


def test_augmentation_and_continuations_keep_prefixes() -> None:
    passages = [Passage(1, 0.9, "Paris is in France."), Passage(2, 0.8, "Tokyo is in Japan.")]
    comp = ClientRequest.parse("completions", {"model": "m", "prompt": "Capital of France?"})
    body = augment(comp, passages)
    assert body["prompt"].endswith("Capital of France?") and "[2] Tokyo" in body["prompt"]
    leg2 = continuation_body(comp, {**body, "kv_transfer_params": {"x": 1}}, " It is", passages[:1])
    assert leg2["prompt"].startswith(body["prompt"] + " It is") and "kv_transfer_params" not in leg2
    chat = ClientRequest.parse("chat", {"model": "m", "messages": [{"role": "system", "content": "S"},
                                                                  {"role": "user", "content": "Q"}]})
    cbody = augment(chat, passages)
    assert len(cbody["messages"]) == 2 and cbody["messages"][0]["content"].startswith("S\n\n")  # merged
    no_passage = continuation_body(chat, cbody, " A", [])
    assert no_passage["messages"][-1] == {"role": "assistant", "content": " A"}
    assert no_passage["continue_final_message"] is True and no_passage["add_generation_prompt"] is False
    again = continuation_body(chat, no_passage, " B", passages[:1])
    assert again["messages"][2] == {"role": "assistant", "content": " A B"} and again["messages"][3]["role"] == "user"
    assert "continue_final_message" not in again


def test_search_parsing_and_rejections() -> None:
    data = {"results": [{"ids": [3, 1], "scores": [0.9, 0.5], "payloads": [{"text": "t"}, None], "status": "complete",
                         "partial": False, "fraction_scanned": 1.0, "timings": {"queue_ms": 0.1}}],
            "timings": {"total_ms": 1.0}}
    res = _parse_search(data, 2.0)
    assert [h.id for h in res.hits] == [3, 1] and res.hits[0].payload == {"text": "t"}
    assert res.timings_ms == {"total_ms": 1.0, "queue_ms": 0.1}
    data["results"][0]["status"] = "rejected"
    with pytest.raises(PoolError) as exc:
        _parse_search(data, 1.0)
    assert exc.value.kind == "overloaded"


def test_embed_batcher_coalesces_concurrent_requests() -> None:
    class Fake:
        calls: list[int] = []

        def encode(self, texts: list[str]) -> np.ndarray:
            self.calls.append(len(texts))
            return np.array([[float(len(t))] for t in texts], dtype=np.float32)

    async def go() -> tuple[list[list[float]], list[int]]:
        fake = Fake()
        batcher = EmbedBatcher(fake)
        out = await asyncio.gather(*(batcher.embed("x" * i) for i in range(1, 9)))
        await batcher.aclose()
        return out, fake.calls

    out, calls = asyncio.run(go())
    assert out == [[float(i)] for i in range(1, 9)]
    assert sum(calls) == 8 and len(calls) < 8


def test_embed_batcher_decode_texts_never_wait_behind_a_prefill_batch() -> None:
    log: list[tuple[str, str, list[str]]] = []

    class Slow:
        def __init__(self, name: str) -> None:
            self.name = name

        def encode(self, texts: list[str]) -> np.ndarray:
            log.append(("start", self.name, list(texts)))
            time.sleep(0.1)
            log.append(("end", self.name, list(texts)))
            return np.zeros((len(texts), 1), dtype=np.float32)

    async def go() -> None:
        batcher = EmbedBatcher(Slow("prefill-lane"), decode_embedder=Slow("decode-lane"))
        first = asyncio.ensure_future(batcher.embed("busy", "prefill"))  # holds the prefill lane
        await asyncio.sleep(0.02)
        waiting = [batcher.embed(f"p{i}", "prefill") for i in range(3)] + [batcher.embed("d", "decode")]
        await asyncio.gather(first, *waiting)
        await batcher.aclose()

    asyncio.run(go())
    assert log.index(("start", "decode-lane", ["d"])) < log.index(("end", "prefill-lane", ["busy"]))
    starts = [(lane, sorted(texts)) for ev, lane, texts in log if ev == "start"]
    assert starts == [("prefill-lane", ["busy"]), ("decode-lane", ["d"]), ("prefill-lane", ["p0", "p1", "p2"])]


def test_embed_batcher_lanes_sharing_one_model_take_turns() -> None:
    """A local model's tokenizer raises "Already borrowed" when two threads use it at once
    (huggingface/tokenizers#537): the decode and prefill lanes of one model never overlap."""
    busy, overlaps = [0], []

    class Shared:
        def encode(self, texts: list[str]) -> np.ndarray:
            busy[0] += 1
            overlaps.append(busy[0] > 1)
            time.sleep(0.02)
            busy[0] -= 1
            return np.zeros((len(texts), 1), dtype=np.float32)

    async def go() -> None:
        batcher = EmbedBatcher(Shared())
        await asyncio.gather(*(batcher.embed(f"t{i}", "decode" if i % 2 else "prefill") for i in range(12)))
        await batcher.aclose()

    asyncio.run(go())
    assert overlaps and not any(overlaps)


def test_decode_query_embeds_a_bounded_answer_tail() -> None:
    assert answer_tail([" the", " vector", " pool"] * 20, 4) == "pool the vector pool"  # the last 4 tokens
    assert answer_tail([" a"] * 10 + [" " + "x" * 50], 4) == "x" * 32  # at most 8 characters a token
    assert answer_tail([" a", " b"], 16) == "a b"
    cfg = GatewayConfig(backend={"prefill_urls": ["http://p"], "decode_urls": ["http://d"]})
    assert cfg.retrieval.decode_tail_tokens == 16 and not cfg.retrieval.embed_decode_lane
    assert combined_query([1.0, 0.0], [0.0, 1.0], cfg.retrieval.decode_tail_weight) == pytest.approx(
        [1 / 5 ** 0.5, 2 / 5 ** 0.5])  # the tail weighs twice the query (whose passages are in the prompt)
