"""Write-ahead log: round trip, torn tails, corruption, group commit, rotation and trim."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from trinity.pool.storage.wal import WriteAheadLog, encode_record


def _fill(wal: WriteAheadLog, n: int, dim: int = 4, start: int = 0) -> list[int]:
    lsns = []
    for i in range(start, start + n):
        vec = np.full((1, dim), i, dtype=np.float32)
        lsns.append(wal.append("upsert", np.array([i]), vec, [f'{{"i":{i}}}']))
    wal.sync(lsns[-1])
    return lsns


def test_round_trip(tmp_path):
    wal = WriteAheadLog(tmp_path)
    assert list(wal.replay()) == []
    assert _fill(wal, 5) == [1, 2, 3, 4, 5]
    wal.append("delete", np.array([2, 3]))
    wal.close()
    records = list(WriteAheadLog(tmp_path).replay())
    assert [r.lsn for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0].op == "upsert" and records[0].payloads == ['{"i":0}']
    np.testing.assert_array_equal(records[4].vectors, np.full((1, 4), 4, dtype=np.float32))
    assert records[5].op == "delete" and records[5].ids.tolist() == [2, 3] and records[5].vectors is None


def test_replay_skips_records_up_to_the_snapshot_lsn(tmp_path):
    wal = WriteAheadLog(tmp_path)
    list(wal.replay())
    _fill(wal, 6)
    wal.close()
    wal = WriteAheadLog(tmp_path)
    assert [r.lsn for r in wal.replay(after_lsn=4)] == [5, 6]
    assert wal.append("delete", np.array([1])) == 7  # appends continue after the last record


@pytest.mark.parametrize("cut", [1, 5, 8, 9, 20, -1])
def test_torn_tail_is_truncated_and_appends_continue(tmp_path, cut):
    wal = WriteAheadLog(tmp_path)
    list(wal.replay())
    _fill(wal, 3)
    wal.close()
    (seg,) = sorted(tmp_path.glob("*.wal"))
    good = seg.stat().st_size
    tail = encode_record(4, "upsert", np.array([9]), np.ones((1, 4), np.float32), None)
    with open(seg, "ab") as f:  # a crash mid-append: only part of record 4 reached the disk
        f.write(tail[:cut] if cut > 0 else tail[:-1])
    wal = WriteAheadLog(tmp_path)
    assert [r.lsn for r in wal.replay()] == [1, 2, 3]
    assert seg.stat().st_size == good
    assert wal.append("delete", np.array([0])) == 4
    wal.sync(4)
    wal.close()
    assert [r.lsn for r in WriteAheadLog(tmp_path).replay()] == [1, 2, 3, 4]


def test_garbage_and_bit_flips_stop_replay(tmp_path):
    wal = WriteAheadLog(tmp_path)
    list(wal.replay())
    _fill(wal, 4)
    wal.close()
    (seg,) = sorted(tmp_path.glob("*.wal"))
    data = bytearray(seg.read_bytes())
    third = len(encode_record(1, "upsert", np.array([0]), np.zeros((1, 4), np.float32), ['{"i":0}'])) * 2
    data[third + 20] ^= 0xFF  # corrupt record 3's body: CRC mismatch
    seg.write_bytes(bytes(data))
    assert [r.lsn for r in WriteAheadLog(tmp_path).replay()] == [1, 2]
    seg.write_bytes(seg.read_bytes() + os.urandom(100))
    assert [r.lsn for r in WriteAheadLog(tmp_path).replay()] == [1, 2]


def test_corrupt_older_segment_sets_later_ones_aside(tmp_path):
    wal = WriteAheadLog(tmp_path)
    list(wal.replay())
    _fill(wal, 3)
    wal.rotate()
    _fill(wal, 3, start=3)
    wal.close()
    first, second = sorted(tmp_path.glob("*.wal"))
    first.write_bytes(first.read_bytes()[:-3])
    assert [r.lsn for r in WriteAheadLog(tmp_path).replay()] == [1, 2]
    assert not second.exists() and second.with_suffix(".corrupt").exists()


def test_rotate_and_trim(tmp_path):
    wal = WriteAheadLog(tmp_path)
    list(wal.replay())
    _fill(wal, 3)
    assert wal.rotate() == 4
    _fill(wal, 2, start=3)
    assert wal.rotate() == 6
    assert len(list(tmp_path.glob("*.wal"))) == 3
    assert wal.trim(3) == 1  # only the segment holding 1..3 is fully covered
    assert wal.trim(5) == 1
    assert wal.trim(100) == 0  # never the live segment
    wal.close()
    assert [r.lsn for r in WriteAheadLog(tmp_path).replay(after_lsn=5)] == []


def test_group_commit_shares_fsyncs(tmp_path):
    wal = WriteAheadLog(tmp_path)
    list(wal.replay())
    barrier = threading.Barrier(16)

    def writer(i: int) -> None:
        barrier.wait()
        for j in range(10):
            wal.sync(wal.append("delete", np.array([i * 100 + j])))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wal.durable_lsn == 160 and wal.num_synced_records == 160
    assert wal.num_fsyncs < 160  # concurrent writers rode on each other's fsyncs
    wal.close()
    assert len(list(WriteAheadLog(tmp_path).replay())) == 160
