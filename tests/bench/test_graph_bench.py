"""Smoke test of ``trinity bench graph`` (synthetic data, a tiny sweep)."""

from __future__ import annotations

import json

import pytest

from trinity.bench.graph_bench import GraphBenchConfig, qps_at_recall, run_graph_bench


def test_qps_at_recall_interpolates_between_bracketing_points():
    pts = [{"recall": 0.9, "qps": 1000.0}, {"recall": 0.96, "qps": 400.0}, {"recall": 0.99, "qps": 100.0}]
    assert qps_at_recall(pts, 0.95) == pytest.approx(500.0)
    assert qps_at_recall(pts, 0.999) is None
    assert qps_at_recall(pts, 0.5) == 1000.0


def test_graph_bench_writes_json_and_plot(tmp_path):
    out = tmp_path / "graph.json"
    cfg = GraphBenchConfig(num_vectors=2000, num_queries=40, search_values=(16, 48), batch_sizes=(1, 16), threads=(1,),
                           data="synthetic", out=out)
    payload = run_graph_bench(cfg)
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "graph" and out.with_suffix(".png").exists()
    systems = {p["system"] for p in payload["points"]}
    assert "trinity" in systems
    assert all(0.0 <= p["recall"] <= 1.0 and p["qps"] > 0 for p in payload["points"])
    assert [v["name"].split(" ")[0] for v in payload["verdicts"]] == ["QPS", "build", "recall"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_vectors"):
        GraphBenchConfig(num_vectors=10)
    with pytest.raises(ValueError, match="batch_sizes"):
        GraphBenchConfig(batch_sizes=(0,))
