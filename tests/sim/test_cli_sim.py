"""The ``trinity sim`` and ``trinity bench calibrate`` commands, tiny."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from trinity.cli import app
from trinity.sim.profiles import load_search

runner = CliRunner()
SMALL = ["--set", "cluster.corpus_vectors=20000", "--set", "cluster.nlist=64"]


def test_sim_run_writes_records(tmp_path):
    out = tmp_path / "run.json"
    res = runner.invoke(app, ["sim", "run", "--rate", "4", "--duration", "3", "--prefill", "1", "--decode", "1",
                              *SMALL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["summary"]["n_unfinished"] == 0 and len(payload["records"]) == payload["summary"]["requests"]


def test_sim_sweep_writes_a_plot(tmp_path):
    out = tmp_path / "sweep.json"
    res = runner.invoke(app, ["sim", "sweep", "--rates", "2,4", "--placements", "dedicated,prefill", "--no-goodput",
                              "--duration", "2", *SMALL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())["rows"]) == 4 and out.with_suffix(".png").exists()


def test_bench_calibrate_writes_a_loadable_profile(tmp_path):
    import numba
    import torch

    out = tmp_path / "cpu.json"
    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        res = runner.invoke(app, ["bench", "calibrate", "--num-vectors", "4000", "--dim", "32", "--nlist", "16",
                                  "--repeats", "1", "--threads", "1", "--out", str(out)])
    finally:  # NOTE: calibrate sets the process's thread counts
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    assert res.exit_code == 0, res.output
    profile = load_search(str(out))
    assert profile.device == "cpu" and profile.cost.fixed_s >= 0 and profile.sources
