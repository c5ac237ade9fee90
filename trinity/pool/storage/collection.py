"""A durable collection: engine index + payload map + write-ahead log + snapshots.

Directory layout (one per collection)::

    spec.json                      # immutable: dim, metric, index kind, IVF params
    MANIFEST                       # {"lsn", "payloads", "payloads_sha256", "next_id"}; os.replace'd
    index/                         # trinity.index.save_index snapshots (CURRENT pointer)
    payloads-<lsn>.jsonl           # one "[id,<payload json>]" line per point with a payload
    wal/<first lsn>.wal            # segments, see trinity.pool.storage.wal

Write path: validate -> (collection lock) append to the WAL, apply to index and payloads
-> (no lock) group-commit fsync -> acknowledge.  Everything the index could refuse is
checked before the append.  Start-up: load the snapshot named by ``MANIFEST`` (if any),
replay WAL records with ``lsn > manifest lsn``, truncate a torn tail.

A failed fsync (or an append whose partial bytes could not be cut) leaves records in
memory that are not durable: their writes are refused, the WAL is rolled back to its
last durable record and memory is rebuilt from the snapshot and the WAL, so that what
is served is what a restart would load.  Writes resume once the WAL can be rolled back.

Snapshots do not stop writers: under the lock the WAL is rotated and the payload map
copied at LSN ``S``; the index is then saved while writes continue, so it may already
hold some records after ``S``.  That is safe because every record is an idempotent
per-id upsert/delete (last writer wins): replaying ``S+1..`` on top of any state
``S + prefix`` converges to the same end state.  Old segments are trimmed only after the
new ``MANIFEST`` is durable.

IVF collections start as an exact flat training buffer (see :mod:`trinity.pool.storage.ivf_training`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trinity.engine import SearchEngine
from trinity.errors import Conflict, ErrorCode, InvalidArgument
from trinity.fsutil import atomic_write
from trinity.index import FlatIndex, GraphIndex, IVFIndex
from trinity.index.base import BaseIndex
from trinity.index.inputs import MAX_ID
from trinity.pool.memory import trim_heap
from trinity.pool.storage.errors import CollectionGone, StoreUnavailable
from trinity.pool.storage.generation import Generation
from trinity.pool.storage.ivf_training import IVFTraining
from trinity.pool.storage.snapshot import read_snapshot, write_snapshot
from trinity.pool.storage.spec import CollectionSpec
from trinity.pool.storage.wal import WalRecord, WriteAheadLog

log = logging.getLogger("trinity.pool.storage.collection")


class DurableCollection(IVFTraining):
    """Index + payloads + WAL for one named collection.  Methods block: call them from
    worker threads, never from the event loop."""

    def __init__(self, spec: CollectionSpec, directory: Path, engine: SearchEngine, *, fsync: bool = True,
                 snapshot_every: int = 10_000, snapshot_wal_bytes: int = 256 << 20, background=None) -> None:
        self.spec, self.dir, self.engine = spec, Path(directory), engine
        self.snapshot_every, self.snapshot_wal_bytes = snapshot_every, snapshot_wal_bytes
        self._background = background  # executor for snapshots / training (None = inline)
        self._mutate = threading.Lock()  # WAL order == apply order; excludes swaps
        self._snap_lock = threading.Lock()
        self._wal_bytes_since_snap = 0
        self._pending_bg = False
        self.closed = False
        self.failed: str | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "spec.json").exists():
            atomic_write(self.dir / "spec.json", json.dumps(spec.to_json()).encode())
        index = self._load_snapshot()
        self.wal = WriteAheadLog(self.dir / "wal", fsync=fsync)
        self._gen = self._register(index)
        try:
            replayed = 0
            for record in self.wal.replay(self.applied_lsn):
                try:
                    self._apply(record, index)
                except Exception as e:
                    raise ValueError(f"WAL record lsn {record.lsn} ({record.op} of {record.ids.size} id(s)) "
                                     f"cannot be applied: {e}") from e
                replayed += 1
            self.applied_lsn = max(self.applied_lsn, self.wal.last_lsn)
            if replayed:
                log.info("collection %s: replayed %d WAL records up to lsn %d", spec.name, replayed,
                         self.applied_lsn)
            if self._needs_training():
                self.train()
            self._wal_bytes_since_snap = self.wal.size_bytes()
            self._after_write()  # a long replay is folded into a snapshot right away
        except BaseException:
            self.closed = True
            self.wal.close()
            self._retire(self._gen)
            raise

    def _load_snapshot(self) -> BaseIndex:
        """Reset the in-memory state to the snapshot on disk (empty without one); return its index."""
        snap = read_snapshot(self.dir)
        self.payloads: dict[int, str] = {}
        self.payload_bytes = self.next_id = self.applied_lsn = self.snapshot_lsn = 0
        self._snapshot_kind = "flat"  # kind of the index in the last snapshot (or empty state)
        if snap is None:
            if self.spec.index == "graph":
                return GraphIndex(self.spec.dim, self.spec.metric, graph_degree=self.spec.graph_degree or 32)
            return FlatIndex(self.spec.dim, self.spec.metric)
        if snap.index.dim != self.spec.dim:
            raise ValueError(f"{self.dir}: snapshot dim {snap.index.dim} != spec dim {self.spec.dim}")
        for vid, text in snap.payloads.items():
            self._set_payload(vid, text)
        self.applied_lsn = self.snapshot_lsn = snap.lsn
        self.next_id = snap.next_id
        self._snapshot_kind = snap.index.kind
        return snap.index

    def _register(self, index: BaseIndex) -> Generation:
        return Generation(self.engine, self.spec.name, index)

    def _swap(self, index: BaseIndex) -> None:
        old, self._gen = self._gen, self._register(index)
        old.retire()

    @property
    def index(self) -> BaseIndex:
        return self._gen.index

    def acquire(self) -> Generation:
        """Pin the current engine registration for one search (pair with :meth:`release`)."""
        while True:
            if self.closed:
                raise CollectionGone(self.spec.name)
            gen = self._gen
            if gen.pin():  # NOTE: False only if a swap or close retired it meanwhile
                return gen

    def release(self, gen: Generation) -> None:
        gen.unpin()

    def _retire(self, gen: Generation) -> None:
        gen.retire()

    def get(self, ids: list[int], with_vectors: bool) -> tuple[list[dict[str, Any]], list[int]]:
        """Points for ``ids`` (``payload`` as JSON text) and the ids that do not exist."""
        index = self.index
        found, missing = [], []
        with index.write_lock:
            present = [i for i in ids if i in index]
            vecs = index.reconstruct(present) if with_vectors and present else None
        pos = {i: n for n, i in enumerate(present)}
        for i in ids:
            if i not in pos:
                missing.append(i)
                continue
            point: dict[str, Any] = {"id": i, "payload": self.payloads.get(i)}
            if vecs is not None:
                point["vector"] = vecs[pos[i]]
            found.append(point)
        return found, missing

    def describe(self) -> dict[str, Any]:
        index = self.index
        with index.write_lock:
            memory = index.memory_bytes()
            count = index.ntotal
        memory["payloads"] = self.payload_bytes
        if self.failed:
            state = "failed"
        elif self.spec.index == "ivf":
            state = "trained" if isinstance(index, IVFIndex) else "training_buffer"
        else:
            state = "ready"
        return {
            **self.spec.to_json(), "count": count, "state": state,
            "train_size": self.spec.effective_train_size if self.spec.index == "ivf" else None,
            "memory": memory, "lsn": self.applied_lsn, "durable_lsn": self.wal.durable_lsn,
            "snapshot_lsn": self.snapshot_lsn, "wal_bytes": self.wal.size_bytes(),
            "maintenance": self._pending_bg,  # a background snapshot or IVF training is queued/running
        }

    def _check_writable(self) -> None:
        if self.closed:
            raise CollectionGone(self.spec.name)
        if self.failed:
            raise StoreUnavailable(f"collection {self.spec.name!r} is read-only after an error: {self.failed}",
                                   "name",
                                   code=ErrorCode.QUARANTINED)

    def upsert(self, ids: np.ndarray | None, vectors: np.ndarray, payloads: list[str | None]) -> tuple[np.ndarray, int]:
        """Durably insert or replace points; returns ``(ids, lsn)`` once fsynced.

        ``vectors`` must already be validated float32 ``(n, dim)``; ``ids`` unique, >= 0.
        """
        self._validate(ids, vectors, payloads)
        with self._writing():
            with self._mutate:
                self._check_writable()
                if ids is None:
                    ids = self._next_ids(vectors.shape[0])
                lsn, epoch = self._log(WalRecord(0, "upsert", ids, vectors, payloads))
            self.wal.sync(lsn, epoch)
        self._after_write()
        return ids, lsn

    def _next_ids(self, n: int) -> np.ndarray:
        if self.next_id + n - 1 > MAX_ID:
            raise Conflict(f"no server-assigned ids left (the largest id, {MAX_ID}, is taken); send ids", "ids")
        return np.arange(self.next_id, self.next_id + n, dtype=np.int64)

    def _validate(self, ids: np.ndarray | None, vectors: np.ndarray, payloads: list[str | None]) -> None:
        # NOTE: everything that could make apply fail is checked before the WAL append.
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != self.spec.dim:
            raise InvalidArgument(f"expected float32 vectors of dimension {self.spec.dim}", "vectors")
        if vectors.shape[0] == 0 or len(payloads) != vectors.shape[0]:
            raise InvalidArgument("expected at least one point and one payload slot per point", "points")
        if not np.isfinite(vectors).all():
            raise InvalidArgument("vectors must be finite float32 values", "vectors")
        if ids is not None:
            if ids.shape != (vectors.shape[0],) or ids.dtype != np.int64:
                raise InvalidArgument("ids must be one int64 per point", "ids")
            bad = np.flatnonzero((ids < 0) | (ids > MAX_ID))
            if bad.size:
                raise InvalidArgument(f"ids must be in [0, {MAX_ID}], got {ids[bad[0]]}", f"ids.{bad[0]}")
            if np.unique(ids).size != ids.size:
                raise InvalidArgument("duplicate ids in one request", "ids")

    def delete(self, ids: np.ndarray) -> tuple[int, int]:
        """Durably delete ``ids``; returns ``(deleted, lsn)``."""
        with self._writing():
            with self._mutate:
                self._check_writable()
                index = self.index
                present = np.asarray([i for i in ids.tolist() if i in index], dtype=np.int64)
                if present.size == 0:
                    return 0, self.applied_lsn
                lsn, epoch = self._log(WalRecord(0, "delete", present))
            self.wal.sync(lsn, epoch)
        self._after_write()
        return int(present.size), lsn

    def _log(self, record: WalRecord) -> tuple[int, int]:
        """Append ``record`` (its LSN is assigned here) and apply it; call under ``_mutate``."""
        lsn = self.wal.append(record.op, record.ids, record.vectors, record.payloads)
        epoch = self.wal.epoch
        self._apply_logged(replace(record, lsn=lsn))
        return lsn, epoch

    @contextlib.contextmanager
    def _writing(self):
        """Around a write: roll back a WAL that failed earlier first, and right after a
        failure of this write, so that no later read sees what was not acknowledged."""
        if self.wal.failed is not None:
            self._recover_wal()
        try:
            yield
        except StoreUnavailable:
            with contextlib.suppress(StoreUnavailable, CollectionGone):
                self._recover_wal()  # NOTE: if this fails too, the next write tries again
            raise

    def _recover_wal(self) -> None:
        """Roll the WAL back to its last durable record and make memory match it."""
        with self._snap_lock, self._mutate:
            if self.closed:
                raise CollectionGone(self.spec.name)
            try:
                if self.wal.failed is not None:
                    self.wal.recover()
            finally:
                # NOTE: past the durable LSN, a failed or rolled-back WAL's records are never acknowledged.
                doomed = self.wal.failed is not None or self.wal.last_lsn == self.wal.durable_lsn
                if doomed and self.applied_lsn > self.wal.durable_lsn:
                    self._reload()

    def _reload(self) -> None:
        try:
            index = self._load_snapshot()
            for record in self.wal.records(self.applied_lsn, self.wal.durable_lsn):
                self._apply(record, index)
        except Exception as e:
            self.failed = f"reload after a write-ahead log failure failed: {e!r}"
            log.exception("collection %s: %s", self.spec.name, self.failed)
            raise
        self.applied_lsn = max(self.applied_lsn, self.wal.durable_lsn)
        self._swap(index)
        self._wal_bytes_since_snap = self.wal.size_bytes()
        log.warning("collection %s: reloaded from disk at lsn %d after a write-ahead log failure",
                    self.spec.name, self.applied_lsn)

    def _apply_logged(self, record: WalRecord) -> None:
        try:
            self._apply(record, self.index)
        except BaseException as e:
            # NOTE: logged but not applied: further writes would diverge from a restart, so read-only.
            self.failed = f"apply of lsn {record.lsn} failed: {e!r}"
            log.exception("collection %s: %s", self.spec.name, self.failed)
            raise
        self.applied_lsn = record.lsn
        self._wal_bytes_since_snap += 64 + record.ids.size * (8 + 4 * self.spec.dim)

    def _apply(self, record: WalRecord, index: BaseIndex) -> None:
        if record.op == "upsert":
            index.add(record.vectors, record.ids)
            payloads = record.payloads or [None] * record.ids.size
            for i, p in zip(record.ids.tolist(), payloads):
                self._set_payload(i, p)
            self.next_id = max(self.next_id, int(record.ids.max()) + 1)
        else:
            index.remove(record.ids)
            for i in record.ids.tolist():
                self._set_payload(i, None)

    def _set_payload(self, vid: int, text: str | None) -> None:
        old = self.payloads.pop(vid, None) if text is None else self.payloads.get(vid)
        if old is not None:
            self.payload_bytes -= len(old)
        if text is not None:
            self.payloads[vid] = text
            self.payload_bytes += len(text)

    def _after_write(self) -> None:
        due = (self.applied_lsn - self.snapshot_lsn >= self.snapshot_every
               or self._wal_bytes_since_snap >= self.snapshot_wal_bytes or self._needs_training())
        if due and not self._pending_bg:
            self._pending_bg = True
            self._run_background(self._background_work)

    def _run_background(self, fn) -> None:
        if self._background is None:
            fn()
        else:
            self._background.submit(fn)

    def _background_work(self) -> None:
        try:
            if self._needs_training():
                self.train()  # snapshots on success
            else:
                self.snapshot()
        except CollectionGone:
            pass
        except Exception:  # noqa: BLE001 - background: log, the next write retries
            log.exception("collection %s: background snapshot/training failed", self.spec.name)
        finally:
            self._pending_bg = False
            # NOTE: training and snapshots free large transient copies: return them to the OS.
            trim_heap()

    def snapshot(self) -> int:
        """Write a snapshot and trim the WAL; returns the snapshot LSN."""
        with self._snap_lock:
            with self._mutate:
                if self.closed:
                    raise CollectionGone(self.spec.name)
                lsn = self.applied_lsn
                if lsn == self.snapshot_lsn and self.index.kind == self._snapshot_kind:
                    return lsn  # nothing new (an IVF swap changes the kind)
                self.wal.rotate()
                payloads = list(self.payloads.items())
                index, next_id = self.index, self.next_id
                self._wal_bytes_since_snap = 0
            write_snapshot(self.dir, index, payloads, lsn, next_id)
            self.wal.trim(lsn)
            self.snapshot_lsn, self._snapshot_kind = lsn, index.kind
            return lsn

    def close(self, snapshot: bool = True) -> None:
        """Snapshot (optionally), close the WAL and unregister from the engine."""
        if snapshot and not self.closed and not self.failed:
            try:
                self.snapshot()
            except Exception:  # noqa: BLE001 - the WAL still has everything
                log.exception("collection %s: snapshot at close failed (WAL kept)", self.spec.name)
        with self._snap_lock, self._mutate:
            self.closed = True
            self.wal.close()
        self._retire(self._gen)

    def destroy(self) -> None:
        """Close without a snapshot and delete every file."""
        self.close(snapshot=False)
        shutil.rmtree(self.dir, ignore_errors=True)
