"""Smoke tests of ``trinity bench engine`` (synthetic data, low rates, short streams)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from trinity.bench.engine_bench import EngineBenchConfig, parse_float_list, run_engine_bench  # noqa: E402
from trinity.bench.engine_report import _summary_lines, merge_repeats, summarize  # noqa: E402
from trinity.bench.gpu_time import GpuBusy, union_ns  # noqa: E402
from trinity.bench.static_batcher import StaticBatcher, faiss_ivf_like, torch_ivf_like  # noqa: E402
from trinity.bench.workload import (  # noqa: E402
    DEFAULT_CLASSES, OpenLoopDriver, RequestClass, Status, parse_class, poisson_schedule,
)
from trinity.index import IVFIndex  # noqa: E402


def _data(n=3000, q=64, dim=384, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, dim)).astype(np.float32)
    x = centers[rng.integers(0, 64, n + q)] + 0.6 * rng.standard_normal((n + q, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


@pytest.fixture(scope="module")
def indexes():
    xb, xq = _data()
    ivf = IVFIndex(xb.shape[1], 32, metric="ip")
    ivf.train(xb, seed=0)
    ivf.add(xb)
    return ivf, faiss_ivf_like(ivf, xb), xq


def test_faiss_peer_shares_trinity_lists(indexes):
    ivf, peer, xq = indexes
    sizes = np.array([peer.invlists.list_size(i) for i in range(ivf.nlist)])
    assert np.array_equal(sizes, ivf.list_sizes())
    _, ids_t = ivf.search(xq, 10, nprobe=4)
    _, ids_f = peer.search(xq, 10, params=faiss.SearchParametersIVF(nprobe=4))
    assert (ids_t == ids_f).mean() > 0.99  # equal up to float ties


def test_static_batcher_matches_faiss_for_a_group(indexes):
    _, peer, xq = indexes
    k, nprobe = 5, 3
    _, want = peer.search(xq[:20], k, params=faiss.SearchParametersIVF(nprobe=nprobe))
    # One group of exactly max_batch: dispatched as one faiss call, same as the reference.
    with StaticBatcher(peer, max_batch=20, max_wait_ms=10_000.0) as batcher:
        futs = [batcher.submit(q, k, nprobe) for q in xq[:20]]
        got = np.stack([f.result(timeout=10)[1] for f in futs])
        assert batcher.stats.batches == 1 and batcher.stats.requests == 20
    assert np.array_equal(got, want)
    # Smaller batches, another (k, nprobe) group interleaved, timer-driven dispatch.
    with StaticBatcher(peer, max_batch=8, max_wait_ms=1.0) as batcher:
        futs = [batcher.submit(q, k, nprobe) for q in xq[:20]]
        other = batcher.submit(xq[0], 2, 7)
        got = np.stack([f.result(timeout=10)[1] for f in futs])
        assert other.result(timeout=10)[1].shape == (2,)
        assert batcher.stats.requests == 21 and batcher.stats.batches >= 4
    assert (got == want).mean() >= 0.99  # equal up to float ties (BLAS vs direct coarse scoring)


def test_static_batcher_dispatches_full_groups_without_waiting(indexes):
    _, peer, xq = indexes
    with StaticBatcher(peer, max_batch=4, max_wait_ms=10_000.0) as batcher:  # only size can trigger
        futs = [batcher.submit(q, 3, 2) for q in xq[:8]]
        for f in futs:
            assert f.result(timeout=10)[1].shape == (3,)
        assert batcher.stats.batches == 2


def test_torch_peer_batches_over_trinitys_own_lists(indexes):
    """The GPU peer (gather + bmm + topk over Trinity's lists) behind the same batcher."""
    ivf, _, xq = indexes
    peer = torch_ivf_like(ivf)
    assert peer.lists is ivf.lists and peer.scan_backend == "torch" and ivf.scan_backend == "auto"
    _, want = ivf.search(xq[:16], 5, nprobe=3)
    with StaticBatcher(peer, max_batch=16, max_wait_ms=10_000.0) as batcher:
        got = np.stack([f.result(timeout=10)[1] for f in [batcher.submit(q, 5, 3) for q in xq[:16]]])
        assert batcher.stats.batches == 1
    assert (got == want).mean() >= 0.99  # equal up to float ties


def test_gpu_busy_measures_nothing_without_cuda_and_unions_spans():
    with GpuBusy() as busy:
        pass
    if not busy.enabled:
        assert busy.seconds is None and busy.error is None
    assert union_ns([]) == 0
    assert union_ns([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17


def test_engine_bench_config_checks_device_and_peer():
    assert EngineBenchConfig(data="synthetic").peer_kind == "faiss"
    assert EngineBenchConfig(data="synthetic", peer="torch").peer_kind == "torch"
    with pytest.raises(ValueError, match="device"):
        EngineBenchConfig(data="synthetic", device="tpu")
    with pytest.raises(ValueError, match="peer"):
        EngineBenchConfig(data="synthetic", peer="cuvs")
    with pytest.raises(ValueError, match="CPU peer"):
        EngineBenchConfig(data="synthetic", device="cuda", peer="faiss")


def test_poisson_schedule_is_seeded_and_mixes_classes():
    a = poisson_schedule(2000, 2.0, DEFAULT_CLASSES, 100, seed=3)
    b = poisson_schedule(2000, 2.0, DEFAULT_CLASSES, 100, seed=3)
    assert np.array_equal(a.times, b.times) and np.array_equal(a.cls, b.cls)
    assert abs(len(a) - 4000) < 5 * math.sqrt(4000)
    assert np.all(np.diff(a.times) >= 0) and a.times[-1] < 2.0
    shares = np.bincount(a.cls, minlength=3) / len(a)
    assert np.allclose(shares, [0.5, 0.3, 0.2], atol=0.04)
    assert parse_class("rag:prefill:32:128:150:0.3") == RequestClass("rag", "prefill", 32, 128, 150.0, 0.3)
    with pytest.raises(ValueError):
        parse_class("rag:nowhere:32:128:150:0.3")
    assert parse_float_list("500, 1000") == (500.0, 1000.0)


def test_open_loop_driver_counts_lag_from_scheduled_time():
    sched = poisson_schedule(500, 0.2, DEFAULT_CLASSES, 10, seed=1)

    def submit(i, rec, lag_s):
        rec.complete(i, Status.COMPLETE)

    driver = OpenLoopDriver(sched, submit)
    driver.start()
    rec = driver.join()
    assert driver.wait_done(1.0) and rec.outstanding == 0
    lat = rec.latency_ms()
    assert np.all(lat >= 0) and np.all(np.isfinite(lat))


def test_engine_bench_smoke(tmp_path):
    out = tmp_path / "engine.json"
    cfg = EngineBenchConfig(data="synthetic", num_vectors=4000, nlist=32, num_queries=64, rates=(100.0, 200.0),
                            duration_s=0.5, warmup_s=0.2, drain_cap_s=5.0, settle_s=0.05, out=out, plot=True)
    payload = run_engine_bench(cfg)
    saved = json.loads(out.read_text())
    assert {"bench", "machine", "params", "data", "index", "runs", "summary"} <= saved.keys()
    assert saved["bench"] == "engine" and saved["data"]["source"] == "synthetic"
    assert len(saved["runs"]) == 2 * 3
    assert {(r["rate"], r["system"]) for r in saved["runs"]} == {
        (r, s) for r in (100.0, 200.0) for s in ("static", "trinity-fifo", "trinity")}
    for row in saved["runs"]:
        for key in ("throughput_rps", "miss_pct", "late_pct", "partial_pct", "unfinished_pct", "agree_with_peer"):
            assert key in row
        for c in ("decode", "rag", "cache"):
            assert {f"{c}_p50_ms", f"{c}_p99_ms", f"{c}_miss_pct"} <= row.keys()
        assert row["requests"] > 0 and row["unfinished_pct"] == 0.0
        assert row["bandwidth_gbs"] > 0  # the machine's phase right before this run
        if row["system"] == "static":
            assert row["agree_with_peer"] >= 0.99
        else:  # the engine's host phases per iteration
            parts = ("schedule_ms", "runner_ms", "update_ms")
            assert all(row[k] > 0 for k in parts) and row["step_ms"] >= sum(row[k] for k in parts)
            assert row["runner_ms"] >= row["scan_ms"] > 0 and row["assign_prepared_ms"] > 0
    summary = saved["summary"]
    assert {"static_crossing_rate", "sustained_rate", "lines"} <= summary.keys()
    assert set(summary["sustained_rate"]) == {"static", "trinity-fifo", "trinity"}
    assert (tmp_path / "engine.png").stat().st_size > 0
    assert payload["json"] == str(out)
    bandwidth = saved["memory_bandwidth_gbs"]  # the machine's phase, probed before and after the runs
    assert set(bandwidth) == {"start", "end"} and all(v > 0 for v in bandwidth.values())


def _row(rate, system, decode_p99, miss=0.0, rag_p99=50.0, cache_p99=5.0):
    return {"rate": rate, "system": system, "throughput_rps": rate, "miss_pct": miss, "decode_p50_ms": 1.0,
            "decode_p99_ms": decode_p99, "decode_miss_pct": miss, "rag_p50_ms": 1.0, "rag_p99_ms": rag_p99,
            "rag_miss_pct": 0.0, "cache_p50_ms": 1.0, "cache_p99_ms": cache_p99, "cache_miss_pct": 0.0,
            "p99_within_deadlines": True, "sustained": True}


def test_repeats_merge_to_medians_and_recompute_the_flags():
    cfg = EngineBenchConfig(data="synthetic", repeats=3)
    runs = [_row(1000.0, "trinity", p99, miss) for p99, miss in ((12.0, 0.5), (30.0, 3.0), (14.0, 0.2))]
    (row,) = merge_repeats([{**r, "repeat": i} for i, r in enumerate(runs)], cfg)
    assert row["repeats"] == 3 and row["decode_p99_ms"] == 14.0 and row["miss_pct"] == 0.5
    assert row["decode_p99_ms_min"] == 12.0 and row["decode_p99_ms_max"] == 30.0
    assert row["p99_within_deadlines"] and row["sustained"]  # from the medians, not the outlier run
    (row,) = merge_repeats([_row(1000.0, "static", 25.0), _row(1000.0, "static", 26.0)], cfg)
    assert not row["p99_within_deadlines"] and not row["sustained"]


def test_summary_interpolates_where_static_hits_the_deadline():
    cfg = EngineBenchConfig(data="synthetic", rates=(1000.0, 2000.0))
    rows = [_row(1000.0, "static", 10.0), _row(2000.0, "static", 30.0),
            _row(1000.0, "trinity", 8.0), _row(2000.0, "trinity", 12.0)]
    summary = summarize(rows, cfg)
    assert summary["static_crossing_rate"] == 2000.0 and summary["trinity"]["decode_p99_ratio"] == 12.0 / 30.0
    ip = summary["interpolated"]  # static reaches 20 ms half way: Trinity ~10 ms there
    assert ip["rate"] == 1500.0 and ip["trinity_decode_p99_ms"] == 10.0 and ip["ratio"] == 0.5


def test_summary_leaves_undecided_what_the_grid_cannot_decide():
    cfg = EngineBenchConfig(data="synthetic", rates=(1000.0, 1250.0), systems=("static", "trinity"))
    static = [_row(r, "static", 25.0) for r in (1000.0, 1250.0)]
    for row in static:
        row["sustained"] = False
    trinity = [_row(1000.0, "trinity", 5.0), _row(1250.0, "trinity", 6.0)]
    summary = summarize(static + trinity, cfg)
    # static is past its deadline at the lowest rate: its crossing lies below the grid
    assert summary["crossing_below_grid"] and summary["trinity"]["meets_latency_target"] is None
    # static sustains nothing tested: Trinity's 1,250 only says the ratio is > 1.25
    t = summary["trinity"]
    assert t["sustained_ratio_vs_static"] is None and t["sustained_ratio_lower_bound"] == 1.25
    assert t["meets_throughput_target"] is None
    assert any("INCONCLUSIVE" in line for line in _summary_lines(summary, cfg))
    cfg = EngineBenchConfig(data="synthetic", rates=(1000.0, 1500.0), systems=("static", "trinity"))
    summary = summarize([static[0], {**static[1], "rate": 1500.0}, trinity[0], {**trinity[1], "rate": 1500.0}], cfg)
    assert summary["trinity"]["meets_throughput_target"] is True  # > 1.5x whatever static's rate below 1,000


def test_summary_checks_overload_stalls_and_collapse():
    cfg = EngineBenchConfig(data="synthetic", rates=(1000.0, 2000.0, 4000.0), systems=("static", "trinity"))
    static = [_row(r, "static", 25.0, miss=5.0) for r in cfg.rates]
    for row in static:
        row["sustained"] = False
    trinity = [{**_row(1000.0, "trinity", 5.0), "max_step_ms": 6.0},
               {**_row(2000.0, "trinity", 8.0, miss=0.5), "max_step_ms": 9.0},
               {**_row(4000.0, "trinity", 15.0, miss=0.2), "max_step_ms": 14.0, "sustained": False}]
    trinity[2]["decode_miss_pct"] = 0.1
    t = summarize(static + trinity, cfg)["trinity"]
    # sustained 2,000: the overload reading is at 4,000 (2x), where decode holds its deadline
    assert t["overload"] == {"rate": 4000.0, "times_sustained": 2.0, "decode_p99_ms": 15.0,
                             "decode_miss_pct": 0.1, "miss_pct": 0.2}
    assert t["max_step_ms"] == 14.0 and t["max_step_over_target"] == 14.0 / cfg.target_iteration_ms
    assert not t["miss_non_decreasing"]  # 0.5% at 2,000 then 0.2% at 4,000
    lines = _summary_lines(summarize(static + trinity, cfg), cfg)
    assert any(line.startswith("(3) at 4000 req/s (2.0x") for line in lines)
    assert any("NOT non-decreasing" in line for line in lines)
    (merged,) = merge_repeats([{**trinity[0], "repeat": 0}, {**trinity[0], "max_step_ms": 30.0, "repeat": 1}], cfg)
    assert merged["max_step_ms"] == 30.0  # the longest over the repeats, not their median


def test_engine_bench_repeats_write_medians_and_raw_runs(tmp_path):
    out = tmp_path / "engine.json"
    cfg = EngineBenchConfig(data="synthetic", num_vectors=4000, nlist=32, num_queries=64, rates=(100.0,),
                            duration_s=0.3, warmup_s=0.2, drain_cap_s=5.0, settle_s=0.05, systems=("static", "trinity"),
                            repeats=2, out=out, plot=False)
    run_engine_bench(cfg)
    saved = json.loads(out.read_text())
    assert len(saved["raw_runs"]) == 4 and {r["repeat"] for r in saved["raw_runs"]} == {0, 1}
    assert len(saved["runs"]) == 2 and all(r["repeats"] == 2 for r in saved["runs"])


def test_overhead_bench_replays_the_same_plans(tmp_path):
    from trinity.bench.overhead_bench import ClockModel, run_overhead_bench

    cfg = EngineBenchConfig(num_vectors=3000, nlist=32, num_queries=64, rates=(400.0,), duration_s=0.3, repeats=2,
                            data="synthetic", cache_index=False, out=tmp_path / "overhead.json", plot=False)
    payload = run_overhead_bench(cfg, ClockModel(fixed_s=0.002))
    (row,) = payload["rows"]
    assert row["deterministic"] and row["iterations"] > 0 and row["requests"] > 0
    assert row["n_complete"] + row.get("n_partial", 0) == row["requests"]
    assert row["host_ms"] > 0 and row["kernel_ms"] > 0
    assert json.loads((tmp_path / "overhead.json").read_text())["rows"][0]["digest"] == row["digest"]
    assert row["p50_step_ms"] <= row["p99_step_ms"] <= row["max_step_ms"]
    busy = run_overhead_bench(dataclasses.replace(cfg, repeats=1, out=tmp_path / "busy.json"), ClockModel(fixed_s=0.002),
                              contend=True)
    assert busy["contend"] and busy["rows"][0]["digest"] == row["digest"]  # a busy thread changes timings, not plans


def test_engine_bench_counts_admission_refusals_as_rejected(tmp_path):
    """With sojourn admission (as the pool runs the engine), a refusal at submission is a
    rejected request in the rows, not a crash of the client."""
    out = tmp_path / "engine.json"
    cfg = EngineBenchConfig(data="synthetic", num_vectors=4000, nlist=32, num_queries=64, rates=(400.0,),
                            duration_s=0.3, warmup_s=0.2, drain_cap_s=5.0, settle_s=0.05, systems=("trinity",),
                            scheduler_kwargs={"admission_share": 1e-6, "admission_interval_ms": 1e-3},
                            out=out, plot=False)
    run_engine_bench(cfg)
    (row,) = json.loads(out.read_text())["runs"]
    assert row["rejected_pct"] > 0 and row["unfinished_pct"] == 0.0 and row["error_pct"] == 0.0
