"""Store and catalog failure paths in-process: ids the index refuses, a failed fsync,
records that cannot be applied at start-up (quarantine), catalog saves that fail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trinity.errors import Conflict, InvalidArgument
from trinity.pool.storage.catalog import Catalog
from trinity.pool.storage.collection import DurableCollection
from trinity.pool.storage.errors import StorageFull, StoreUnavailable
from trinity.pool.storage.spec import CacheSpec, CollectionSpec
from trinity.pool.storage.wal import WriteAheadLog

DIM = 8
FAULT = "TRINITY_FAULT_FSYNC"


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_id_the_index_refuses_is_invalid_before_the_wal(tmp_path, engine):
    coll = DurableCollection(CollectionSpec("c", DIM), tmp_path, engine)
    with pytest.raises(InvalidArgument) as e:
        coll.upsert(np.array([1, 2**63 - 1]), _vecs(2), [None, None])
    assert e.value.field == "ids.1"
    assert coll.wal.last_lsn == 0 and coll.failed is None
    coll.upsert(np.array([2**63 - 2]), _vecs(1), [None])  # the largest id the index takes
    with pytest.raises(Conflict) as e:  # server-assigned ids would pass it
        coll.upsert(None, _vecs(1), [None])
    assert e.value.field == "ids" and coll.wal.last_lsn == 1 and coll.failed is None


def test_writes_resume_after_a_failed_fsync_without_a_restart(tmp_path, engine, monkeypatch):
    spec = CollectionSpec("c", DIM, "l2")
    coll = DurableCollection(spec, tmp_path, engine)
    coll.upsert(np.arange(3), _vecs(3), ['"a"', '"b"', None])
    monkeypatch.setenv(FAULT, f"eio:{tmp_path / 'wal'}")
    with pytest.raises(StoreUnavailable, match="fsync"):
        coll.upsert(np.array([7]), _vecs(1, seed=7), ['"lost"'])
    assert coll.get([7], False)[1] == [7]  # not acknowledged, so not kept either
    with pytest.raises(StoreUnavailable):
        coll.delete(np.array([0]))
    assert coll.get([0], False)[1] == []
    monkeypatch.delenv(FAULT)
    _, lsn = coll.upsert(np.array([8]), _vecs(1, seed=8), ['"c"'])
    assert lsn == 2 and coll.delete(np.array([1]))[0] == 1
    coll.closed = True  # crash: no snapshot
    coll.wal.close()
    coll._retire(coll._gen)
    again = DurableCollection(spec, tmp_path, engine)
    assert sorted(again.index.ids().tolist()) == [0, 2, 8]
    assert again.payloads == {0: '"a"', 8: '"c"'}


def _catalog(root, engine) -> Catalog:
    cat = Catalog(root, engine)
    cat.open()
    return cat


def _poison(directory) -> None:
    """Append a record the index refuses (an id of 2**63 - 1) through the WAL's own API."""
    wal = WriteAheadLog(directory / "wal")
    list(wal.replay(json.loads((directory / "MANIFEST").read_text())["lsn"]))
    wal.sync(wal.append("upsert", np.array([2**63 - 1]), _vecs(1), None))
    wal.close()


def test_a_record_that_cannot_be_applied_quarantines_only_its_collection(tmp_path, engine, caplog):
    cat = _catalog(tmp_path, engine)
    for name in ("bad", "good"):
        cat.create(CollectionSpec(name, DIM)).upsert(np.arange(4), _vecs(4), [None] * 4)
    bad_dir = cat.collections["bad"].dir
    cat.close()
    _poison(bad_dir)
    before = _files(bad_dir)
    cat = _catalog(tmp_path, engine)
    assert set(cat.quarantined) == {"bad"} and "lsn" in cat.quarantined["bad"]
    assert "quarantined" in caplog.text
    with pytest.raises(StoreUnavailable, match="quarantined") as e:
        cat.get("bad")
    assert e.value.field == "name" and not e.value.retry
    assert cat.get("good").index.ntotal == 4
    cat.get("good").upsert(np.array([9]), _vecs(1), [None])
    with pytest.raises(Conflict):
        cat.create(CollectionSpec("bad", DIM))
    cat.close()
    assert _files(bad_dir) == before  # left for an operator, byte for byte
    cat = _catalog(tmp_path, engine)
    assert set(cat.quarantined) == {"bad"} and cat.get("good").index.ntotal == 5
    cat.drop("bad")  # the operator's way out
    assert not bad_dir.exists() and cat.quarantined == {}
    cat.close()


def test_an_unreadable_snapshot_quarantines_the_collection(tmp_path, engine):
    cat = _catalog(tmp_path, engine)
    cat.create(CollectionSpec("c", DIM)).upsert(np.arange(4), _vecs(4), [None] * 4)
    directory = cat.collections["c"].dir
    cat.close()  # snapshots
    (directory / "MANIFEST").write_text("{not json")
    cat = _catalog(tmp_path, engine)
    assert "snapshot" in cat.quarantined["c"]
    cat.close()


def test_catalog_saves_that_fail_leave_nothing_behind(tmp_path, engine, monkeypatch):
    cat = _catalog(tmp_path, engine)
    coll = cat.create(CollectionSpec("keep", DIM))
    cat.add_cache(CacheSpec("cache-keep"))
    monkeypatch.setenv(FAULT, "eio:catalog.json")
    with pytest.raises(StoreUnavailable):
        cat.create(CollectionSpec("new", DIM))
    with pytest.raises(StoreUnavailable):
        cat.add_cache(CacheSpec("phantom"))
    with pytest.raises(StoreUnavailable):
        cat.drop("keep")
    with pytest.raises(StoreUnavailable):
        cat.drop_cache("cache-keep")
    monkeypatch.setenv(FAULT, "enospc:catalog.json")
    with pytest.raises(StorageFull):
        cat.add_cache(CacheSpec("phantom"))
    assert set(cat.collections) == {"keep"} and set(cat.cache_specs) == {"cache-keep"}
    assert [p.name.split("-")[0] for p in (tmp_path / "collections").iterdir()] == ["keep"]
    assert not list(tmp_path.glob(".*.tmp"))
    coll.upsert(np.arange(2), _vecs(2), [None, None])  # the collection a failed drop kept still works
    monkeypatch.delenv(FAULT)
    cat.add_cache(CacheSpec("later"))  # the next good save persists nothing of the failed ones
    saved = json.loads((tmp_path / "catalog.json").read_text())
    assert set(saved["collections"]) == {"keep"} and set(saved["caches"]) == {"cache-keep", "later"}
    cat.close()
