"""The data directory: which collections and caches exist, and where their files are.

Layout::

    <data_dir>/LOCK                 # flock: one server per data directory
    <data_dir>/catalog.json         # {"version", "collections": {name: dir}, "caches": {name: spec}}
    <data_dir>/collections/<name>-<uid>/   # see trinity.serving.store

``catalog.json`` is replaced atomically.  A collection is created by building its
directory first and then publishing it in the catalog; it is dropped by removing it from
the catalog first and deleting files afterwards.  Directories that the catalog does not
name (a crash between the two steps) are removed at start-up.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trinity.engine import SearchEngine
from trinity.fsutil import atomic_write
from trinity.serving.spec import CacheSpec, CollectionSpec, Conflict, NotFound
from trinity.serving.store import DurableCollection

log = logging.getLogger("trinity.serving.catalog")

_CATALOG = "catalog.json"
_VERSION = 1


class DataDirLocked(RuntimeError):
    """Another live server owns the data directory."""


class Catalog:
    """Durable registry of collections (opened) and cache definitions."""

    def __init__(self, data_dir: Path, engine: SearchEngine, *, fsync: bool = True, snapshot_every: int = 10_000,
                 snapshot_wal_bytes: int = 256 << 20) -> None:
        self.root = Path(data_dir)
        self.engine = engine
        self._opts = {"fsync": fsync, "snapshot_every": snapshot_every, "snapshot_wal_bytes": snapshot_wal_bytes}
        self._lock = threading.Lock()
        self.collections: dict[str, DurableCollection] = {}
        self.cache_specs: dict[str, CacheSpec] = {}
        self._dirs: dict[str, str] = {}
        self._lock_fd: int | None = None
        # NOTE: one background worker for all collections: snapshots and IVF training copy
        # whole indexes, so running them one at a time bounds the memory peak.
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trinity-snapshot")

    # ------------------------------------------------------------------ open / close
    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "collections").mkdir(exist_ok=True)
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise DataDirLocked(f"{self.root} is in use by another trinity server") from None
        path = self.root / _CATALOG
        data = json.loads(path.read_text()) if path.exists() else {"version": _VERSION}
        if data.get("version") != _VERSION:
            raise ValueError(f"{path}: unsupported catalog version {data.get('version')!r}")
        for name, spec in data.get("caches", {}).items():
            self.cache_specs[name] = CacheSpec.from_json(spec)
        for name, dirname in data.get("collections", {}).items():
            directory = self.root / "collections" / dirname
            spec = CollectionSpec.from_json(json.loads((directory / "spec.json").read_text()))
            self.collections[name] = DurableCollection(spec, directory, self.engine, background=self.background,
                                                       **self._opts)
            self._dirs[name] = dirname
            log.info("opened collection %s (%d vectors, lsn %d)", name, self.collections[name].index.ntotal,
                     self.collections[name].applied_lsn)
        known = set(self._dirs.values())
        for leftover in (self.root / "collections").iterdir():
            if leftover.name not in known:
                log.warning("removing %s: not in the catalog (a create or drop was interrupted)", leftover)
                shutil.rmtree(leftover, ignore_errors=True)

    def close(self) -> None:
        """Snapshot every collection and release the data directory."""
        self.background.shutdown(wait=True)
        for coll in list(self.collections.values()):
            coll.close(snapshot=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _save(self) -> None:
        data = {"version": _VERSION, "collections": dict(self._dirs),
                "caches": {n: s.to_json() for n, s in self.cache_specs.items()}}
        atomic_write(self.root / _CATALOG, json.dumps(data, indent=1).encode())

    # ------------------------------------------------------------------ collections
    def get(self, name: str) -> DurableCollection:
        coll = self.collections.get(name)
        if coll is None:
            raise NotFound("name", f"unknown collection {name!r}")
        return coll

    def create(self, spec: CollectionSpec) -> DurableCollection:
        with self._lock:
            if spec.name in self.collections:
                raise Conflict("name", f"collection {spec.name!r} already exists")
            dirname = f"{spec.name}-{uuid.uuid4().hex[:8]}"
            coll = DurableCollection(spec, self.root / "collections" / dirname, self.engine,
                                     background=self.background, **self._opts)
            self._dirs[spec.name] = dirname
            self.collections[spec.name] = coll
            try:
                self._save()
            except BaseException:
                self._dirs.pop(spec.name)
                self.collections.pop(spec.name)
                coll.destroy()
                raise
            return coll

    def drop(self, name: str) -> None:
        with self._lock:
            coll = self.get(name)
            del self.collections[name]
            del self._dirs[name]
            self._save()
        coll.destroy()

    # ------------------------------------------------------------------ caches
    def add_cache(self, spec: CacheSpec) -> None:
        with self._lock:
            if spec.name in self.cache_specs:
                raise Conflict("name", f"cache {spec.name!r} already exists")
            self.cache_specs[spec.name] = spec
            self._save()

    def drop_cache(self, name: str) -> None:
        with self._lock:
            if self.cache_specs.pop(name, None) is None:
                raise NotFound("name", f"unknown cache {name!r}")
            self._save()
