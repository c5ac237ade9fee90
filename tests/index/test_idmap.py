"""IdMap: the index's id -> slot table behaves like a dict under any put/pop sequence."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from trinity.index.idmap import IdMap

ops = st.lists(st.tuples(st.sampled_from(["put", "pop"]),
                         st.lists(st.integers(0, 300), max_size=40)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_idmap_matches_a_dict(seq):
    m, ref = IdMap(), {}
    for op, ids in seq:
        arr = np.array(ids, dtype=np.int64)
        if op == "put":
            slots = arr * 7 + len(ref)
            m.put(arr, slots)
            ref.update(zip(ids, slots.tolist()))
        else:
            got = m.pop(arr)
            want = []
            for i in ids:
                want.append(ref.pop(i, -1))
            assert got.tolist() == want
        assert len(m) == len(ref)
    probe = np.arange(0, 310, dtype=np.int64)
    assert m.get(probe).tolist() == [ref.get(i, -1) for i in probe.tolist()]
    keys, vals = m.items()
    assert dict(zip(keys.tolist(), vals.tolist())) == ref
    assert sorted(m.keys().tolist()) == sorted(ref)


def test_idmap_grows_and_stays_compact():
    m = IdMap()
    ids = np.arange(200_000, dtype=np.int64) * 3
    m.put(ids, ids + 1)
    assert len(m) == 200_000 and (m.get(ids) == ids + 1).all()
    assert m.nbytes() <= 16 * 2 ** 20  # two int64 arrays at <= 1/2 load (a dict: ~21 MiB)
    m.pop(ids[::2])
    assert len(m) == 100_000 and (m.get(ids[::2]) == -1).all() and (m.get(ids[1::2]) == ids[1::2] + 1).all()
    m.put(ids[::2], ids[::2])  # deleted buckets are reused
    assert len(m) == 200_000 and (m.get(ids[::2]) == ids[::2]).all()
