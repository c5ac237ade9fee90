"""``trinity bench serve``: vLLM-schema metrics, goodput, and a short run against the e2e stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trinity.bench.serve_bench import Outcome, bench_serve, check_base_url, compute_metrics, parse_goodput, parse_mix
from trinity.bench.serve_metrics import parse_percentiles

from .conftest import E2E

VLLM_KEYS = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
             "request_goodput", "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
             "max_concurrent_requests", "input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors",
             "backend", "endpoint_type", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
             "burstiness", "max_concurrency", *(f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
                                                 for s in ("mean", "median", "std", "p50", "p99")))


def test_goodput_and_mix_parsing() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == parse_goodput(["ttft:500 tpot:50"]) == {"ttft": 500, "tpot": 50}
    for bad in ("ttft", "itl:3", "ttft:x", "ttft:-1"):
        with pytest.raises(ValueError):
            parse_goodput([bad])
    assert parse_mix("rag:3,plain:1") == {"rag": 0.75, "plain": 0.25}
    with pytest.raises(ValueError):
        parse_mix("nope:1")
    assert parse_percentiles("ttft,itl", "50,99.9") == (("ttft", "itl"), (50.0, 99.9))
    for metrics, pcts in (("ttft,nope", "99"), ("ttft", "0"), ("ttft", "x")):
        with pytest.raises(ValueError):
            parse_percentiles(metrics, pcts)
    assert check_base_url("http://h:8000/v1/") == "http://h:8000"
    with pytest.raises(ValueError, match="http"):
        check_base_url("h:8000")


def test_metrics_follow_vllm_definitions() -> None:
    fast = Outcome("plain", True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1] * 4)
    slow = Outcome("plain", True, prompt_len=10, output_tokens=5, ttft=0.9, latency=1.7, itl=[0.2] * 4)
    res = compute_metrics([fast, slow, Outcome("plain", False, error="boom")], 2.0, {"ttft": 500, "tpot": 150})
    assert (res["completed"], res["failed"], res["total_output_tokens"]) == (2, 1, 10)
    assert res["request_goodput"] == 0.5  # only the fast one meets both SLOs
    assert res["mean_tpot_ms"] == pytest.approx((100 + 200) / 2)  # (e2el - ttft) / (n - 1)
    assert res["median_ttft_ms"] == pytest.approx(500) and res["error_summary"] == ["boom"]
    assert res["errors"] == ["", "", "boom"] and res["output_lens"] == [5, 5, 0] and res["ttfts"][0] == 0.1


def test_retrieval_latency_has_one_definition_for_both_stages() -> None:
    prefill = {"ms": 20.0, "embed_ms": 10.0, "cache_ms": 4.0, "search_ms": 2.0, "network_ms": 3.0}
    decode = {"ms": 13.0, "embed_ms": 8.0, "cache_ms": 0.0, "search_ms": 2.0, "network_ms": 2.5, "stall_ms": 0.1}
    o = Outcome("rag_decode", True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1] * 4)
    o.trinity = {"timings_ms": {"embed": 10.0, "cache_lookup": 4.0, "retrieval": 5.0}, "retrieval": prefill,
                 "decode_retrievals": [decode, {"error": "timeout", "ms": 90.0, "stall_ms": 100.0}]}
    hit = Outcome("repeat", True, prompt_len=10, output_tokens=5, ttft=0.01, latency=0.1, itl=[0.02] * 4)
    hit.trinity = {"timings_ms": {"embed": 9.0, "cache_lookup": 3.0}, "cache": "hit", "retrieval": None}
    res = compute_metrics([o, hit], 1.0, {})
    # the prefill figure includes its embedding and cache lookups, as the decode one includes its embedding;
    # a failed retrieval and an answer-cache hit (no retrieval) are not retrievals
    assert res["median_retrieval_prefill_ms"] == 20.0 and res["median_retrieval_decode_ms"] == 13.0
    assert res["median_retrieval_prefill_embed_ms"] == 10.0 and res["median_retrieval_prefill_cache_ms"] == 4.0
    assert res["median_retrieval_decode_cache_ms"] == 0.0 and res["p99_retrieval_decode_network_ms"] == 2.5
    assert res["median_decode_stall_ms"] == pytest.approx(50.05)


def test_short_run_against_the_gateway(e2e: E2E, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    res = bench_serve(["tpot:500"], base_url=e2e.gateway, num_prompts=12, rate=20.0, output_len=8,
                      goodput=["ttft:5000"], collection="docs", mix="rag:1,rag_decode:1,repeat:1", k=2,
                      retrieval_interval=4, out=out, metric_percentiles="50,99")
    assert all(k in res for k in VLLM_KEYS), [k for k in VLLM_KEYS if k not in res]
    assert res["completed"] == 12 and res["failed"] == 0 and res["trinity_prefill_retrievals"] > 0
    assert len(res["generated_texts"]) == 12 and all(res["generated_texts"]) and min(res["input_lens"]) > 0
    assert res["max_concurrent_requests"] >= 1 and res["model_id"] == "m"
    assert res["median_retrieval_prefill_search_ms"] > 0 and res["median_retrieval_prefill_network_ms"] > 0
    assert json.loads(out.read_text())["goodput_slos_ms"] == {"ttft": 5000.0, "tpot": 500.0}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_no_answer_cache_makes_reruns_measure_the_engines(e2e: E2E, tmp_path: Path) -> None:
    kw = dict(base_url=e2e.gateway + "/v1", num_prompts=6, output_len=4, mix="plain:1", seed=7, plot=False)
    bench_serve(out=tmp_path / "a.json", **kw)
    cached = bench_serve(out=tmp_path / "b.json", **kw)
    fresh = bench_serve(out=tmp_path / "c.json", answer_cache=False, **kw)
    # NOTE: a lookup past its deadline on a loaded machine is a miss, hence not all 6
    assert cached["trinity_cache_hits"] >= 4 and fresh["trinity_cache_hits"] == 0
    assert cached["total_input_tokens"] == fresh["total_input_tokens"] > 0  # hits report the prompt's tokens
