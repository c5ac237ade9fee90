"""Crash-safe index files: a directory of immutable snapshots and a ``CURRENT`` pointer.

Layout::

    path/CURRENT                      # name of the live snapshot, replaced atomically
    path/snap-000007/manifest.json    # format, version, config, array shapes, sha256
    path/snap-000007/arrays.safetensors

A save writes a new snapshot into a temporary directory, fsyncs it, renames it into
place and only then swaps ``CURRENT`` with ``os.replace``.  A crash at any point leaves
``CURRENT`` naming a complete snapshot.  Loading never unpickles anything: arrays come
from safetensors and are checked against the manifest (version, shapes, checksum).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from trinity.fsutil import fsync_dir, fsync_file

if TYPE_CHECKING:
    from trinity.index.base import BaseIndex

FORMAT = "trinity-index"
VERSION = 1
_CURRENT = "CURRENT"
_ARRAYS = "arrays.safetensors"
_MANIFEST = "manifest.json"

#: Index classes by their ``kind``; every :class:`BaseIndex` subclass that names a kind registers here.
INDEX_KINDS: dict[str, type[BaseIndex]] = {}


class IndexFormatError(ValueError):
    """An index directory is missing, corrupted, truncated or from another version."""


def save_index(index: BaseIndex, path: str | os.PathLike) -> Path:
    """Write ``index`` as a new snapshot under ``path``; return the snapshot directory."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ValueError(f"path: {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    if not (root / _CURRENT).exists() and any(not _is_own(p.name) for p in root.iterdir()):
        raise ValueError(f"path: {root} is a non-empty directory that is not a Trinity index")
    with index.write_lock:
        arrays = {name: t.contiguous() for name, t in index.state_arrays().items()}
        manifest = {
            "format": FORMAT, "version": VERSION, "kind": index.kind, "config": index.config(),
            "ntotal": index.ntotal,
            "arrays": {n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)} for n, t in arrays.items()},
        }
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        save_file(arrays, str(tmp / _ARRAYS))
        manifest["sha256"] = _sha256(tmp / _ARRAYS)
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        for f in (tmp / _ARRAYS, tmp / _MANIFEST):
            fsync_file(f)
        fsync_dir(tmp)
        name = f"snap-{_last_snapshot_number(root) + 1:06d}"
        os.rename(tmp, root / name)
        fsync_dir(root)
        pointer = root / f"{_CURRENT}.tmp"
        pointer.write_text(name + "\n")
        fsync_file(pointer)
        os.replace(pointer, root / _CURRENT)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():  # garbage: older snapshots and leftovers of crashed saves
        if old.name != name and (old.name.startswith("snap-") or old.name.startswith(".tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def load_index(path: str | os.PathLike, device: str | torch.device | None = None) -> BaseIndex:
    """Load the live snapshot under ``path`` (optionally onto another ``device``)."""
    root = Path(path)
    try:
        snap = root / (root / _CURRENT).read_text().strip()
        manifest = json.loads((snap / _MANIFEST).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{root}: not a readable Trinity index ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{snap}: manifest is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise IndexFormatError(f"{snap}: unsupported index version {manifest.get('version')!r} (expected {VERSION})")
    if _sha256(snap / _ARRAYS) != manifest.get("sha256"):
        raise IndexFormatError(f"{snap}: {_ARRAYS} is corrupted or truncated (checksum mismatch)")
    try:
        arrays = load_file(str(snap / _ARRAYS))
    except Exception as e:  # safetensors raises its own error types
        raise IndexFormatError(f"{snap}: cannot read arrays ({e})") from None
    cls = INDEX_KINDS.get(manifest.get("kind"))
    if cls is None:
        raise IndexFormatError(f"{snap}: unknown index kind {manifest.get('kind')!r}")
    try:
        index = cls(**dict(manifest["config"]), device=device or "cpu")
        _check_shapes(index, manifest, arrays)
        index.load_state_arrays(arrays)
        ntotal = manifest["ntotal"]
    except IndexFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise IndexFormatError(f"{snap}: malformed manifest ({type(e).__name__}: {e})") from None
    if index.ntotal != ntotal:
        raise IndexFormatError(f"{snap}: manifest says {ntotal} vectors, arrays hold {index.ntotal}")
    return index


def _check_shapes(index: BaseIndex, manifest: dict, arrays: dict[str, torch.Tensor]) -> None:
    declared = manifest.get("arrays", {})
    if set(declared) != set(arrays):
        raise IndexFormatError(f"arrays {sorted(arrays)} do not match the manifest {sorted(declared)}")
    for name, t in arrays.items():
        if list(t.shape) != declared[name]["shape"]:
            raise IndexFormatError(f"array {name!r}: shape {list(t.shape)} != manifest {declared[name]['shape']}")
    lists = index.lists
    nb = arrays["vectors"].shape[0]
    expect = {"vectors": (nb, lists.block_size, index.dim), "slot_ids": (nb, lists.block_size),
              "list_len": (lists.num_lists,), "next_id": (1,)}
    if lists.aux is not None:
        expect["aux"] = (nb, lists.block_size)
    if getattr(index, "nlist", None) and "centroids" in arrays:
        expect["centroids"] = (index.nlist, index.dim)
    for name, shape in expect.items():
        if name not in arrays or tuple(arrays[name].shape) != shape:
            raise IndexFormatError(f"array {name!r}: expected shape {shape}")
    table = arrays["block_table"].numpy()
    if table.ndim != 2 or table.shape[0] != lists.num_lists or table.max(initial=-1) >= nb:
        raise IndexFormatError("array 'block_table': inconsistent with the block pool")
    lens = arrays["list_len"].numpy()
    if int(lens.sum()) != int((arrays["slot_ids"] >= 0).sum()) or np.any(lens < 0):
        raise IndexFormatError("array 'list_len': inconsistent with the stored ids")


def _is_own(name: str) -> bool:
    """Files a save may leave behind (a crashed first save leaves no CURRENT)."""
    return name.startswith(("snap-", ".tmp-")) or name == f"{_CURRENT}.tmp"


def _last_snapshot_number(root: Path) -> int:
    nums = [int(p.name[5:]) for p in root.glob("snap-*") if p.name[5:].isdigit()]
    return max(nums, default=0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    except OSError as e:
        raise IndexFormatError(f"{path}: cannot read ({e})") from None
    return h.hexdigest()
