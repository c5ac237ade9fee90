"""The emulated engine's step loop: timing, continuous batching, PD handshake, prefix cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from trinity.emulator.engine import EmulatedEngine, EngineConfig, Finished, Sequence, TokenEvent
from trinity.emulator.latency import DecodeLatency, LatencyModel, PrefillLatency
from trinity.emulator.text import tokenize


def _run(fn: Callable[[EmulatedEngine], Awaitable[Any]], **cfg: Any) -> Any:
    async def main() -> Any:
        engine = EmulatedEngine(EngineConfig(**cfg))
        engine.start()
        try:
            return await fn(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


async def _drain(engine: EmulatedEngine, seq: Sequence) -> tuple[list[str], Finished]:
    texts: list[str] = []
    async for ev in engine.events(seq):
        if isinstance(ev, TokenEvent):
            texts.append(ev.text)
        else:
            return texts, ev
    raise AssertionError("no Finished event")


def _metric(engine: EmulatedEngine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, {"model_name": engine.config.model, "engine": "0", **labels})
    return value or 0.0


def test_generation_takes_at_least_the_modelled_time() -> None:
    lat = LatencyModel(prefill=PrefillLatency(a_ms=20.0), decode=DecodeLatency(a_ms=10.0))

    async def go(engine: EmulatedEngine) -> tuple[float, list[str], Finished]:
        seq = Sequence("r", tokenize("a short prompt"), max_tokens=10)
        t0 = time.monotonic()
        engine.add(seq, None)
        texts, fin = await _drain(engine, seq)
        return time.monotonic() - t0, texts, fin

    elapsed, texts, fin = _run(go, latency=lat)
    model_s = (20.0 + 0.0325 * 4 + 9 * 10.0) / 1e3  # one prefill step (first token), nine decode steps
    assert len(texts) == 10 and fin.completion_tokens == 10 and fin.reason == "length"
    assert model_s * 0.95 <= elapsed < model_s * 3 + 0.3  # upper bound loose: shared CI CPUs


def test_running_batch_never_exceeds_max_num_seqs() -> None:
    async def go(engine: EmulatedEngine) -> tuple[int, list[float]]:
        seqs = [Sequence(f"r{i}", tokenize(f"prompt {i}"), max_tokens=4) for i in range(5)]
        for s in seqs:
            engine.add(s, None)
        peak = 0
        tasks = [asyncio.create_task(_drain(engine, s)) for s in seqs]
        while not all(t.done() for t in tasks):
            peak = max(peak, engine.num_running)
            await asyncio.sleep(0.001)
        finish = [s.arrival for s in seqs]
        return peak, finish

    peak, _ = _run(go, max_num_seqs=2, latency=LatencyModel(time_scale=0.5))
    assert peak == 2


def test_pd_handshake_prefill_returns_blocks_and_decode_skips_prefill() -> None:
    async def go(engine: EmulatedEngine) -> tuple[Finished, Finished, float, float]:
        prompt = tokenize("x " * 40)  # 40 tokens -> 3 blocks of 16
        p = Sequence("r", prompt, max_tokens=50)
        engine.add(p, {"do_remote_decode": True, "do_remote_prefill": False})
        p_texts, p_fin = await _drain(engine, p)
        assert len(p_texts) == 1  # prefill-only: one token, whatever max_tokens says
        computed = _metric(engine, "trinity_emulator_prefill_computed_tokens_total")
        d = Sequence("r", prompt, max_tokens=5)
        engine.add(d, p_fin.kv_transfer_params)
        _, d_fin = await _drain(engine, d)
        return p_fin, d_fin, computed, _metric(engine, "trinity_emulator_prefill_computed_tokens_total")

    p_fin, d_fin, before, after = _run(go, role="decode")
    kv = p_fin.kv_transfer_params
    assert kv["do_remote_prefill"] is True and kv["do_remote_decode"] is False
    assert len(kv["remote_block_ids"]) == 3 and kv["remote_engine_id"]
    assert d_fin.completion_tokens == 5 and after == before  # the decode leg prefilled nothing


def test_decode_role_counts_requests_without_kv_params_and_prefix_cache_serves_extensions() -> None:
    async def go(engine: EmulatedEngine) -> tuple[float, float, float]:
        prompt = tokenize("word " * 64)
        first = Sequence("a", prompt, max_tokens=16)
        engine.add(first, None)
        texts, _ = await _drain(engine, first)
        hits_before = _metric(engine, "vllm:prefix_cache_hits_total")
        cont = Sequence("b", prompt + tokenize("".join(texts)) + tokenize("new passage text"), max_tokens=2)
        engine.add(cont, None)
        await _drain(engine, cont)
        return (_metric(engine, "trinity_emulator_requests_without_kv_transfer_total"), hits_before,
                _metric(engine, "vllm:prefix_cache_hits_total"))

    no_kv, hits_before, hits_after = _run(go, role="decode")
    assert no_kv == 2
    assert hits_before == 0 and hits_after == 80  # 64 prompt + 16 generated tokens, whole blocks


def test_abort_frees_the_slot_and_ends_the_stream() -> None:
    async def go(engine: EmulatedEngine) -> tuple[Finished, int, float]:
        seq = Sequence("r", tokenize("hello"), max_tokens=10_000)
        engine.add(seq, None)
        await asyncio.sleep(0.05)
        engine.abort(seq)
        _, fin = await _drain(engine, seq)
        await asyncio.sleep(0.05)
        return fin, engine.num_running, _metric(engine, "vllm:request_success_total", finished_reason="abort")

    fin, running, aborted = _run(go)
    assert fin.reason == "abort" and running == 0 and aborted == 1
