"""``trinity bench index`` end to end through the typer app, on tiny synthetic data."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from trinity.bench.report import latency_summary_ms, percentiles, recall_at_k, time_interleaved, write_json
from trinity.cli import app

runner = CliRunner()


def test_help_lists_bench_index() -> None:
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "index" in result.output


def test_help_keeps_every_option_name_whole_at_80_columns(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    for cmd in (["gateway"], ["emulate"], ["bench", "serve"]):
        result = runner.invoke(app, [*cmd, "--help"], terminal_width=80)
        assert result.exit_code == 0, result.output
        assert "…" not in result.output
    assert "--prefill-kv-address" in runner.invoke(app, ["gateway", "--help"], terminal_width=80).output


def test_bench_index_tiny_synthetic(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that rich never truncates a cell
    out = tmp_path / "res" / "index.json"
    result = runner.invoke(app, [
        "bench", "index", "--data", "synthetic", "--num-vectors", "3000", "--nlist", "32", "--nprobe", "4",
        "--batch-sizes", "1,8", "--num-queries", "32", "--max-seconds", "1", "--threads", "2",
        "--no-cuda", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Index search" in result.output and "Trinity / FAISS QPS" in result.output
    for name in ("trinity-flat", "faiss-flat", "trinity-ivf", "faiss-ivf"):
        assert name in result.output
    assert "memory / raw vector bytes" in result.output

    payload = json.loads(out.read_text())
    assert {"benchmark", "machine", "params", "data", "build_s", "checks", "results", "ratios", "memory",
            "verdicts", "cuda"} <= payload.keys()
    assert payload["data"]["source"] == "synthetic" and payload["data"]["num_vectors"] == 3000
    assert {"cpu_model", "cpu_count", "date", "versions"} <= payload["machine"].keys()
    assert payload["params"]["batch_sizes"] == [1, 8] and payload["params"]["nlist"] == 32
    rows = payload["results"]
    assert {(r["system"], r["batch_size"]) for r in rows} == {
        (s, b) for s in ("trinity-flat", "faiss-flat", "trinity-ivf", "faiss-ivf") for b in (1, 8)}
    for r in rows:
        assert {"qps", "p50_ms", "p99_ms", "recall_at_10", "queries"} <= r.keys()
        assert r["qps"] > 0 and r["p50_ms"] <= r["p99_ms"]
        if "flat" in r["system"]:
            assert r["recall_at_10"] == pytest.approx(1.0)
    # Same centroids, same nprobe: identical lists, so both IVFs find (almost) the same.
    assert payload["checks"]["ivf_lists_identical_sizes"]
    assert payload["checks"]["faiss_flat_recall_vs_truth"] > 0.99
    recall = {(r["system"], r["batch_size"]): r["recall_at_10"] for r in rows}
    assert abs(recall[("trinity-ivf", 8)] - recall[("faiss-ivf", 8)]) < 0.02
    assert [r["batch_size"] for r in payload["ratios"]] == [1, 8]
    mem = {m["system"]: m for m in payload["memory"]}
    assert mem["faiss-flat"]["ratio_to_raw"] == pytest.approx(1.0)
    assert mem["trinity-ivf"]["bytes_per_vector"] >= 384 * 4
    verdicts = {v["name"]: v for v in payload["verdicts"]}
    assert len(verdicts) == 2
    assert any(v["pass"] is None for v in verdicts.values())  # batch 64 not measured


def test_bench_index_rejects_bad_batch_sizes(tmp_path) -> None:
    result = runner.invoke(app, ["bench", "index", "--data", "synthetic", "--batch-sizes", "1,x",
                                 "--out", str(tmp_path / "x.json")])
    assert result.exit_code != 0
    assert not (tmp_path / "x.json").exists()


def test_report_helpers(tmp_path) -> None:
    path = write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert list(path.parent.iterdir()) == [path]  # no temp files left behind
    assert percentiles([1.0, 2.0, 3.0])["p50"] == 2.0
    assert latency_summary_ms([0.001, 0.003])["mean_ms"] == pytest.approx(2.0)
    assert recall_at_k([[1, 2], [3, 4]], [[2, 9], [3, 4]]) == pytest.approx(0.75)
    lat, outs = time_interleaved({"a": lambda x: x + 1, "b": lambda x: x * 2}, [1, 2, 3])
    assert outs == {"a": [2, 3, 4], "b": [2, 4, 6]} and all(len(v) == 3 for v in lat.values())
