"""Latency model, toy tokenizer and chat rendering of the emulated engines."""

from __future__ import annotations

import itertools

import pytest

from trinity.emulator.engine import PrefixCache
from trinity.emulator.latency import DecodeLatency, KVTransferLatency, LatencyModel, PrefillLatency
from trinity.emulator.text import count_tokens, filler_tokens, render_chat, tokenize


def test_prefill_is_linear_plus_quadratic_per_sequence() -> None:
    p = PrefillLatency(a_ms=2.0, b_ms_per_token=0.1, c_ms_per_token2=0.001)
    assert p.ms([]) == 0.0
    assert p.ms([100]) == pytest.approx(2.0 + 10.0 + 10.0)
    # the quadratic (attention) term is per sequence: two halves cost less than one whole
    assert p.ms([50, 50]) < p.ms([100])


def test_decode_step_grows_with_context_and_batch() -> None:
    d = DecodeLatency(a_ms=6.0, b_ms_per_context_token=1e-3, c_ms_per_seq=0.5)
    assert d.ms(0, 0) == 0.0
    assert d.ms(4, 1000) == pytest.approx(6.0 + 1.0 + 2.0)
    assert KVTransferLatency(a_ms=1.0, bytes_per_token=1000, bandwidth_gb_s=1.0).ms(1000) == pytest.approx(2.0)


def test_defaults_match_the_documented_roofline_sanity_numbers() -> None:
    lat = LatencyModel()
    assert lat.prefill.ms([1024]) == pytest.approx(37, abs=1.5)
    assert lat.decode.ms(64, 64 * 1000) == pytest.approx(11.2, abs=0.5)


def test_overrides_and_validation() -> None:
    lat = LatencyModel.from_overrides({"prefill.a_ms": 1.5, "decode.c_ms_per_seq": 0.2}, time_scale=0.5)
    assert (lat.prefill.a_ms, lat.decode.c_ms_per_seq, lat.time_scale) == (1.5, 0.2, 0.5)
    with pytest.raises(ValueError, match="expected prefill"):
        LatencyModel.from_overrides({"bogus": 1.0})
    with pytest.raises(ValueError):
        LatencyModel.from_overrides({"decode.nope": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        LatencyModel(prefill=PrefillLatency(a_ms=-1.0))


def test_real_tokenizer_and_filler_are_consistent_and_deterministic() -> None:
    assert tokenize("hello world!") == ["7592", "2088", "999"]  # MiniLM WordPiece ids
    assert count_tokens("PD disaggregation") == 6
    toks = list(itertools.islice(filler_tokens("prompt", seed=1), 50))
    assert toks == list(itertools.islice(filler_tokens("prompt", seed=1), 50))
    assert toks != list(itertools.islice(filler_tokens("other", seed=1), 50))
    assert all(count_tokens(t) == 1 for t in toks)  # one emitted chunk == one token
    assert count_tokens("".join(toks)) == 50


def test_chat_rendering_of_an_extended_conversation_extends_the_prefix() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    longer = [*msgs, {"role": "assistant", "content": "yo"},
              {"role": "user", "content": [{"type": "text", "text": "more"}]}]
    assert render_chat(longer).startswith(render_chat(msgs, add_generation_prompt=False))
    assert render_chat(msgs).endswith("<|assistant|>\n")


def test_prefix_cache_matches_whole_blocks_and_evicts_lru() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=3)
    toks = [str(i) for i in range(10)]
    assert cache.match(toks) == 0
    cache.insert(toks)  # 2 full blocks
    assert cache.match(toks + ["x"]) == 8
    assert cache.match(["y", *toks]) == 0  # prefix, not substring
    cache.insert([str(i) for i in range(100, 112)])  # 3 more blocks: evicts the oldest
    assert cache.match(toks) < 8
