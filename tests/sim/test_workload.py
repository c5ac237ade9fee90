"""Workloads, profiles, the calibration fit, option overrides, the planner."""

from __future__ import annotations

import numpy as np
import pytest

from trinity.sim.calibrate import fit
from trinity.sim.config import LengthDist, RetrievalMix, WorkloadConfig
from trinity.sim.options import build_config
from trinity.sim.profiles import PROFILE_DIR, load_model, load_search
from trinity.sim.sweep import plan_gpus
from trinity.sim.workload import arrivals, build_workload, lengths, read_azure_trace


def test_gamma_arrivals_have_the_asked_rate_and_cv():
    rng = np.random.default_rng(0)
    for cv in (1.0, 3.0):
        t = arrivals(100.0, 200.0, cv, rng)
        gaps = np.diff(t)
        assert t.size / 200.0 == pytest.approx(100.0, rel=0.05)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_lengths_and_mix():
    rng = np.random.default_rng(1)
    x = lengths(LengthDist("lognormal", 500, 0.5), 20_000, rng)
    assert x.mean() == pytest.approx(500, rel=0.03)
    w = build_workload(WorkloadConfig(rate=50, duration_s=100, retrieval=RetrievalMix(
        rag_share=0.5, cache_share=0.4, cache_hit_rate=0.5, decode_share=0.2)), seed=0)
    assert w.cache.mean() == pytest.approx(0.4, abs=0.03)
    assert w.cache_hit.mean() == pytest.approx(0.2, abs=0.03)
    assert not (w.decode_rag & ~w.rag).any()  # decode-time retrieval implies a collection


def test_azure_trace(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
                    "2023-11-16 18:15:51.1000000,879,20\n")
    t, ctx, gen = read_azure_trace(path)
    assert t[0] == 0.0 and t[1] == pytest.approx(4.314579, abs=1e-5)
    assert ctx.tolist() == [374, 396, 879] and gen.tolist() == [44, 109, 20]
    w = build_workload(WorkloadConfig(rate=1.0, duration_s=1e6, trace=str(path)), seed=0)
    assert len(w) == 3 and w.prompt.tolist() == [374, 396, 879]


def test_shipped_profiles_load_and_cite_sources():
    for path in PROFILE_DIR.glob("*.json"):
        load = load_model if '"kind": "model"' in path.read_text() else load_search
        profile = load(path.stem)
        assert profile.sources, f"{path.name}: no sources"
    assert load_model("llama-3-8b-h100").kv_capacity_tokens() > 100_000


def test_calibration_fit_recovers_a_cost_model():
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.integers(1e3, 1e6, 200), rng.integers(1e3, 1e6, 200), rng.integers(1, 50, 200)])
    secs = 1e-3 + rows[:, 0] / 5e7 + rows[:, 1] / 2e8 + rows[:, 2] * 2e-5
    secs[:5] *= 10  # a preempted thread: trimmed
    cost, q = fit(np.column_stack([rows, secs]).astype(float))
    assert cost.fixed_s == pytest.approx(1e-3, rel=0.02)
    assert cost.pairs_per_s == pytest.approx(5e7, rel=0.02)
    assert q["kept"] <= 195


def test_set_overrides():
    cfg = build_config(sets=["workload.retrieval.decode_share=0.5", "cluster.nlist=1024", "slo.ttft_ms=200"])
    assert cfg.workload.retrieval.decode_share == 0.5 and cfg.cluster.nlist == 1024 and cfg.slo.ttft_ms == 200
    with pytest.raises(ValueError):
        build_config(sets=["cluster.nope=1"])


def test_planner_finds_a_split_that_holds():
    cfg = build_config(duration=4.0, sets=["cluster.corpus_vectors=100000", "cluster.nlist=256",
                                           "workload.output.mean=32", "workload.prompt.mean=256"])
    plan = plan_gpus(cfg, 40.0, max_instances=8)
    assert plan is not None and plan.attainment >= 0.9
    assert plan.gpus == plan.prefill + plan.decode + plan.vector
    assert plan.prefill + plan.decode < 16
