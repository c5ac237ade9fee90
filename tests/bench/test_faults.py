"""The reliability suite, short version: every scenario's checks hold (CI runs this)."""

from __future__ import annotations

import json

from trinity.bench.faults import FaultsConfig, run_faults, scenarios
from trinity.bench.tmpfs import MountError, tmpfs


def _can_mount(tmp_path) -> bool:
    try:
        with tmpfs(tmp_path / "probe", 1 << 20):
            return True
    except MountError:
        return False


def test_quick_reliability_suite(tmp_path):
    names = [n for n in scenarios() if n != "enospc" or _can_mount(tmp_path)]  # NOTE: the full disk needs root
    out = tmp_path / "faults.json"
    payload = run_faults(FaultsConfig(quick=True, only=tuple(names), out=out))
    failed = [r for r in payload["rows"] if not r["ok"]]
    assert not failed, json.dumps(failed, indent=1, default=str)
    assert {r["scenario"] for r in payload["rows"]} >= {"kill9-writers", "torn-wal", "fsync-eio", "overload-5x",
                                                        "gateway-stall", "gateway-kill"}
    assert json.loads(out.read_text())["failed"] == 0
