"""Durable collections in-process: recovery without a clean close, snapshot crash windows, IVF training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trinity.errors import Conflict, InvalidArgument
from trinity.index import save_index
from trinity.pool.storage.collection import DurableCollection
from trinity.pool.storage.spec import CollectionSpec

DIM = 8


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _crash(coll: DurableCollection) -> None:
    """What kill -9 leaves: no snapshot, no flush beyond what was fsynced, fds dropped."""
    coll.closed = True
    coll.wal.close()
    coll._retire(coll._gen)


def _state(coll: DurableCollection) -> dict[int, tuple[tuple[float, ...], str | None]]:
    ids = sorted(coll.index.ids().tolist())
    vecs = coll.index.reconstruct(ids) if ids else []
    return {i: (tuple(np.round(v, 5)), coll.payloads.get(i)) for i, v in zip(ids, vecs)}


def test_recovery_replays_the_wal_after_a_crash(tmp_path, engine):
    spec = CollectionSpec("c", DIM, "l2")
    coll = DurableCollection(spec, tmp_path, engine)
    x = _vecs(50)
    coll.upsert(np.arange(50), x, [json.dumps({"i": i}) for i in range(50)])
    coll.delete(np.array([3, 4, 999]))
    coll.upsert(np.array([5]), x[:1], [None])  # replace: new vector, payload cleared
    ids, _ = coll.upsert(None, x[:2], ['"auto"', None])  # server-assigned ids continue after the max
    assert ids.tolist() == [50, 51]
    before = _state(coll)
    _crash(coll)
    again = DurableCollection(spec, tmp_path, engine)
    assert _state(again) == before
    assert 3 not in again.index and again.payloads.get(5) is None and again.payloads[50] == '"auto"'
    assert again.upsert(None, x[:1], [None])[0].tolist() == [52]


def test_snapshot_trims_the_wal_and_recovery_combines_both(tmp_path, engine):
    spec = CollectionSpec("c", DIM)
    coll = DurableCollection(spec, tmp_path, engine, snapshot_every=10**9)
    x = _vecs(30)
    for i in range(30):
        coll.upsert(np.array([i]), x[i:i + 1], [str(i)])
    assert coll.snapshot() == 30
    assert coll.wal.size_bytes() == 0  # every record is in the snapshot
    coll.delete(np.array([0, 1]))
    coll.upsert(np.array([100]), x[:1], ['"late"'])
    before = _state(coll)
    _crash(coll)
    again = DurableCollection(spec, tmp_path, engine)
    assert again.snapshot_lsn == 30 and again.applied_lsn == 32
    assert _state(again) == before


def test_index_snapshot_newer_than_manifest_is_repaired_by_replay(tmp_path, engine):
    """Crash between save_index's CURRENT swap and the MANIFEST swap."""
    spec = CollectionSpec("c", DIM)
    coll = DurableCollection(spec, tmp_path, engine, snapshot_every=10**9)
    x = _vecs(20)
    coll.upsert(np.arange(10), x[:10], [None] * 10)
    coll.snapshot()
    coll.upsert(np.arange(10, 20), x[10:], ['"p"'] * 10)
    coll.delete(np.array([0]))
    save_index(coll.index, tmp_path / "index")  # the index is newer; MANIFEST still says lsn 1
    before = _state(coll)
    _crash(coll)
    again = DurableCollection(spec, tmp_path, engine)
    assert _state(again) == before


def test_leftovers_of_a_crashed_first_save_do_not_block_snapshots(tmp_path, engine):
    spec = CollectionSpec("c", DIM)
    coll = DurableCollection(spec, tmp_path, engine)
    (tmp_path / "index" / ".tmp-deadbeef").mkdir(parents=True)
    coll.upsert(np.arange(3), _vecs(3), [None] * 3)
    assert coll.snapshot() == 1
    coll.close()
    assert DurableCollection(spec, tmp_path, engine).index.ntotal == 3


def test_invalid_writes_never_reach_the_wal(tmp_path, engine):
    coll = DurableCollection(CollectionSpec("c", DIM), tmp_path, engine)
    bad = _vecs(2)
    bad[1, 3] = np.nan
    with pytest.raises(InvalidArgument):
        coll.upsert(np.arange(2), bad, [None, None])
    with pytest.raises(InvalidArgument):
        coll.upsert(np.array([1, 1]), _vecs(2), [None, None])
    assert coll.wal.last_lsn == 0 and coll.failed is None


def test_ivf_buffers_exactly_then_trains_and_survives_restart(tmp_path, engine):
    spec = CollectionSpec("v", DIM, "cosine", "ivf", nlist=4, nprobe=4, train_size=40)
    coll = DurableCollection(spec, tmp_path, engine)
    x = _vecs(60, seed=1)
    coll.upsert(np.arange(30), x[:30], [None] * 30)
    assert coll.describe()["state"] == "training_buffer"
    gen = coll.acquire()
    res = engine.search_sync(gen.engine_name, x[7], 1)
    coll.release(gen)
    assert res.ids[0] == 7  # the buffer is an exact flat index
    coll.upsert(np.arange(30, 60), x[30:], [None] * 30)  # crosses train_size: trains inline (no executor)
    assert coll.describe()["state"] == "trained" and coll.index.ntotal == 60
    assert coll.snapshot_lsn == coll.applied_lsn  # training snapshots the new index
    _crash(coll)
    again = DurableCollection(spec, tmp_path, engine)
    assert again.describe()["state"] == "trained" and again.index.ntotal == 60


def test_explicit_training_needs_nlist_vectors(tmp_path, engine):
    coll = DurableCollection(CollectionSpec("v", DIM, "ip", "ivf", nlist=8, nprobe=2), tmp_path, engine)
    coll.upsert(np.arange(5), _vecs(5), [None] * 5)
    with pytest.raises(Conflict):
        coll.train()
    coll.upsert(np.arange(5, 20), _vecs(15, seed=2), [None] * 15)
    assert coll.train() is True
    assert coll.describe()["state"] == "trained"
