"""Write-ahead log failure paths: a full disk, a failed fsync, what a torn tail drops."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from trinity.bench.tmpfs import fill, free
from trinity.pool.storage.errors import StorageFull, StoreUnavailable
from trinity.pool.storage.wal import WriteAheadLog, encode_record


def _open(path) -> WriteAheadLog:
    wal = WriteAheadLog(path)
    list(wal.replay())
    return wal


def _put(wal: WriteAheadLog, i: int, dim: int = 4) -> int:
    return wal.append("upsert", np.array([i]), np.full((1, dim), i, np.float32), [f'{{"i":{i}}}'])


def test_an_append_on_a_full_disk_is_rolled_back_and_appends_resume(small_fs):
    wal = _open(small_fs / "wal")
    wal.sync(max(_put(wal, i) for i in range(3)))
    (seg,) = (small_fs / "wal").glob("*.wal")
    good = seg.stat().st_size
    filler = fill(small_fs)
    big = np.ones((64, 256), np.float32)  # 64 KiB: more than is left
    with pytest.raises(StorageFull, match="no space"):
        wal.append("upsert", np.arange(64), big, None)
    assert seg.stat().st_size == good and wal.last_lsn == 3 and wal.failed is None
    free(filler)
    assert wal.append("upsert", np.arange(64), big, None) == 4
    wal.sync(4)
    wal.close()
    assert [r.lsn for r in WriteAheadLog(small_fs / "wal").replay()] == [1, 2, 3, 4]


def test_a_failed_fsync_refuses_the_unsynced_writes_and_recover_rolls_them_back(tmp_path, monkeypatch):
    wal = _open(tmp_path / "wal")
    wal.sync(max(_put(wal, i) for i in range(3)))
    (seg,) = (tmp_path / "wal").glob("*.wal")
    durable = seg.stat().st_size
    monkeypatch.setenv("TRINITY_FAULT_FSYNC", f"eio:{tmp_path / 'wal'}")
    lost, epoch = _put(wal, 10), wal.epoch
    with pytest.raises(StoreUnavailable, match="fsync"):
        wal.sync(_put(wal, 11))
    with pytest.raises(StoreUnavailable):
        _put(wal, 12)  # a failed log takes nothing until it is rolled back
    with pytest.raises(StoreUnavailable):
        wal.recover()  # the fsync of the roll-back fails too
    monkeypatch.delenv("TRINITY_FAULT_FSYNC")
    wal.recover()
    assert wal.failed is None and wal.last_lsn == wal.durable_lsn == 3 and seg.stat().st_size == durable
    with pytest.raises(StoreUnavailable, match="rolled back"):
        wal.sync(lost, epoch)  # a writer that was slow to wait must not be acknowledged by a later fsync
    wal.sync(3, epoch)  # ... while a record that was durable before the failure stays acknowledged
    assert _put(wal, 20) == 4
    wal.sync(4)
    wal.close()
    records = list(WriteAheadLog(tmp_path / "wal").replay())
    assert [r.lsn for r in records] == [1, 2, 3, 4] and records[3].ids.tolist() == [20]


def test_a_torn_tail_is_logged_with_the_lsn_and_bytes_it_drops(tmp_path, caplog):
    wal = _open(tmp_path)
    wal.sync(max(_put(wal, i) for i in range(5)))
    wal.close()
    (seg,) = tmp_path.glob("*.wal")
    size = len(encode_record(5, "upsert", np.array([4]), np.zeros((1, 4), np.float32), ['{"i":4}']))
    cut = seg.stat().st_size - size // 2  # the last record, half written
    seg.write_bytes(seg.read_bytes()[:cut])
    caplog.set_level(logging.WARNING, "trinity.pool.storage.wal")
    assert [r.lsn for r in WriteAheadLog(tmp_path).replay()] == [1, 2, 3, 4]
    text = caplog.text
    assert f"{size - size // 2} bytes" in text and "after lsn 4" in text, text


def test_a_corrupt_record_logs_the_complete_records_dropped_after_it(tmp_path, caplog):
    wal = _open(tmp_path)
    wal.sync(max(_put(wal, i) for i in range(6)))
    wal.close()
    (seg,) = tmp_path.glob("*.wal")
    size = len(encode_record(1, "upsert", np.array([0]), np.zeros((1, 4), np.float32), ['{"i":0}']))
    data = bytearray(seg.read_bytes())
    data[3 * size + 20] ^= 0xFF  # record 4: CRC mismatch; 5 and 6 are intact but cannot be trusted
    seg.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, "trinity.pool.storage.wal")
    assert [r.lsn for r in WriteAheadLog(tmp_path).replay()] == [1, 2, 3]
    assert "after lsn 3" in caplog.text and "lsn 5..6" in caplog.text, caplog.text
