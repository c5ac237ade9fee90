"""Concurrent writers that remember what the pool acknowledged, and the check against it.

Used by the storage fault scenarios: writers upsert fresh ids (with payloads) and delete
acknowledged ones until the server dies or they are stopped; :func:`verify` then asks a
(restarted) server whether every acknowledged upsert is there with its payload and
vector, every acknowledged delete is gone, and no refused upsert came back.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import httpx
import numpy as np

DIM = 8
_GET_CHUNK = 10_000


def vector(i: int) -> list[float]:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32).tolist()


@dataclass
class Verdict:
    checked: int = 0
    lost: int = 0  # acknowledged upserts missing
    wrong: int = 0  # present with another payload or vector
    resurrected: int = 0  # acknowledged deletes present again
    refused_present: int = 0  # upserts answered 5xx that are there after all


class Writers:
    """``num_workers`` threads writing to ``collections`` through HTTP."""

    def __init__(self, url: str, collections: list[str], *, seed: int = 0, delete_share: float = 0.15) -> None:
        self.url, self.collections, self.delete_share = url, collections, delete_share
        self.next_id = 0
        self.acked: dict[tuple[str, int], dict] = {}
        self.deleted: set[tuple[str, int]] = set()
        self.ambiguous: set[tuple[str, int]] = set()  # a delete was sent but not acknowledged
        self.refused: set[tuple[str, int]] = set()  # upserts answered 503/507
        self.refusals: dict[int, int] = {}  # status -> count
        self.errors: list[str] = []  # answers no fault explains
        self.num_acked_deletes = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self._rng = random.Random(seed)
        self._threads: list[threading.Thread] = []

    def start(self, num_workers: int) -> None:
        self.stop.clear()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(num_workers)]
        for t in self._threads:
            t.start()

    def join(self, timeout_s: float = 60.0) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout_s)

    def _take(self, n: int) -> list[int]:
        with self.lock:
            ids = list(range(self.next_id, self.next_id + n))
            self.next_id += n
            return ids

    def _run(self, worker: int) -> None:
        rng = random.Random(self._rng.random())
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                coll = self.collections[worker % len(self.collections)]
                try:
                    self._one(c, coll, worker, rng)
                except httpx.HTTPError:
                    return  # the server died: the write in flight is neither acked nor refused

    def _one(self, c: httpx.Client, coll: str, worker: int, rng: random.Random) -> None:
        with self.lock:
            live = [i for (cn, i) in self.acked
                    if cn == coll and (cn, i) not in self.deleted and (cn, i) not in self.ambiguous]
        if live and rng.random() < self.delete_share:
            victims = [(coll, v) for v in rng.sample(live, min(3, len(live)))]
            with self.lock:
                self.ambiguous.update(victims)
            r = c.post(f"/v1/collections/{coll}/vectors/delete", json={"ids": [v for _, v in victims]})
            if r.status_code == 200:
                with self.lock:
                    self.deleted.update(victims)
                    self.ambiguous.difference_update(victims)
                    self.num_acked_deletes += len(victims)
            else:
                self._refused(r)
            return
        ids = self._take(rng.randint(1, 20))
        payloads = [{"id": i, "blob": "x" * rng.randint(0, 300), "w": worker} for i in ids]
        r = c.put(f"/v1/collections/{coll}/vectors",
                  json={"ids": ids, "vectors": [vector(i) for i in ids], "payloads": payloads})
        with self.lock:
            if r.status_code == 200:
                self.acked.update(((coll, i), p) for i, p in zip(ids, payloads))
            else:
                self.refused.update((coll, i) for i in ids)
        if r.status_code != 200:
            self._refused(r)

    def _refused(self, r: httpx.Response) -> None:
        with self.lock:
            if r.status_code in (503, 507):
                self.refusals[r.status_code] = self.refusals.get(r.status_code, 0) + 1
            else:
                self.errors.append(f"{r.status_code} {r.text[:200]}")


def verify(url: str, writers: Writers, exact_vectors: tuple[str, ...] = ()) -> Verdict:
    """Check a server against what ``writers`` saw acknowledged (vectors too for ``exact_vectors``)."""
    out = Verdict()
    with httpx.Client(base_url=url, timeout=120) as c:
        for coll in writers.collections:
            live = sorted(i for (cn, i) in writers.acked if cn == coll
                          and (cn, i) not in writers.deleted and (cn, i) not in writers.ambiguous)
            gone = sorted(i for (cn, i) in writers.deleted if cn == coll)
            refused = sorted(i for (cn, i) in writers.refused if cn == coll)
            for chunk in (live[k:k + _GET_CHUNK] for k in range(0, len(live), _GET_CHUNK)):
                got = _get(c, coll, chunk, with_vectors=coll in exact_vectors)
                out.checked += len(chunk)
                out.lost += len(got["missing"])
                for n, (i, payload) in enumerate(zip(got["ids"], got["payloads"])):
                    bad = payload != writers.acked[(coll, i)]
                    if coll in exact_vectors:
                        bad |= not np.allclose(got["vectors"][n], vector(i), rtol=1e-6)
                    out.wrong += bad
            for ids, field in ((gone, "resurrected"), (refused, "refused_present")):
                for chunk in (ids[k:k + _GET_CHUNK] for k in range(0, len(ids), _GET_CHUNK)):
                    setattr(out, field, getattr(out, field) + len(_get(c, coll, chunk)["ids"]))
    return out


def _get(c: httpx.Client, coll: str, ids: list[int], with_vectors: bool = False) -> dict:
    r = c.post(f"/v1/collections/{coll}/vectors/get", json={"ids": ids, "with_vectors": with_vectors})
    r.raise_for_status()
    return r.json()
