"""The write-ahead log's record format: encode, decode and find records in a segment's bytes.

A segment is a sequence of records::

    [u32 length][u32 crc32(body)][body]            (little-endian)
    body = [u32 header_length][header JSON][raw little-endian float32 vectors]

The header is small JSON (``lsn``, ``op``, ``ids``, ``dim``, ``payloads``); vectors are
raw bytes, so nothing is ever unpickled.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

_FRAME = struct.Struct("<II")
_HLEN = struct.Struct("<I")
MAX_RECORD = 1 << 30  # a length beyond this can only be garbage


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


def parse_at(data: bytes, off: int, expect_lsn: int | None) -> tuple[WalRecord, int] | None:
    """The complete, intact record at ``off`` (with LSN ``expect_lsn`` unless ``None``) and its size."""
    if off + _FRAME.size > len(data):
        return None
    length, crc = _FRAME.unpack_from(data, off)
    end = off + _FRAME.size + length
    if length < _HLEN.size or length > MAX_RECORD or end > len(data):
        return None
    body = data[off + _FRAME.size:end]
    if zlib.crc32(body) != crc:
        return None
    try:
        record = _decode_body(body)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
        return None
    if expect_lsn is not None and record.lsn != expect_lsn:
        return None
    return record, end - off


def intact_after(data: bytes, off: int) -> list[int]:
    """LSNs of the complete records that follow a bad one at ``off`` (best effort: the bad
    record's length must be sane to step over it)."""
    if off + _FRAME.size > len(data):
        return []
    length, _ = _FRAME.unpack_from(data, off)
    pos, lsns = off + _FRAME.size + length, []
    while length <= MAX_RECORD and (rec := parse_at(data, pos, None)) is not None:
        lsns.append(rec[0].lsn)
        pos += rec[1]
    return lsns
