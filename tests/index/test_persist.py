"""add / remove / upsert / save / load round trips and crash-safe, pickle-free snapshots."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import trinity.index.persist as persist
from trinity.index import FlatIndex, IndexFormatError, IVFIndex, load_index, save_index

from .helpers import assert_matches_exact, assert_same_ids_up_to_ties

METRICS = ["ip", "l2", "cosine"]
DIM = 12


def _make(kind: str, metric: str, rng: np.random.Generator):
    if kind == "flat":
        return FlatIndex(DIM, metric=metric, block_size=8, chunk_blocks=2)
    index = IVFIndex(DIM, 6, metric=metric, block_size=4, nprobe=3)
    index.train(rng.standard_normal((200, DIM)).astype(np.float32), niter=5)
    return index


def _populated(kind: str, metric: str, seed: int = 0):
    """An index after adds, removes and same-id re-adds, plus the expected contents."""
    rng = np.random.default_rng(seed)
    index = _make(kind, metric, rng)
    store: dict[int, np.ndarray] = {}
    x = rng.standard_normal((150, DIM)).astype(np.float32)
    auto = index.add(x)  # auto ids 0..149
    np.testing.assert_array_equal(auto, np.arange(150))
    store.update(zip(auto.tolist(), x))
    big = rng.choice(np.iinfo(np.int64).max - 1, 60, replace=False)
    y = rng.standard_normal((60, DIM)).astype(np.float32)
    index.add(y, big)
    store.update(zip(big.tolist(), y))
    # remove: counts only known ids, once each
    gone = np.concatenate([np.arange(0, 150, 3), big[:10], [10**15, 123456789], [0, 3]])
    assert index.remove(gone) == 50 + 10
    for g in gone.tolist():
        store.pop(int(g), None)
    assert index.remove(np.array([0, 3, 10**15])) == 0  # already gone / unknown: ignored
    assert index.remove([]) == 0
    # re-add: same id replaces (upsert), removed ids come back
    re_ids = np.array([1, 2, 0, int(big[20])])
    z = rng.standard_normal((4, DIM)).astype(np.float32)
    index.add(z, re_ids)
    store.update(zip(re_ids.tolist(), z))
    assert index.ntotal == len(store)
    return index, store


def _as_arrays(store):
    ids = np.array(sorted(store), dtype=np.int64)
    return ids, np.stack([store[i] for i in ids.tolist()])


def _prepared(x, metric):
    return x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_round_trip(tmp_path, kind, metric):
    index, store = _populated(kind, metric)
    ids, xs = _as_arrays(store)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((9, DIM)).astype(np.float32)
    D0, I0 = index.search(q, 15)
    snap = save_index(index, tmp_path / "idx")
    assert snap.parent == tmp_path / "idx" and snap.is_dir()

    loaded = load_index(tmp_path / "idx")
    assert type(loaded) is type(index)
    assert loaded.ntotal == index.ntotal == len(store)
    assert set(loaded.ids().tolist()) == set(store)
    assert loaded.metric.name == metric and loaded.dim == DIM
    assert loaded.config() == index.config()
    np.testing.assert_array_equal(loaded.reconstruct(ids), index.reconstruct(ids))
    np.testing.assert_allclose(loaded.reconstruct(ids), _prepared(xs, metric), rtol=1e-6, atol=1e-6)
    D1, I1 = loaded.search(q, 15)
    assert_same_ids_up_to_ties(I0, D0, I1, D1)
    if kind == "ivf":
        assert loaded.nprobe == index.nprobe and loaded.nlist == index.nlist
        np.testing.assert_array_equal(loaded.centroids.numpy(), index.centroids.numpy())
        np.testing.assert_array_equal(loaded.list_sizes(), index.list_sizes())
        D, I = loaded.search(q, 15, nprobe=loaded.nlist)
    else:
        D, I = loaded.search(q, 15)
    assert_matches_exact(D, I, xs, ids, q, 15, metric)

    # the loaded index keeps working: auto ids continue after the largest id ever used
    nxt = loaded.add(np.ones((2, DIM), np.float32))
    assert nxt[0] == max(max(store) + 1, index._next_id)
    assert loaded.remove(nxt) == 2
    assert loaded.remove(ids[:5]) == 5
    loaded.add(xs[:5], ids[:5])
    assert loaded.ntotal == len(store)
    save_index(loaded, tmp_path / "idx")
    again = load_index(tmp_path / "idx")
    assert set(again.ids().tolist()) == set(store)


def test_save_method_and_untrained_ivf(tmp_path):
    index = IVFIndex(4, 2)
    index.save(str(tmp_path / "u"))  # an untrained, empty IVF
    loaded = load_index(tmp_path / "u")
    assert not loaded.is_trained and loaded.ntotal == 0


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_empty_index_round_trip(tmp_path, kind):
    """Saving a (trained) index before any add must work -- e.g. a fresh service checkpoint."""
    index = _make(kind, "l2", np.random.default_rng(0))
    save_index(index, tmp_path / "e")
    loaded = load_index(tmp_path / "e")
    assert loaded.ntotal == 0 and loaded.is_trained
    D, I = loaded.search(np.zeros(DIM, np.float32), 3)
    assert np.all(I == -1)


def test_round_trip_after_removing_everything(tmp_path):
    index, store = _populated("ivf", "ip")
    index.remove(list(store))
    assert index.ntotal == 0
    save_index(index, tmp_path / "e")
    loaded = load_index(tmp_path / "e")
    assert loaded.ntotal == 0
    assert loaded.add(np.ones((1, DIM), np.float32))[0] == index._next_id


def test_largest_int64_id_round_trips_or_is_rejected(tmp_path):
    """add() must either reject id 2**63-1 up front (ValueError naming ids) or the index
    must keep working with it: save/load and later auto ids.  Accepting it and then
    failing in save_index ("Overflow when unpacking long long") is the bug."""
    big = np.iinfo(np.int64).max
    index = FlatIndex(4)
    try:
        index.add(np.eye(4, dtype=np.float32)[:2], np.array([big, 5]))
    except ValueError as e:
        assert "ids" in str(e)
        assert index.ntotal == 0
        return
    save_index(index, tmp_path / "m")
    assert set(load_index(tmp_path / "m").ids().tolist()) == {big, 5}


# --------------------------------------------------------------------------- snapshots
def _snapshots(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("snap-"))


def test_second_save_replaces_first_and_cleans_up(tmp_path):
    root = tmp_path / "idx"
    a, _ = _populated("flat", "ip", seed=0)
    b, _ = _populated("flat", "ip", seed=5)
    b.add(np.ones((3, DIM), np.float32))
    s1 = save_index(a, root)
    # a leftover of a crashed save and an orphaned snapshot never named by CURRENT
    (root / ".tmp-deadbeef").mkdir()
    (root / ".tmp-deadbeef" / "arrays.safetensors").write_bytes(b"garbage")
    assert load_index(root).ntotal == a.ntotal
    s2 = save_index(b, root)
    assert s2.name > s1.name
    assert _snapshots(root) == [s2.name]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert (root / "CURRENT").read_text().strip() == s2.name
    assert sorted(os.listdir(s2)) == ["arrays.safetensors", "manifest.json"]
    assert load_index(root).ntotal == b.ntotal == a.ntotal + 3


def test_crash_before_pointer_swap_keeps_previous_snapshot(tmp_path, monkeypatch):
    root = tmp_path / "idx"
    a, store_a = _populated("ivf", "l2", seed=0)
    save_index(a, root)
    b = FlatIndex(DIM)
    b.add(np.ones((1, DIM), np.float32))

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(persist.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_index(b, root)
    monkeypatch.undo()
    loaded = load_index(root)  # CURRENT still names the complete first snapshot
    assert loaded.kind == "ivf" and set(loaded.ids().tolist()) == set(store_a)
    # the next successful save garbage-collects the orphan
    save_index(b, root)
    assert len(_snapshots(root)) == 1
    assert load_index(root).kind == "flat"


def test_crash_while_writing_arrays_leaves_no_debris(tmp_path, monkeypatch):
    root = tmp_path / "idx"
    a, store_a = _populated("flat", "cosine")
    save_index(a, root)

    def partial_write(arrays, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x00" * 17)
        raise OSError("disk full")

    monkeypatch.setattr(persist, "save_file", partial_write)
    with pytest.raises(OSError, match="disk full"):
        save_index(a, root)
    monkeypatch.undo()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert set(load_index(root).ids().tolist()) == set(store_a)


@pytest.mark.parametrize("debris", [".tmp-0123abcd", "snap-000001", "CURRENT.tmp"])
def test_crashed_first_save_does_not_brick_the_path(tmp_path, debris):
    """A first save that died mid-way leaves a ``.tmp-*`` dir, an unreferenced
    ``snap-*`` dir or ``CURRENT.tmp`` but no CURRENT; later saves to that path must work."""
    root = tmp_path / "idx"
    root.mkdir()
    if debris == "CURRENT.tmp":
        (root / debris).write_text("snap-000001\n")
    else:
        (root / debris).mkdir()
        (root / debris / "arrays.safetensors").write_bytes(b"partial")
    index = FlatIndex(DIM)
    index.add(np.ones((1, DIM), np.float32))
    save_index(index, root)
    assert load_index(root).ntotal == 1
    assert _snapshots(root) == [(root / "CURRENT").read_text().strip()]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_refuses_to_write_into_foreign_paths(tmp_path):
    index = FlatIndex(DIM)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        save_index(index, tmp_path / "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a Trinity index"):
        save_index(index, tmp_path / "other")
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_load_uses_no_pickle(tmp_path, monkeypatch):
    index, store = _populated("ivf", "cosine")
    snap = save_index(index, tmp_path / "idx")
    manifest = json.loads((snap / "manifest.json").read_text())  # plain JSON
    assert manifest["format"] == "trinity-index" and manifest["kind"] == "ivf"
    assert (snap / "arrays.safetensors").read_bytes()[8:9] == b"{"  # safetensors JSON header

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load_index")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    loaded = load_index(tmp_path / "idx")
    assert set(loaded.ids().tolist()) == set(store)


# --------------------------------------------------------------------------- corruption
@pytest.fixture
def saved(tmp_path):
    index, _ = _populated("ivf", "l2")
    snap = save_index(index, tmp_path / "idx")
    return tmp_path / "idx", snap


def _edit_manifest(snap: Path, fn) -> None:
    m = json.loads((snap / "manifest.json").read_text())
    fn(m)
    (snap / "manifest.json").write_text(json.dumps(m))


def _load_fails(root: Path, match: str) -> IndexFormatError:
    with pytest.raises(IndexFormatError, match=match) as info:
        load_index(root)
    assert isinstance(info.value, ValueError)
    return info.value


def test_index_format_error_is_a_value_error():
    assert issubclass(IndexFormatError, ValueError)


def test_truncated_arrays(saved):
    root, snap = saved
    data = (snap / "arrays.safetensors").read_bytes()
    (snap / "arrays.safetensors").write_bytes(data[: len(data) // 2])
    _load_fails(root, "corrupted or truncated")


@pytest.mark.parametrize("where", [0, 9, -1, -100])
def test_flipped_byte(saved, where):
    root, snap = saved
    data = bytearray((snap / "arrays.safetensors").read_bytes())
    data[where] ^= 0x40
    (snap / "arrays.safetensors").write_bytes(bytes(data))
    _load_fails(root, "corrupted or truncated")


def test_missing_arrays_file(saved):
    root, snap = saved
    (snap / "arrays.safetensors").unlink()
    _load_fails(root, "cannot read")


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_other_version(saved, version):
    root, snap = saved
    _edit_manifest(snap, lambda m: m.__setitem__("version", version))
    _load_fails(root, "unsupported index version")


def test_other_format(saved):
    root, snap = saved
    _edit_manifest(snap, lambda m: m.__setitem__("format", "faiss"))
    _load_fails(root, "not a trinity-index manifest")


def test_missing_current(saved):
    root, _ = saved
    (root / "CURRENT").unlink()
    _load_fails(root, "not a readable Trinity index")


def test_current_names_missing_snapshot(saved):
    root, snap = saved
    shutil.rmtree(snap)
    _load_fails(root, "not a readable Trinity index")


def test_missing_directory(tmp_path):
    _load_fails(tmp_path / "nope", "not a readable Trinity index")


def test_manifest_not_json(saved):
    root, snap = saved
    (snap / "manifest.json").write_text("{not json")
    _load_fails(root, "not a readable Trinity index")


def test_manifest_with_wrong_array_shape(saved):
    root, snap = saved
    _edit_manifest(snap, lambda m: m["arrays"]["vectors"]["shape"].__setitem__(0, 1))
    _load_fails(root, "shape")


def test_manifest_config_inconsistent_with_arrays(saved):
    root, snap = saved
    _edit_manifest(snap, lambda m: m["config"].__setitem__("dim", DIM + 1))
    _load_fails(root, "expected shape")


def test_manifest_block_size_inconsistent_with_arrays(saved):
    root, snap = saved
    _edit_manifest(snap, lambda m: m["config"].__setitem__("block_size", 8))
    _load_fails(root, "expected shape")


def test_manifest_wrong_vector_count(saved):
    root, snap = saved
    _edit_manifest(snap, lambda m: m.__setitem__("ntotal", m["ntotal"] + 1))
    _load_fails(root, "vectors")


def test_manifest_lists_an_extra_array(saved):
    root, snap = saved
    _edit_manifest(snap, lambda m: m["arrays"].__setitem__("extra", {"dtype": "float32", "shape": [1]}))
    _load_fails(root, "do not match the manifest")


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: m.pop("config"), id="no-config"),
    pytest.param(lambda m: m.pop("ntotal"), id="no-ntotal"),
    pytest.param(lambda m: m.pop("arrays"), id="no-arrays"),
    pytest.param(lambda m: m["config"].__setitem__("colour", "blue"), id="unknown-config-key"),
    pytest.param(lambda m: m["config"].__setitem__("metric", "hamming"), id="bad-metric"),
    pytest.param(lambda m: m["arrays"].__setitem__("vectors", [1, 2]), id="array-entry-not-a-dict"),
    pytest.param(lambda m: m.__setitem__("kind", "hnsw"), id="unknown-kind"),
])
def test_malformed_manifest_raises_index_format_error(saved, edit):
    """Any damage to the manifest is reported as IndexFormatError, never KeyError/TypeError."""
    root, snap = saved
    _edit_manifest(snap, edit)
    _load_fails(root, r"\S")  # any clear message
