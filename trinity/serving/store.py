"""A durable collection: engine index + payload map + write-ahead log + snapshots.

Directory layout (one per collection)::

    spec.json                      # immutable: dim, metric, index kind, IVF params
    MANIFEST                       # {"lsn", "payloads", "payloads_sha256", "next_id"}; os.replace'd
    index/                         # trinity.index.save_index snapshots (CURRENT pointer)
    payloads-<lsn>.jsonl           # one "[id,<payload json>]" line per point with a payload
    wal/<first lsn>.wal            # segments, see trinity.serving.wal

Write path: validate -> (collection lock) append to the WAL, apply to index and payloads
-> (no lock) group-commit fsync -> acknowledge.  Start-up: load the snapshot named by
``MANIFEST`` (if any), replay WAL records with ``lsn > manifest lsn``, truncate a torn
tail.

Snapshots do not stop writers: under the lock the WAL is rotated and the payload map
copied at LSN ``S``; the index is then saved while writes continue, so it may already
hold some records after ``S``.  That is safe because every record is an idempotent
per-id upsert/delete (last writer wins): replaying ``S+1..`` on top of any state
``S + prefix`` converges to the same end state.  Old segments are trimmed only after the
new ``MANIFEST`` is durable.

IVF collections start as an exact flat *training buffer*: vectors are searchable at once
(exactly).  When the buffer reaches ``train_size`` vectors (default ``39 * nlist``, FAISS'
guideline) -- or on an explicit ``train()`` -- k-means runs in the background, the IVF
index is filled from the buffer, swapped in under a new engine name and snapshotted.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from trinity.engine import SearchEngine
from trinity.index import FlatIndex, IVFIndex
from trinity.index.base import BaseIndex
from trinity.fsutil import atomic_write
from trinity.serving.memory import trim_heap
from trinity.serving.snapshot import read_snapshot, write_snapshot
from trinity.serving.spec import CollectionGone, CollectionSpec, Conflict, InvalidRequest
from trinity.serving.wal import WalRecord, WriteAheadLog

log = logging.getLogger("trinity.serving.store")
_GENERATIONS = itertools.count(1)
_MAX_TRAIN_POINTS_PER_LIST = 64  # what trinity.index.kmeans keeps per centroid


class _Generation:
    """One engine registration of the collection's index; retired on swap or drop.

    NOTE: the engine must never see a request for a name that is gone (its scheduler
    looks the collection up on its loop thread), so a retired generation is only
    dropped from the engine once its last in-flight search has finished.
    """

    __slots__ = ("engine_name", "index", "inflight", "retired")

    def __init__(self, engine_name: str, index: BaseIndex) -> None:
        self.engine_name, self.index = engine_name, index
        self.inflight, self.retired = 0, False


class DurableCollection:
    """Index + payloads + WAL for one named collection.  Methods block: call them from
    worker threads, never from the event loop."""

    def __init__(self, spec: CollectionSpec, directory: Path, engine: SearchEngine, *, fsync: bool = True,
                 snapshot_every: int = 10_000, snapshot_wal_bytes: int = 256 << 20, background=None) -> None:
        self.spec, self.dir, self.engine = spec, Path(directory), engine
        self.snapshot_every, self.snapshot_wal_bytes = snapshot_every, snapshot_wal_bytes
        self._background = background  # executor for snapshots / training (None = inline)
        self._mutate = threading.Lock()  # WAL order == apply order; excludes swaps
        self._snap_lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self.payloads: dict[int, str] = {}
        self.payload_bytes = 0
        self.next_id = 0
        self.applied_lsn = self.snapshot_lsn = 0
        self._wal_bytes_since_snap = 0
        self._pending_bg = False
        self.closed = False
        self.failed: str | None = None
        self._snapshot_kind = "flat"  # kind of the index in the last snapshot (or empty state)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "spec.json").exists():
            atomic_write(self.dir / "spec.json", json.dumps(spec.to_json()).encode())
        index = self._load_snapshot()
        self.wal = WriteAheadLog(self.dir / "wal", fsync=fsync)
        self._gen = self._register(index)
        try:
            replayed = 0
            for record in self.wal.replay(self.applied_lsn):
                self._apply(record)
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

    # ------------------------------------------------------------------ loading
    def _load_snapshot(self) -> BaseIndex:
        snap = read_snapshot(self.dir)
        if snap is None:
            return FlatIndex(self.spec.dim, self.spec.metric)
        if snap.index.dim != self.spec.dim:
            raise ValueError(f"{self.dir}: snapshot dim {snap.index.dim} != spec dim {self.spec.dim}")
        for vid, text in snap.payloads.items():
            self._set_payload(vid, text)
        self.applied_lsn = self.snapshot_lsn = snap.lsn
        self.next_id = snap.next_id
        self._snapshot_kind = snap.index.kind
        return snap.index

    def _register(self, index: BaseIndex) -> _Generation:
        # NOTE: a process-wide counter: a dropped and re-created collection must not reuse
        # the engine name of a retired generation that still has searches in flight.
        gen = _Generation(f"{self.spec.name}#{next(_GENERATIONS)}", index)
        self.engine.add_collection(gen.engine_name, index)
        return gen

    # ------------------------------------------------------------------ readers
    @property
    def index(self) -> BaseIndex:
        return self._gen.index

    def acquire(self) -> _Generation:
        """Pin the current engine registration for one search (pair with :meth:`release`)."""
        with self._gen_lock:
            if self.closed:
                raise CollectionGone(self.spec.name)
            gen = self._gen
            gen.inflight += 1
            return gen

    def release(self, gen: _Generation) -> None:
        with self._gen_lock:
            gen.inflight -= 1
            drop = gen.retired and gen.inflight == 0
        if drop:
            self._engine_drop(gen)

    def _retire(self, gen: _Generation) -> None:
        with self._gen_lock:
            gen.retired = True
            drop = gen.inflight == 0
        if drop:
            self._engine_drop(gen)

    def _engine_drop(self, gen: _Generation) -> None:
        try:
            self.engine.drop_collection(gen.engine_name)
        except KeyError:
            pass

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

    # ------------------------------------------------------------------ writers
    def _check_writable(self) -> None:
        if self.closed:
            raise CollectionGone(self.spec.name)
        if self.failed:
            raise RuntimeError(f"collection {self.spec.name!r} is read-only after an error: {self.failed}")

    def upsert(self, ids: np.ndarray | None, vectors: np.ndarray, payloads: list[str | None]) -> tuple[np.ndarray, int]:
        """Durably insert or replace points; returns ``(ids, lsn)`` once fsynced.

        ``vectors`` must already be validated float32 ``(n, dim)``; ``ids`` unique, >= 0.
        """
        self._validate(ids, vectors, payloads)
        with self._mutate:
            self._check_writable()
            if ids is None:
                ids = np.arange(self.next_id, self.next_id + vectors.shape[0], dtype=np.int64)
            lsn = self.wal.append("upsert", ids, vectors, payloads)
            self._apply_logged(WalRecord(lsn, "upsert", ids, vectors, payloads))
        self.wal.sync(lsn)
        self._after_write()
        return ids, lsn

    def _validate(self, ids: np.ndarray | None, vectors: np.ndarray, payloads: list[str | None]) -> None:
        # NOTE: everything that could make apply fail is checked before the WAL append.
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != self.spec.dim:
            raise InvalidRequest("vectors", f"expected float32 vectors of dimension {self.spec.dim}")
        if vectors.shape[0] == 0 or len(payloads) != vectors.shape[0]:
            raise InvalidRequest("points", "expected at least one point and one payload slot per point")
        if not np.isfinite(vectors).all():
            raise InvalidRequest("vector", "vectors must be finite float32 values")
        if ids is not None:
            if ids.shape != (vectors.shape[0],) or ids.dtype != np.int64 or (ids.size and ids.min() < 0):
                raise InvalidRequest("id", "ids must be one int64 >= 0 per point")
            if np.unique(ids).size != ids.size:
                raise InvalidRequest("id", "duplicate ids in one request")

    def delete(self, ids: np.ndarray) -> tuple[int, int]:
        """Durably delete ``ids``; returns ``(deleted, lsn)``."""
        with self._mutate:
            self._check_writable()
            index = self.index
            present = np.asarray([i for i in ids.tolist() if i in index], dtype=np.int64)
            if present.size == 0:
                return 0, self.applied_lsn
            lsn = self.wal.append("delete", present)
            self._apply_logged(WalRecord(lsn, "delete", present))
        self.wal.sync(lsn)
        self._after_write()
        return int(present.size), lsn

    def _apply_logged(self, record: WalRecord) -> None:
        try:
            self._apply(record)
        except BaseException as e:
            # NOTE: the record is in the WAL but not in memory; answering further writes
            # would diverge from what a restart replays, so the collection goes read-only.
            self.failed = f"apply of lsn {record.lsn} failed: {e!r}"
            log.exception("collection %s: %s", self.spec.name, self.failed)
            raise
        self.applied_lsn = record.lsn
        self._wal_bytes_since_snap += 64 + record.ids.size * (8 + 4 * self.spec.dim)

    def _apply(self, record: WalRecord) -> None:
        index = self.index
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
            # NOTE: training and snapshots free hundreds of MiB of transient copies; hand
            # the freed heap back to the OS so the server's RSS tracks what it holds.
            trim_heap()

    # ------------------------------------------------------------------ IVF training
    def _needs_training(self) -> bool:
        return (self.spec.index == "ivf" and not isinstance(self.index, IVFIndex)
                and self.index.ntotal >= self.spec.effective_train_size)

    def train(self) -> bool:
        """Train the IVF quantizer on the buffered vectors and swap the IVF index in."""
        if self.spec.index != "ivf":
            raise Conflict(None, f"collection {self.spec.name!r} is a flat collection; nothing to train")
        with self._mutate:
            self._check_writable()
            buffer = self.index
            if isinstance(buffer, IVFIndex):
                return False
            if buffer.ntotal < self.spec.nlist:
                raise Conflict(None, f"training needs at least nlist={self.spec.nlist} vectors, "
                                     f"the collection holds {buffer.ntotal}")
            with buffer.write_lock:
                ids = buffer.ids()
                if ids.size > _MAX_TRAIN_POINTS_PER_LIST * self.spec.nlist:  # k-means subsamples anyway
                    ids = np.random.default_rng(0).choice(ids, _MAX_TRAIN_POINTS_PER_LIST * self.spec.nlist,
                                                          replace=False)
                sample = buffer.reconstruct(ids)
        ivf = IVFIndex(self.spec.dim, int(self.spec.nlist), self.spec.metric, nprobe=self.spec.nprobe or 8)
        ivf.train(sample)  # NOTE: the slow part runs without the lock; writes go to the buffer
        del sample
        with self._mutate:
            self._check_writable()
            if self.index is not buffer:
                return False
            with buffer.write_lock:
                ids = buffer.ids()
                if ids.size:
                    ivf.add(buffer.reconstruct(ids), ids)
            old, self._gen = self._gen, self._register(ivf)
        self._retire(old)
        log.info("collection %s: trained IVF (nlist=%d) on %d vectors", self.spec.name, ivf.nlist, ivf.ntotal)
        self.snapshot()
        return True

    # ------------------------------------------------------------------ snapshots
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

    # ------------------------------------------------------------------ lifecycle
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
