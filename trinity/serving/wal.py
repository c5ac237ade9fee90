"""Append-only write-ahead log of one collection, with group commit.

On disk the log is a directory of segments named by their first LSN
(``00000000000000000042.wal``); a segment is a sequence of records::

    [u32 length][u32 crc32(body)][body]            (little-endian)
    body = [u32 header_length][header JSON][raw little-endian float32 vectors]

The header is small JSON (``lsn``, ``op``, ``ids``, ``dim``, ``payloads``); vectors are
raw bytes, so nothing is ever unpickled.  LSNs are consecutive.  Replay stops at the
first record that is short, fails its CRC, does not parse or breaks the LSN sequence:
that is a torn tail from a crash mid-append, so the file is truncated there (and any
later segment is set aside as ``*.corrupt``) before new records are appended.

Durability: :meth:`append` writes to the OS (no fsync); :meth:`sync` makes everything
up to an LSN durable.  Concurrent writers share fsyncs (group commit): one caller
fsyncs on behalf of everyone whose record was written before the fsync started, the
others wait for it.  Callers fsync *before* acknowledging a write.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trinity.fsutil import fsync_dir

import numpy as np

log = logging.getLogger("trinity.serving.wal")

_FRAME = struct.Struct("<II")
_HLEN = struct.Struct("<I")
_MAX_RECORD = 1 << 30  # a length beyond this can only be garbage
_SUFFIX = ".wal"


class WalError(RuntimeError):
    """The log cannot take writes any more (an fsync or write failed)."""


@dataclass(frozen=True)
class WalRecord:
    """One logged mutation: ``upsert`` (ids, vectors, payloads) or ``delete`` (ids)."""

    lsn: int
    op: str
    ids: np.ndarray  # int64
    vectors: np.ndarray | None = None  # (n, dim) float32 for upserts
    payloads: list[str | None] | None = None  # compact JSON text per id, or None


def encode_record(lsn: int, op: str, ids: np.ndarray, vectors: np.ndarray | None,
                  payloads: list[str | None] | None) -> bytes:
    """Serialise one record (frame included)."""
    header = {"lsn": lsn, "op": op, "ids": [int(i) for i in ids]}
    raw = b""
    if vectors is not None:
        vec = np.ascontiguousarray(vectors, dtype="<f4")
        header["dim"] = int(vec.shape[1])
        raw = vec.tobytes()
    if payloads is not None:
        header["payloads"] = payloads
    hdr = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    body = _HLEN.pack(len(hdr)) + hdr + raw
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _decode_body(body: bytes) -> WalRecord:
    (hlen,) = _HLEN.unpack_from(body, 0)
    header = json.loads(body[4:4 + hlen])
    ids = np.asarray(header["ids"], dtype=np.int64)
    vectors = None
    if header["op"] == "upsert":
        dim = int(header["dim"])
        vectors = np.frombuffer(body, dtype="<f4", offset=4 + hlen).reshape(-1, dim).astype(np.float32)
        if vectors.shape[0] != ids.shape[0]:
            raise ValueError("vector count does not match ids")
    elif header["op"] != "delete":
        raise ValueError(f"unknown op {header['op']!r}")
    payloads = header.get("payloads")
    if payloads is not None and len(payloads) != len(ids):
        raise ValueError("payload count does not match ids")
    return WalRecord(int(header["lsn"]), header["op"], ids, vectors, payloads)


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
        self._syncing = False
        self._failed: str | None = None
        self.num_fsyncs = 0
        self.num_synced_records = 0

    # ------------------------------------------------------------------ recovery
    def segments(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.dir.glob(f"*{_SUFFIX}"):
            if p.stem.isdigit():
                out.append((int(p.stem), p))
        return sorted(out)

    def replay(self, after_lsn: int = 0) -> Iterator[WalRecord]:
        """Yield valid records with ``lsn > after_lsn`` in order, repair a torn tail, and
        leave the log open for appending after the last valid record."""
        last = after_lsn
        segments = self.segments()
        for pos, (first, path) in enumerate(segments):
            if first > last + 1:
                log.error("wal %s: records %d..%d are missing (segment %s starts later)",
                          self.dir, last + 1, first - 1, path.name)
            data = path.read_bytes()
            off, expect, torn = 0, first, False
            while off < len(data):
                rec = self._parse_at(data, off, expect)
                if rec is None:
                    self._repair(path, off, len(data), segments[pos + 1:])
                    torn = True
                    break
                record, size = rec
                off += size
                expect = record.lsn + 1
                last = max(last, record.lsn)
                if record.lsn > after_lsn:
                    yield record
            if torn:
                break  # nothing after a torn or corrupt record can be trusted
        self._open_for_append(last + 1)

    @staticmethod
    def _parse_at(data: bytes, off: int, expect_lsn: int) -> tuple[WalRecord, int] | None:
        if off + _FRAME.size > len(data):
            return None
        length, crc = _FRAME.unpack_from(data, off)
        end = off + _FRAME.size + length
        if length < _HLEN.size or length > _MAX_RECORD or end > len(data):
            return None
        body = data[off + _FRAME.size:end]
        if zlib.crc32(body) != crc:
            return None
        try:
            record = _decode_body(body)
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
            return None
        if record.lsn != expect_lsn:
            return None
        return record, end - off

    def _repair(self, path: Path, off: int, size: int, later: list[tuple[int, Path]]) -> None:
        if later:
            log.error("wal %s: corrupt record at byte %d of %s; %d later segment(s) set aside as *.corrupt",
                      self.dir, off, path.name, len(later))
            for _, p in later:
                os.replace(p, p.with_suffix(".corrupt"))
        else:
            log.warning("wal %s: dropping a torn tail of %d bytes at byte %d of %s (crash mid-append)",
                        self.dir, size - off, off, path.name)
        with open(path, "r+b") as f:
            f.truncate(off)
            os.fsync(f.fileno())

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

    # ------------------------------------------------------------------ writing
    @property
    def last_lsn(self) -> int:
        return self._written_lsn

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

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
            data = memoryview(encode_record(lsn, op, ids, vectors, payloads))
            try:
                while data:
                    data = data[os.write(self._fd, data):]
            except OSError as e:
                self._failed = f"write failed: {e}"
                raise WalError(self._failed) from e
            self._next_lsn = lsn + 1
            self._written_lsn = lsn
            return lsn

    def sync(self, lsn: int) -> None:
        """Block until every record up to ``lsn`` is durable (group commit)."""
        with self._cv:
            while self._durable_lsn < lsn:
                self._check()
                if self._syncing:  # someone else's fsync may cover us: wait for it
                    self._cv.wait()
                    continue
                self._syncing = True
                target, fd = self._written_lsn, self._fd
                self._cv.release()
                try:
                    if self.fsync:
                        os.fdatasync(fd)
                    error = None
                except OSError as e:
                    error = e
                finally:
                    self._cv.acquire()
                    self._syncing = False
                    self._cv.notify_all()
                if error is not None:
                    # NOTE: after a failed fsync the page cache state is unknown (fsyncgate);
                    # the only safe answer is to stop accepting writes.
                    self._failed = f"fsync failed: {error}"
                    raise WalError(self._failed) from error
                self.num_fsyncs += 1
                self.num_synced_records += target - self._durable_lsn
                self._durable_lsn = max(self._durable_lsn, target)

    def rotate(self) -> int:
        """Start a new segment; every record so far stays in older segments.  Returns the
        first LSN of the new segment.  Call with appends excluded (collection lock)."""
        with self._cv:
            self._check()
            while self._syncing:
                self._cv.wait()
            if self._written_lsn >= self._segment_first:  # current segment is not empty
                if self.fsync:
                    os.fdatasync(self._fd)
                self._durable_lsn = self._written_lsn
                os.close(self._fd)
                self._segment_first = self._next_lsn
                path = self.dir / _segment_name(self._segment_first)
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                fsync_dir(self.dir)
                self._cv.notify_all()
            return self._segment_first

    def trim(self, upto_lsn: int) -> int:
        """Delete segments whose records all have ``lsn <= upto_lsn``; return how many."""
        with self._cv:
            segments = self.segments()
            removed = 0
            for (first, path), (next_first, _) in zip(segments, segments[1:]):
                if next_first - 1 <= upto_lsn and first != self._segment_first:
                    path.unlink(missing_ok=True)
                    removed += 1
            if removed:
                fsync_dir(self.dir)
            return removed

    def _check(self) -> None:
        if self._failed:
            raise WalError(self._failed)
        if self._fd is None:
            raise WalError("wal is closed")

    def close(self) -> None:
        with self._cv:
            while self._syncing:
                self._cv.wait()
            if self._fd is not None:
                try:
                    if self.fsync and not self._failed:
                        os.fdatasync(self._fd)
                        self._durable_lsn = self._written_lsn
                finally:
                    os.close(self._fd)
                    self._fd = None
