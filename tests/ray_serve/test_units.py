"""The parts of the Ray deployment that need no Ray: the missing-extra error, shard hashing,
placements on disk, top-k merging and least-loaded routing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from trinity.pool.ray import MISSING_RAY
from trinity.pool.ray.links import Replicas
from trinity.pool.ray.placement import Placement, PlacementFile, shard_of
from trinity.pool.ray.search import merge_results

_NO_RAY = "import sys; sys.modules['ray'] = None; sys.argv = ['trinity', *sys.argv[1:]]; from trinity.cli import main; main()"


def test_missing_ray_is_one_line_naming_the_extra(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_RAY, "serve", "--ray", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {MISSING_RAY}"
    assert "trinity[ray]" in MISSING_RAY


def test_shards_spread_evenly_and_stay_put():
    ids = np.arange(10_000)
    shards = shard_of(ids, 2)
    assert 4_500 < int((shards == 0).sum()) < 5_500
    assert (shard_of(ids, 2) == shards).all() and set(shard_of(ids, 3).tolist()) == {0, 1, 2}


def test_placements_survive_a_restart(tmp_path):
    PlacementFile(tmp_path).set("a", Placement("sharded", 2, 8, "l2").to_json())
    PlacementFile(tmp_path).set("b", Placement("replicated", 1, 8, "ip").to_json())
    PlacementFile(tmp_path).set("b", None)
    got = PlacementFile(tmp_path).load()
    assert list(got) == ["a"] and Placement.from_json(got["a"]).replicas(4) == [0, 1]
    assert Placement("replicated", 1, 8, "ip").replicas(3) == [0, 1, 2]


def _answer(ids, scores, partial=False):
    return {"results": [{"ids": ids, "scores": scores, "payloads": [{"id": i} for i in ids], "partial": partial,
                         "status": "partial" if partial else "complete", "fraction_scanned": 0.5 if partial else 1.0,
                         "timings": {"queue_ms": 1.0, "engine_ms": 2.0}}]}


def test_merge_keeps_the_best_k_by_metric_and_flags_partial():
    a, b = _answer([1, 2], [0.9, 0.1]), _answer([3, 4], [0.5, 0.4])
    top = merge_results([a, b], 1, 3, "ip", True)[0]
    assert top["ids"] == [1, 3, 4] and not top["partial"] and top["status"] == "complete"
    assert top["payloads"] == [{"id": 1}, {"id": 3}, {"id": 4}]
    assert merge_results([a, b], 1, 2, "l2", False)[0]["ids"] == [2, 4]
    gone = merge_results([a, None], 1, 3, "ip", False)[0]
    assert gone["partial"] and gone["status"] == "partial" and gone["fraction_scanned"] == 0.5
    half = merge_results([a, _answer([5], [0.95], partial=True)], 1, 1, "ip", False)[0]
    assert half["ids"] == [5] and half["partial"]


def test_pick_routes_by_load_at_the_request_stage():
    replicas = Replicas([object(), object()])
    replicas.inflight[0] = [0, 0, 5]  # background work queued behind decode
    replicas.inflight[1] = [1, 0, 0]
    assert replicas.pick([0, 1], stage=0) == 0  # decode: nothing ahead of it on replica 0
    assert replicas.pick([0, 1], stage=2) == 1
    assert replicas.pick([0, 1], stage=0, exclude=[0]) == 1
    assert replicas.pick([0], stage=0, exclude=[0]) is None
