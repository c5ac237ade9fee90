"""The runner's persistent batch (``trinity.engine.rows``): rows survive growth, wide and
narrow k share it, and results through it equal ``index.search``."""

from __future__ import annotations

import numpy as np

from trinity.engine import RequestStatus, SearchEngine
from trinity.engine.rows import RunningRows

from .helpers import assert_matches, fixed_budget, index, make_collections, queries, reference_many


def test_rows_keep_their_state_across_growth_and_reuse_freed_rows():
    idx = index("ivf_ip")
    rows = RunningRows(idx)
    q = queries("ivf_ip")
    prepared, offsets = idx.prepare_validated(q[np.arange(150) % len(q)])
    probes = idx.assign_prepared(prepared, np.arange(150) % 9 + 1)
    first = rows.add([f"r{i}" for i in range(100)], prepared[:100], offsets[:100], np.arange(100) % 7 + 1, probes[:100])
    assert rows.num_rows >= 100 and len(rows) == 100
    second = rows.add([f"r{i}" for i in range(100, 150)], prepared[100:], offsets[100:], np.full(50, 40), probes[100:])
    assert rows.topk.max_k == 40 and len(set(first) | set(second)) == 150
    for i in (0, 57, 99, 120):  # what the rows hold after the batch grew twice
        row = rows.row_of[f"r{i}"]
        assert np.array_equal(rows.queries[row].numpy(), prepared[i].numpy())
        assert np.array_equal(rows.probes[row, :rows.num_probes[row]], probes[i][probes[i] >= 0])
        assert int(rows.topk.k[row]) == (i % 7 + 1 if i < 100 else 40)
    out = rows.take_results(["r3", "r120"])  # nothing scanned yet: padded answers of each one's k
    assert [len(out["r3"][1]), len(out["r120"][1])] == [4, 40] and (out["r3"][1] == -1).all()
    assert len(rows) == 148 and "r3" not in rows.row_of
    (again,) = rows.add(["again"], prepared[:1], offsets[:1], np.array([2]), probes[:1])
    assert again in (first[3], second[20]), "a freed row is reused before the batch grows"


def test_a_wide_k_request_does_not_change_narrow_answers():
    """One k=300 request widens every row of the batch; later narrow requests still get
    exactly ``index.search``'s answer."""
    engine = SearchEngine(fixed_budget(6_000), collections=make_collections("ivf_ip"), start=False)
    q = queries("ivf_ip")
    wide = engine.submit("ivf_ip", q[0], 300, nprobe=24, stage="background")
    narrow = [engine.submit("ivf_ip", q[i], 3, nprobe=12, stage="decode") for i in range(1, 40)]
    for _ in range(500):
        if not engine.scheduler.has_work and not engine._inbox:
            break
        engine.step()
    results = [f.result(timeout=0) for f in [wide, *narrow]]
    assert all(r.status is RequestStatus.FINISHED_COMPLETE for r in results)
    assert len(q) >= 40
    refs = reference_many("ivf_ip", q[:40], [300] + [3] * 39, [24] + [12] * 39)
    for i, (res, ref) in enumerate(zip(results, refs)):
        assert_matches("ivf_ip", res.scores, res.ids, ref, what=f"query {i}", query=q[i])
