"""Append-only write-ahead log of one collection, with group commit.

On disk the log is a directory of segments named by their first LSN
(``00000000000000000042.wal``), each a sequence of CRC-framed records
(:mod:`trinity.pool.storage.wal_format`; no pickle).  LSNs are consecutive.  Replay stops at the
first record that is short, fails its CRC, does not parse or breaks the LSN sequence:
that is a torn tail from a crash mid-append, so the file is truncated there (and any
later segment is set aside as ``*.corrupt``) before new records are appended; the log
says how many bytes it dropped after which LSN.

Durability: :meth:`append` writes to the OS (no fsync); :meth:`sync` makes everything
up to an LSN durable.  Concurrent writers share fsyncs (group commit): one caller
fsyncs on behalf of everyone whose record was written before the fsync started, the
others wait for it.  Callers fsync *before* acknowledging a write.

Failures: an append that fails (a full disk) truncates its partial bytes away and the
log goes on.  A failed fsync fails every record not yet durable and the log refuses
appends until :meth:`recover` truncates it back to the last durable record (after a
failed fsync the page cache cannot be trusted, so those records are dropped, never
retried) and starts a new ``epoch``: a writer whose record was dropped learns it from
``sync(lsn, epoch)`` even if a later record reuses its LSN.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trinity.fsutil import fdatasync, fsync_dir, is_disk_full
from trinity.pool.storage.errors import StorageFull, StoreUnavailable
from trinity.pool.storage.wal_format import WalRecord, encode_record, intact_after, parse_at

__all__ = ["WalRecord", "WriteAheadLog", "encode_record"]

log = logging.getLogger("trinity.pool.storage.wal")

_SUFFIX = ".wal"


def _segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{_SUFFIX}"


class WriteAheadLog:
    """The segmented log of one collection.  Open with :meth:`replay`, then append."""

    def __init__(self, directory: str | os.PathLike, *, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._cv = threading.Condition()
        self._fd: int | None = None
        self._segment_first = 0
        self._next_lsn = 1
        self._written_lsn = 0
        self._durable_lsn = 0
        self._offset = self._durable_offset = 0  # bytes of the open segment: written, durable
        self._syncing = False
        self._failed: StoreUnavailable | None = None
        self.epoch = 0
        self._epoch_durable: dict[int, int] = {}  # ended epoch -> its last durable lsn
        self.num_fsyncs = 0
        self.num_synced_records = 0

    def segments(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.dir.glob(f"*{_SUFFIX}"):
            if p.stem.isdigit():
                out.append((int(p.stem), p))
        return sorted(out)

    def replay(self, after_lsn: int = 0) -> Iterator[WalRecord]:
        """Yield valid records with ``lsn > after_lsn`` in order, repair a torn tail, and
        leave the log open for appending after the last valid record."""
        last = yield from self._scan(after_lsn, repair=True)
        self._open_for_append(last + 1)

    def records(self, after_lsn: int, upto_lsn: int) -> Iterator[WalRecord]:
        """Records with ``after_lsn < lsn <= upto_lsn``, read without touching any file."""
        for record in self._scan(after_lsn, repair=False):
            if record.lsn > upto_lsn:
                return
            yield record

    def _scan(self, after_lsn: int, repair: bool) -> Iterator[WalRecord]:
        last = after_lsn
        segments = self.segments()
        for pos, (first, path) in enumerate(segments):
            if first > last + 1:
                log.error("wal %s: records %d..%d are missing (segment %s starts later)",
                          self.dir, last + 1, first - 1, path.name)
            data = path.read_bytes()
            off, expect = 0, first
            while off < len(data):
                rec = parse_at(data, off, expect)
                if rec is None:
                    if repair:
                        self._repair(path, data, off, expect - 1, segments[pos + 1:])
                    return last  # nothing after a torn or corrupt record can be trusted
                record, size = rec
                off += size
                expect = record.lsn + 1
                last = max(last, record.lsn)
                if record.lsn > after_lsn:
                    yield record
        return last

    def _repair(self, path: Path, data: bytes, off: int, last_lsn: int, later: list[tuple[int, Path]]) -> None:
        dropped = len(data) - off
        intact = intact_after(data, off)
        if intact:
            log.error("wal %s: dropped %d bytes at byte %d of %s after lsn %d: a corrupt record and %d complete "
                      "record(s) after it (lsn %d..%d)", self.dir, dropped, off, path.name, last_lsn, len(intact),
                      intact[0], intact[-1])
        else:
            log.warning("wal %s: dropped a torn tail of %d bytes at byte %d of %s after lsn %d (an incomplete "
                        "record: a crash mid-append)", self.dir, dropped, off, path.name, last_lsn)
        if later:
            log.error("wal %s: %d later segment(s) from lsn %d set aside as *.corrupt", self.dir, len(later),
                      later[0][0])
            for _, p in later:
                os.replace(p, p.with_suffix(".corrupt"))
        with open(path, "r+b") as f:
            f.truncate(off)
            fdatasync(f.fileno(), path)

    def _open_for_append(self, next_lsn: int) -> None:
        segments = self.segments()
        if segments:
            first, path = segments[-1]
        else:
            first, path = next_lsn, self.dir / _segment_name(next_lsn)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fsync_dir(self.dir)
        self._segment_first = first
        self._next_lsn = next_lsn
        self._written_lsn = self._durable_lsn = next_lsn - 1
        self._offset = self._durable_offset = os.fstat(self._fd).st_size

    @property
    def last_lsn(self) -> int:
        return self._written_lsn

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    @property
    def failed(self) -> str | None:
        """Why the log refuses appends until :meth:`recover` (``None`` when healthy)."""
        return None if self._failed is None else str(self._failed)

    def _path(self) -> Path:
        return self.dir / _segment_name(self._segment_first)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in self.segments() if p.exists())

    def append(self, op: str, ids: np.ndarray, vectors: np.ndarray | None = None,
               payloads: list[str | None] | None = None) -> int:
        """Write one record to the OS and return its LSN (not yet durable: see :meth:`sync`).

        NOTE: the caller serialises appends with applying them, so LSN order is apply order.
        """
        with self._cv:
            self._check()
            lsn = self._next_lsn
            data = encode_record(lsn, op, ids, vectors, payloads)
            view, start = memoryview(data), self._offset
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as e:
                self._undo_append(start, e)
            self._offset = start + len(data)
            self._next_lsn = lsn + 1
            self._written_lsn = lsn
            return lsn

    def _undo_append(self, start: int, error: OSError) -> None:
        """Cut a failed append's partial bytes: a half record followed by later ones would
        end every replay there, dropping the later (acknowledged) records with it."""
        failure = self._error(error, "append")
        try:
            os.ftruncate(self._fd, start)
        except OSError:
            self._failed = failure  # NOTE: recover() truncates before the next append
        raise failure from error

    def sync(self, lsn: int, epoch: int | None = None) -> None:
        """Block until every record up to ``lsn`` is durable (group commit).  ``epoch`` (read
        right after the append) detects a record dropped by :meth:`recover` in the meantime."""
        with self._cv:
            while True:
                if epoch is not None and epoch != self.epoch:
                    if lsn <= self._epoch_durable.get(epoch, 0):
                        return
                    raise StoreUnavailable("the write was rolled back after a failed write-ahead log fsync; "
                                   "it was not acknowledged")
                if self._durable_lsn >= lsn:
                    return
                self._check()
                if self._syncing:  # someone else's fsync may cover us: wait for it
                    self._cv.wait()
                    continue
                self._syncing = True
                target, target_offset, fd, path = self._written_lsn, self._offset, self._fd, self._path()
                self._cv.release()
                try:
                    if self.fsync:
                        fdatasync(fd, path)
                    error = None
                except OSError as e:
                    error = e
                finally:
                    self._cv.acquire()
                    self._syncing = False
                    self._cv.notify_all()
                if error is not None:
                    # NOTE: after a failed fsync the page cache cannot be trusted: refuse all not yet durable.
                    self._failed = self._error(error, "fsync")
                    log.error("wal %s: %s", self.dir, self._failed)
                    raise type(self._failed)(str(self._failed)) from error
                self.num_fsyncs += 1
                self.num_synced_records += max(0, target - self._durable_lsn)
                if target > self._durable_lsn:
                    self._durable_lsn, self._durable_offset = target, target_offset

    def recover(self) -> int:
        """After a failure: truncate the open segment back to its last durable record, fsync
        and reopen it, and start a new epoch.  Returns how many records were dropped;
        raises (and stays failed) if the truncation cannot be made durable."""
        with self._cv:
            while self._syncing:
                self._cv.wait()
            if self._fd is None:
                raise StoreUnavailable("the write-ahead log is closed")
            if self._failed is None:
                return 0
            path = self._path()
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                try:
                    os.ftruncate(fd, self._durable_offset)
                    if self.fsync:
                        fdatasync(fd, path)
                except OSError:
                    os.close(fd)
                    raise
            except OSError as e:
                raise self._error(e, "roll-back (truncate and fsync)") from e
            os.close(self._fd)
            self._fd = fd
            dropped = self._written_lsn - self._durable_lsn
            self._epoch_durable[self.epoch] = self._durable_lsn
            self.epoch += 1
            self._offset = self._durable_offset
            self._written_lsn, self._next_lsn = self._durable_lsn, self._durable_lsn + 1
            self._failed = None
            log.warning("wal %s: recovered; dropped %d record(s) after lsn %d that were never acknowledged",
                        self.dir, dropped, self._durable_lsn)
            return dropped

    def rotate(self) -> int:
        """Start a new segment; every record so far stays in older segments.  Returns the
        first LSN of the new segment.  Call with appends excluded (collection lock)."""
        with self._cv:
            self._check()
            while self._syncing:
                self._cv.wait()
            if self._written_lsn >= self._segment_first:  # current segment is not empty
                try:
                    if self.fsync:
                        fdatasync(self._fd, self._path())
                except OSError as e:
                    self._failed = self._error(e, "fsync")
                    raise type(self._failed)(str(self._failed)) from e
                self._durable_lsn, self._durable_offset = self._written_lsn, self._offset
                path = self.dir / _segment_name(self._next_lsn)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                except OSError as e:
                    raise self._error(e, "rotate") from e
                os.close(self._fd)
                self._fd, self._segment_first = fd, self._next_lsn
                self._offset = self._durable_offset = 0
                fsync_dir(self.dir)
                self._cv.notify_all()
            return self._segment_first

    def trim(self, upto_lsn: int) -> int:
        """Delete segments whose records all have ``lsn <= upto_lsn``; return how many."""
        with self._cv:
            segments = self.segments()
            removed = 0
            for (first, path), (next_first, _) in itertools.pairwise(segments):
                if next_first - 1 <= upto_lsn and first != self._segment_first:
                    path.unlink(missing_ok=True)
                    removed += 1
            if removed:
                fsync_dir(self.dir)
            return removed

    def _error(self, e: OSError, what: str) -> StoreUnavailable:
        if is_disk_full(e):
            return StorageFull(f"no space left on the device for the write-ahead log ({what}); the write was not "
                               f"stored: retry when space is freed")
        return StoreUnavailable(f"write-ahead log {what} failed ({e.strerror or e}); the write was not acknowledged")

    def _check(self) -> None:
        if self._failed is not None:
            raise type(self._failed)(str(self._failed))
        if self._fd is None:
            raise StoreUnavailable("the write-ahead log is closed")

    def close(self) -> None:
        with self._cv:
            while self._syncing:
                self._cv.wait()
            if self._fd is not None:
                try:
                    if self.fsync and not self._failed:
                        fdatasync(self._fd, self._path())
                        self._durable_lsn = self._written_lsn
                finally:
                    os.close(self._fd)
                    self._fd = None

