"""kill -9 at a random moment during a stream of acknowledged writes loses none of them (flat, IVF and
graph collections)."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import numpy as np

from trinity.stack.process import ServerProcess

DIM = 8


def _vec(i: int) -> list[float]:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32).tolist()


class Writers:
    """Concurrent clients upserting fresh ids (and deleting acknowledged ones) until the server dies."""

    def __init__(self, url: str, collections: list[str], first_id: int, seed: int) -> None:
        self.url, self.collections = url, collections
        self.next_id = first_id
        self.acked: dict[tuple[str, int], dict] = {}
        self.deleted: set[tuple[str, int]] = set()
        self.ambiguous: set[tuple[str, int]] = set()  # a delete was sent but never acknowledged
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.rng = random.Random(seed)

    def _take(self, n: int) -> list[int]:
        with self.lock:
            ids = list(range(self.next_id, self.next_id + n))
            self.next_id += n
            return ids

    def run(self, worker: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while True:
                coll = self.collections[worker % len(self.collections)]
                try:
                    with self.lock:
                        mine = [i for (cn, i) in self.acked
                                if cn == coll and (cn, i) not in self.deleted and (cn, i) not in self.ambiguous]
                    if mine and self.rng.random() < 0.15:
                        victims = self.rng.sample(mine, min(3, len(mine)))
                        with self.lock:  # until acknowledged, these may or may not be deleted
                            self.ambiguous.update((coll, v) for v in victims)
                        r = c.post(f"/v1/collections/{coll}/vectors/delete", json={"ids": victims})
                        if r.status_code == 200:
                            with self.lock:
                                self.deleted.update((coll, v) for v in victims)
                                self.ambiguous.difference_update((coll, v) for v in victims)
                        continue
                    ids = self._take(self.rng.randint(1, 20))
                    payloads = [{"id": i, "blob": "x" * self.rng.randint(0, 300), "w": worker} for i in ids]
                    r = c.put(f"/v1/collections/{coll}/vectors",
                              json={"ids": ids, "vectors": [_vec(i) for i in ids], "payloads": payloads})
                except httpx.HTTPError:
                    return  # the server died: this write is unacknowledged (may or may not be there)
                if r.status_code != 200:
                    self.errors.append(f"write failed: {r.status_code} {r.text[:200]}")
                    return
                with self.lock:
                    self.acked.update(((coll, i), p) for i, p in zip(ids, payloads))


def _verify(url: str, writers: Writers) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        for coll in writers.collections:
            live = sorted(i for (cn, i) in writers.acked
                          if cn == coll and (cn, i) not in writers.deleted and (cn, i) not in writers.ambiguous)
            gone = sorted(i for (cn, i) in writers.deleted if cn == coll)
            for s in range(0, len(live), 5000):  # the API's limit per call is 10,000 ids
                got = c.post(f"/v1/collections/{coll}/vectors/get",
                             json={"ids": live[s:s + 5000], "with_vectors": True}).json()
                assert "missing" in got, (coll, got)
                assert got["missing"] == [], f"{coll}: acknowledged ids lost: {got['missing'][:20]}"
                for i, payload, vec in zip(got["ids"], got["payloads"], got["vectors"]):
                    assert payload == writers.acked[(coll, i)], f"{coll}/{i}: payload differs"
                    if coll == "flat":  # l2 stores vectors verbatim
                        np.testing.assert_allclose(vec, _vec(i), rtol=1e-6)
            for s in range(0, len(gone), 5000):
                got = c.post(f"/v1/collections/{coll}/vectors/get", json={"ids": gone[s:s + 5000]}).json()
                assert got["ids"] == [], f"{coll}: acknowledged deletes came back: {got['ids'][:20]}"


def test_kill9_during_upserts_loses_no_acknowledged_write(tmp_path):
    data = tmp_path / "data"
    # NOTE: frequent snapshots and an IVF collection that trains mid-stream, so kills land
    # during snapshots, WAL rotation and the training swap too.
    args = ("--snapshot-every", "25")
    srv = ServerProcess(data, *args, log_path=tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=srv.url) as c:
            assert c.post("/v1/collections", json={"name": "flat", "dim": DIM, "metric": "l2"}).status_code == 201
            assert c.post("/v1/collections", json={"name": "ivf", "dim": DIM, "index": "ivf", "nlist": 4,
                                                   "train_size": 300}).status_code == 201
            assert c.post("/v1/collections", json={"name": "graph", "dim": DIM, "index": "graph",
                                                   "graph_degree": 8}).status_code == 201
        writers = Writers(srv.url, ["flat", "ivf", "graph"], first_id=0, seed=7)
        rng = random.Random(1234)
        for _ in range(2):
            threads = [threading.Thread(target=writers.run, args=(w,)) for w in range(4)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(1.0, 2.5))
            srv.kill()
            for t in threads:
                t.join(timeout=30)
            assert not writers.errors, writers.errors
            assert len(writers.acked) > 20
            srv = ServerProcess(data, *args, log_path=tmp_path / "server.log").start()
            writers.url = srv.url
            _verify(srv.url, writers)
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/v1/collections/ivf").json()["state"] == "trained"
            lsns = {n: c.get(f"/v1/collections/{n}").json()["lsn"] for n in ("flat", "ivf", "graph")}
    finally:
        srv.stop()  # graceful: snapshots every collection and trims its WAL
    for directory in (data / "collections").iterdir():  # checked on disk, without a restart
        manifest = json.loads((directory / "MANIFEST").read_text())
        name = json.loads((directory / "spec.json").read_text())["name"]
        assert manifest["lsn"] == lsns[name]
        assert sum(p.stat().st_size for p in (directory / "wal").glob("*.wal")) == 0
