"""Storage failure paths through a real server process: the poison id, a quarantined
collection, a full disk (a real tmpfs) and a failing WAL fsync (the fsutil seam)."""

from __future__ import annotations

import json

import httpx
import numpy as np
from conftest import error_of
from test_storage_faults import _poison

from trinity.bench.tmpfs import fill, free
from trinity.stack.process import ServerProcess

DIM = 8


def _vec(i: int) -> list[float]:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32).tolist()


def _put(c: httpx.Client, coll: str, ids: list[int]) -> httpx.Response:
    return c.put(f"/v1/collections/{coll}/vectors",
                 json={"ids": ids, "vectors": [_vec(i) for i in ids], "payloads": [{"i": i} for i in ids]})


def _missing(c: httpx.Client, coll: str, ids: list[int]) -> list[int]:
    r = c.post(f"/v1/collections/{coll}/vectors/get", json={"ids": ids})
    assert r.status_code == 200, r.text
    return r.json()["missing"]


def _collection_dir(data, name: str):
    return data / "collections" / json.loads((data / "catalog.json").read_text())["collections"][name]


def test_put_of_an_id_the_index_refuses_is_a_422_before_anything_is_written(client, name):
    assert client.post("/v1/collections", json={"name": name, "dim": DIM}).status_code == 201
    r = _put(client, name, [5, 2**63 - 1])
    assert r.status_code == 422 and error_of(r)["field"] == "ids.1", r.text
    r = client.post(f"/v1/collections/{name}/vectors/delete", json={"ids": [2**63 - 1]})
    assert r.status_code == 422 and error_of(r)["field"] == "ids.0", r.text
    desc = client.get(f"/v1/collections/{name}").json()
    assert desc["lsn"] == 0 and desc["wal_bytes"] == 0 and desc["state"] == "ready"
    assert _put(client, name, [2**63 - 2]).status_code == 200
    client.delete(f"/v1/collections/{name}")


def test_a_poisoned_wal_record_quarantines_one_collection_and_the_rest_serves(tmp_path):
    data = tmp_path / "data"
    srv = ServerProcess(data, log_path=tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for coll in ("bad", "good"):
                assert c.post("/v1/collections", json={"name": coll, "dim": DIM}).status_code == 201
                assert _put(c, coll, list(range(5))).status_code == 200
        srv.stop()
        _poison(_collection_dir(data, "bad"))
        srv = ServerProcess(data, log_path=tmp_path / "server.log").start()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            health = c.get("/health")
            assert health.status_code == 200 and set(health.json()["quarantined"]) == {"bad"}, health.text
            assert "lsn" in health.json()["quarantined"]["bad"]
            r = c.post("/v1/collections/good/search", json={"vector": _vec(3), "k": 1})
            assert r.status_code == 200 and r.json()["results"][0]["ids"] == [3]
            assert _put(c, "good", [7]).status_code == 200
            for r in (c.get("/v1/collections/bad"), _put(c, "bad", [9])):
                assert r.status_code == 503 and error_of(r)["field"] == "name", r.text
                assert "quarantined" in error_of(r)["message"]
        assert "quarantined" in srv.log()
    finally:
        srv.stop()


def test_a_full_disk_answers_507_leaves_nothing_behind_and_recovers_without_a_restart(tmp_path, small_fs):
    data = small_fs / "data"
    args = ("--snapshot-every", "1000000")
    srv = ServerProcess(data, *args, log_path=tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.post("/v1/collections", json={"name": "c", "dim": DIM}).status_code == 201
            for start in range(0, 50, 10):
                assert _put(c, "c", list(range(start, start + 10))).status_code == 200
            filler = fill(small_fs)
            acked = 50
            while (r := _put(c, "c", list(range(acked, acked + 10)))).status_code == 200 and acked < 5000:
                acked += 10  # NOTE: the WAL's last page has room for a few small records
            refused = [r, c.post("/v1/collections", json={"name": "x", "dim": DIM}),
                       c.post("/v1/caches", json={"name": "y", "dim": DIM})]
            for r in refused:
                assert r.status_code == 507 and "Retry-After" in r.headers, r.text
                assert "space" in error_of(r)["message"]
            assert [p.name[:2] for p in (data / "collections").iterdir()] == ["c-"]
            assert [x["name"] for x in c.get("/v1/collections").json()["collections"]] == ["c"]
            assert c.get("/v1/caches").json()["caches"] == [] and c.get("/v1/caches/y").status_code == 404
            assert _missing(c, "c", list(range(acked + 10))) == list(range(acked, acked + 10))
            free(filler)
            assert _put(c, "c", list(range(acked, acked + 10))).status_code == 200
            assert c.post("/v1/collections", json={"name": "x", "dim": DIM}).status_code == 201
            assert c.post("/v1/caches", json={"name": "y", "dim": DIM}).status_code == 201
        srv.kill()
        srv = ServerProcess(data, *args, log_path=tmp_path / "server.log").start()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert _missing(c, "c", list(range(acked + 10))) == []
            assert c.get("/v1/collections/x").status_code == 200 and c.get("/v1/caches/y").status_code == 200
    finally:
        srv.stop()


def test_a_failed_wal_fsync_is_not_acknowledged_and_writes_resume(tmp_path):
    data, switch = tmp_path / "data", tmp_path / "fault"
    srv = ServerProcess(data, log_path=tmp_path / "server.log")
    srv.env["TRINITY_FAULT_FSYNC"] = f"@{switch}"
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.post("/v1/collections", json={"name": "c", "dim": DIM}).status_code == 201
            assert _put(c, "c", list(range(10))).status_code == 200
            switch.write_text("eio:/wal/")
            for ids in ([100], [101]):
                r = _put(c, "c", ids)
                assert r.status_code == 503 and "Retry-After" in r.headers, r.text
                assert "fsync" in error_of(r)["message"]
            assert _missing(c, "c", [100, 101]) == [100, 101]
            switch.unlink()
            assert _put(c, "c", [102]).status_code == 200
        srv.kill()
        srv = ServerProcess(data, log_path=tmp_path / "server.log").start()
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert _missing(c, "c", list(range(10)) + [100, 101, 102]) == [100, 101]
    finally:
        srv.stop()
