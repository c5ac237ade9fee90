"""The host-side scan plan (numpy only: runs without triton)."""

from __future__ import annotations

import numpy as np
import pytest

from trinity.index.kernels.plan import META_FIELDS, TritonScanConfig, next_pow2, plan_scan


def _random_pairs(rng, nq=40, nlist=9, block_size=4):
    list_len = rng.integers(0, 60, nlist)
    list_len[3] = 0
    counts = rng.integers(0, 7, nq)
    ptr = np.zeros(nq + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(counts)
    lids = rng.integers(0, nlist, ptr[-1])
    nb = (list_len[lids] + block_size - 1) // block_size
    b0 = np.where(rng.random(lids.size) < 0.5, rng.integers(0, nb + 1), 0)
    b1 = np.minimum(np.where(rng.random(lids.size) < 0.5, b0 + rng.integers(0, 5, lids.size), nb), nb)
    return list_len, ptr, lids, b0, b1


@pytest.mark.parametrize("seed, cfg", [(0, TritonScanConfig()), (1, TritonScanConfig(qm=16, tile_n=16, seg_tiles=1)),
                                       (2, TritonScanConfig(tile_n=32, seg_tiles=4, kp_min=8)),
                                       (3, TritonScanConfig(qm_max=16, target_programs=3))])
def test_plan_covers_every_pair_block_once(seed, cfg):
    rng = np.random.default_rng(seed)
    bs = 4
    list_len, ptr, lids, b0, b1 = _random_pairs(rng, block_size=bs)
    plan = plan_scan(list_len, bs, ptr, lids, b0, b1, max_k=13, config=cfg)
    a = plan.arrays
    assert plan.kp == max(next_pow2(cfg.kp_min), 16) and plan.tile_n >= plan.kp
    assert plan.qm >= 16 and plan.qm & (plan.qm - 1) == 0
    assert a["counts"].tolist() == [plan.num_items, ptr.size - 1]
    # subgroups: at most qm pairs each, laid out back to back
    assert np.all(a["sub_n"] >= 1) and np.all(a["sub_n"] <= plan.qm)
    np.testing.assert_array_equal(a["sub_start"], np.concatenate([[0], np.cumsum(a["sub_n"])[:-1]]))
    # every item scans a segment inside its subgroup's range; segments tile the range once
    seen: dict[int, list[int]] = {}
    for it in range(plan.num_items):
        s, seg = int(a["item_sub"][it]), int(a["item_seg"][it])
        lo = a["sub_lo"][s] + seg * plan.seg_blocks
        hi = min(lo + plan.seg_blocks, a["sub_hi"][s])
        assert lo < hi
        seen.setdefault(s, []).extend(range(lo, hi))
    for s, blocks in seen.items():
        assert sorted(blocks) == list(range(a["sub_lo"][s], a["sub_hi"][s]))
    # each active pair: in exactly one subgroup of its list, range inside the subgroup's
    active = np.nonzero(b1 > b0)[0]
    assert a["sp_q"].size == active.size
    pair_q = np.repeat(np.arange(ptr.size - 1), np.diff(ptr))
    got = sorted(zip(a["sp_q"].tolist(), a["sp_b0"].tolist(), a["sp_b1"].tolist()))
    want = sorted(zip(pair_q[active].tolist(), b0[active].tolist(), b1[active].tolist()))
    assert got == want
    for s in range(a["sub_list"].size):
        sl = slice(a["sub_start"][s], a["sub_start"][s] + a["sub_n"][s])
        assert np.all(a["sp_b0"][sl] >= a["sub_lo"][s]) and np.all(a["sp_b1"][sl] <= a["sub_hi"][s])
    # candidate runs: disjoint, inside the scratch, one run of kp per (pair, segment)
    nch, cand = a["pair_nch"], a["pair_cand"]
    assert np.all(nch[b1 <= b0] == 0)
    spans = sorted((int(c), int(c + n * plan.kp)) for c, n in zip(cand, nch) if n)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    assert plan.total_cand == int(nch.sum()) * plan.kp and (not spans or spans[-1][1] <= plan.total_cand)
    buf = plan.pack()
    assert buf.size == plan.packed_size
    for j, f in enumerate(META_FIELDS):
        np.testing.assert_array_equal(buf[buf[j]:buf[j] + a[f].size], a[f])


def test_plan_of_nothing():
    plan = plan_scan(np.zeros(3, dtype=np.int64), 4, np.zeros(5, dtype=np.int64), np.zeros(0, dtype=np.int64),
                     np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), max_k=3)
    assert plan.num_items == 0 and plan.total_cand == 0


def test_plan_rejects_bad_tiles():
    args = (np.full(2, 10), 4, np.array([0, 1]), np.array([0]), np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match="tile_n"):
        plan_scan(*args, max_k=40, config=TritonScanConfig(tile_n=32))
    with pytest.raises(ValueError, match="qm"):
        plan_scan(*args, max_k=4, config=TritonScanConfig(qm=8))
