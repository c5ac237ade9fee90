"""The runner's persistent batch (``trinity.engine.rows``): rows survive growth, wide and
narrow k share it, and results through it equal ``index.search``."""

from __future__ import annotations

import numpy as np

from trinity.engine import RequestStatus, SearchEngine
from trinity.engine.rows import RunningRows

from .helpers import assert_matches, fixed_budget, index, make_collections, queries, reference_many


def test_rows_keep_their_state_across_growth():
    idx = index("ivf_ip")
    rows = RunningRows(idx)
    q = queries("ivf_ip")
    prepared, offsets = idx.prepare_validated(q[np.arange(150) % len(q)])
    rows.add(np.arange(100), prepared[:100], offsets[:100], np.arange(100) % 7 + 1)
    assert rows.num_rows >= 100
    rows.add(np.arange(100, 150) * 3, prepared[100:], offsets[100:], np.full(50, 40))  # slots up to 447
    assert rows.topk.max_k == 40 and rows.num_rows >= 448
    for i, slot in ((0, 0), (57, 57), (99, 99), (120, 360)):  # what the rows hold after the batch grew twice
        assert np.array_equal(rows.queries[slot].numpy(), prepared[i].numpy())
        assert int(rows.topk.k[slot]) == (i % 7 + 1 if i < 100 else 40)
    d, ids, ks = rows.results(np.array([3, 360]))  # nothing scanned yet: padded answers of each one's k
    assert ks.tolist() == [4, 40] and (ids[0, :4] == -1).all() and (ids[1] == -1).all()
    rows.add(np.array([3]), prepared[:1], offsets[:1], np.array([2]))  # a reused slot starts afresh
    assert int(rows.topk.k[3]) == 2 and np.array_equal(rows.queries[3].numpy(), prepared[0].numpy())


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
