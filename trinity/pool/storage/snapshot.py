"""Collection snapshots: ``save_index`` + a payload file + a ``MANIFEST`` naming both.

``MANIFEST`` is replaced atomically and written last, so it always names a complete
payload file and the index directory holds a complete snapshot (its own ``CURRENT``
pointer is swapped atomically by :func:`trinity.index.save_index`).  The index may be
*newer* than the manifest's LSN after a crash between the two swaps; replaying the WAL
from the manifest LSN repairs that, because WAL records are idempotent.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from trinity.fsutil import atomic_write
from trinity.index import load_index, save_index
from trinity.index.base import BaseIndex

MANIFEST = "MANIFEST"
INDEX_DIR = "index"
FORMAT_VERSION = 1


class SnapshotError(ValueError):
    """A snapshot exists but cannot be trusted (checksum, version, shape)."""


@dataclass
class Snapshot:
    index: BaseIndex
    payloads: dict[int, str]  # id -> compact JSON text
    lsn: int
    next_id: int


def read_snapshot(directory: Path) -> Snapshot | None:
    """The snapshot named by ``MANIFEST``, or ``None`` when there is none yet."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") != FORMAT_VERSION:
            raise SnapshotError(f"{manifest_path}: unsupported version {manifest.get('version')!r}")
        data = (directory / manifest["payloads"]).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{manifest_path}: unreadable snapshot ({e})") from None
    if hashlib.sha256(data).hexdigest() != manifest["payloads_sha256"]:
        raise SnapshotError(f"{directory / manifest['payloads']}: checksum mismatch")
    payloads: dict[int, str] = {}
    for line in data.decode("ascii").splitlines():
        # NOTE: lines are "[<id>,<compact json>]" (write_snapshot): slicing, not parsing, is exact.
        comma = line.index(",")
        payloads[int(line[1:comma])] = line[comma + 1:-1]
    index = load_index(directory / INDEX_DIR)  # raises IndexFormatError (a ValueError)
    return Snapshot(index, payloads, int(manifest["lsn"]), int(manifest["next_id"]))


def write_snapshot(directory: Path, index: BaseIndex, payloads: list[tuple[int, str]], lsn: int,
                   next_id: int) -> None:
    """Persist a snapshot at ``lsn``; older payload files are removed afterwards."""
    root = directory / INDEX_DIR
    if root.is_dir() and not (root / "CURRENT").exists():
        # NOTE: what a crash in the very first save leaves; save_index refuses it.
        shutil.rmtree(root)
    save_index(index, root)
    name = f"payloads-{lsn:020d}.jsonl"
    data = "".join(f"[{i},{p}]\n" for i, p in payloads).encode("ascii")
    atomic_write(directory / name, data)
    manifest = {"version": FORMAT_VERSION, "lsn": lsn, "payloads": name,
                "payloads_sha256": hashlib.sha256(data).hexdigest(), "next_id": next_id,
                "index_kind": index.kind, "ntotal": index.ntotal}
    atomic_write(directory / MANIFEST, json.dumps(manifest).encode())
    for old in directory.glob("payloads-*.jsonl"):
        if old.name != name:
            old.unlink(missing_ok=True)
