"""The data directory: which collections and caches exist, and where their files are.

Layout::

    <data_dir>/LOCK                 # flock: one server per data directory
    <data_dir>/catalog.json         # {"version", "collections": {name: dir}, "caches": {name: spec}}
    <data_dir>/collections/<name>-<uid>/   # see trinity.pool.storage.collection

``catalog.json`` is replaced atomically.  A collection is created by building its
directory first and then publishing it in the catalog; it is dropped by removing it from
the catalog first and deleting files afterwards.  Directories that the catalog does not
name (a crash between the two steps) are removed at start-up.  A change whose catalog
save fails (a full disk) is undone in memory, so nothing of it is served or saved later.

A collection that cannot be opened at start-up (a WAL record or snapshot that cannot be
applied) is *quarantined*: logged with the reason, listed in ``quarantined``, its routes
answer 503 and its files stay untouched for an operator; the rest of the pool serves.
"""

from __future__ import annotations

import contextlib
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
from trinity.errors import Conflict, ErrorCode, NotFound
from trinity.fsutil import atomic_write
from trinity.pool.storage.collection import DurableCollection
from trinity.pool.storage.errors import DataDirLocked, StoreUnavailable, storage_error
from trinity.pool.storage.spec import CacheSpec, CollectionSpec

log = logging.getLogger("trinity.pool.storage.catalog")

_CATALOG = "catalog.json"
_VERSION = 1


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
        self.quarantined: dict[str, str] = {}  # name -> why it could not be opened
        self._dirs: dict[str, str] = {}
        self._lock_fd: int | None = None
        # NOTE: one worker: snapshots and IVF training copy whole indexes; one at a time bounds the peak.
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trinity-snapshot")

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
            self._dirs[name] = dirname
            try:
                spec = CollectionSpec.from_json(json.loads((directory / "spec.json").read_text()))
                coll = DurableCollection(spec, directory, self.engine, background=self.background, **self._opts)
            except Exception as e:  # noqa: BLE001 - one bad collection must not stop the pool
                self.quarantined[name] = f"{type(e).__name__}: {e}"
                log.error("collection %s quarantined (files kept in %s for an operator): %s", name, directory,
                          self.quarantined[name])
                continue
            self.collections[name] = coll
            log.info("opened collection %s (%d vectors, lsn %d)", name, coll.index.ntotal, coll.applied_lsn)
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

    @contextlib.contextmanager
    def _change(self, what: str):
        """Change the in-memory catalog in the block, then save it; if the save fails, undo
        the change and raise the store error (507 on a full disk)."""
        state = (self.collections, self._dirs, self.cache_specs, self.quarantined)
        before = [dict(d) for d in state]
        yield
        try:
            self._save()
        except OSError as e:
            for d, old in zip(state, before):
                d.clear()
                d.update(old)
            with contextlib.suppress(OSError):
                self._save()  # NOTE: in case it failed after the rename (the directory fsync)
            raise storage_error(e, what) from e

    def get(self, name: str) -> DurableCollection:
        coll = self.collections.get(name)
        if coll is None:
            if name in self.quarantined:
                raise StoreUnavailable(f"collection {name!r} is quarantined: {self.quarantined[name]}; its files "
                                       f"are kept for an operator (DELETE drops them)", "name",
                                       code=ErrorCode.QUARANTINED)
            raise NotFound(f"unknown collection {name!r}", "name", code=ErrorCode.UNKNOWN_COLLECTION)
        return coll

    def create(self, spec: CollectionSpec) -> DurableCollection:
        with self._lock:
            if spec.name in self.collections or spec.name in self.quarantined:
                raise Conflict(f"collection {spec.name!r} already exists", "name", code=ErrorCode.ALREADY_EXISTS)
            dirname = f"{spec.name}-{uuid.uuid4().hex[:8]}"
            directory = self.root / "collections" / dirname
            try:
                coll = DurableCollection(spec, directory, self.engine, background=self.background, **self._opts)
            except BaseException as e:
                shutil.rmtree(directory, ignore_errors=True)
                if isinstance(e, OSError):
                    raise storage_error(e, f"creating collection {spec.name!r}") from e
                raise
            try:
                with self._change(f"creating collection {spec.name!r}"):
                    self._dirs[spec.name] = dirname
                    self.collections[spec.name] = coll
            except BaseException:
                coll.destroy()
                raise
            return coll

    def drop(self, name: str) -> None:
        with self._lock:
            coll = self.collections.get(name)
            if coll is None and name not in self.quarantined:
                raise NotFound(f"unknown collection {name!r}", "name", code=ErrorCode.UNKNOWN_COLLECTION)
            directory = self.root / "collections" / self._dirs[name]
            with self._change(f"dropping collection {name!r}"):
                self.collections.pop(name, None)
                self.quarantined.pop(name, None)
                del self._dirs[name]
        if coll is not None:
            coll.destroy()
        shutil.rmtree(directory, ignore_errors=True)

    def add_cache(self, spec: CacheSpec) -> None:
        with self._lock:
            if spec.name in self.cache_specs:
                raise Conflict(f"cache {spec.name!r} already exists", "name", code=ErrorCode.ALREADY_EXISTS)
            with self._change(f"creating cache {spec.name!r}"):
                self.cache_specs[spec.name] = spec

    def drop_cache(self, name: str) -> None:
        with self._lock:
            if name not in self.cache_specs:
                raise NotFound(f"unknown cache {name!r}", "name", code=ErrorCode.UNKNOWN_CACHE)
            with self._change(f"dropping cache {name!r}"):
                del self.cache_specs[name]
