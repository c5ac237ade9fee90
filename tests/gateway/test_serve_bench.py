"""``trinity bench serve``: vLLM-schema metrics, goodput, and a short run against the e2e stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trinity.bench.serve_bench import Outcome, bench_serve, compute_metrics, parse_goodput, parse_mix

from .conftest import E2E

VLLM_KEYS = ("completed", "failed", "request_throughput", "request_goodput", "output_throughput",
             "total_token_throughput", *(f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
                                         for s in ("mean", "median", "std", "p99")))


def test_goodput_and_mix_parsing() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == parse_goodput(["ttft:500 tpot:50"]) == {"ttft": 500, "tpot": 50}
    for bad in ("ttft", "itl:3", "ttft:x", "ttft:-1"):
        with pytest.raises(ValueError):
            parse_goodput([bad])
    assert parse_mix("rag:3,plain:1") == {"rag": 0.75, "plain": 0.25}
    with pytest.raises(ValueError):
        parse_mix("nope:1")


def test_metrics_follow_vllm_definitions() -> None:
    fast = Outcome("plain", True, prompt_len=10, output_tokens=5, ttft=0.1, latency=0.5, itl=[0.1] * 4)
    slow = Outcome("plain", True, prompt_len=10, output_tokens=5, ttft=0.9, latency=1.7, itl=[0.2] * 4)
    res = compute_metrics([fast, slow, Outcome("plain", False, error="boom")], 2.0, {"ttft": 500, "tpot": 150})
    assert (res["completed"], res["failed"], res["total_output_tokens"]) == (2, 1, 10)
    assert res["request_goodput"] == 0.5  # only the fast one meets both SLOs
    assert res["mean_tpot_ms"] == pytest.approx((100 + 200) / 2)  # (e2el - ttft) / (n - 1)
    assert res["median_ttft_ms"] == pytest.approx(500) and res["errors"] == ["boom"]


def test_short_run_against_the_gateway(e2e: E2E, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    res = bench_serve(["tpot:500"], base_url=e2e.gateway, num_prompts=12, rate=20.0, output_len=8,
                      goodput=["ttft:5000"], collection="docs", mix="rag:1,rag_decode:1,repeat:1", k=2,
                      retrieval_interval=4, out=out)
    assert all(k in res for k in VLLM_KEYS)
    assert res["completed"] == 12 and res["failed"] == 0 and res["trinity_prefill_retrievals"] > 0
    assert json.loads(out.read_text())["goodput_slos_ms"] == {"ttft": 5000.0, "tpot": 500.0}
