"""Storage scenarios of ``trinity bench faults``: the pool's durability when the disk misbehaves.

Each scenario runs real server processes (``trinity.stack.process``) on a scratch data
directory and checks what clients were told against what the pool holds afterwards:

* ``poison-id``: an id the index refuses is a 422 before the WAL; a WAL record that cannot
  be applied at start-up quarantines its collection only.
* ``kill9-writers``: ``kill -9`` under 8 concurrent writers, restart, verify (2 or 20 cycles).
* ``enospc``: a real full disk (a small tmpfs; needs root): 507 + ``Retry-After``, nothing
  left behind, a restart on the full disk, writes again once space returns.
* ``torn-wal``: the last WAL segment cut mid-record, or a record corrupted, after a crash.
* ``fsync-eio``: fsyncs of the WAL fail (``TRINITY_FAULT_FSYNC``) under concurrent writers.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from trinity.bench.fault_writers import DIM, Verdict, Writers, vector, verify
from trinity.bench.tmpfs import MountError, fill, free, tmpfs
from trinity.pool.storage.wal import WriteAheadLog
from trinity.pool.storage.wal_format import parse_at
from trinity.stack.process import ServerProcess

BAD_ID = 2**63 - 1


class _Rows(list):
    def __init__(self, scenario: str) -> None:
        super().__init__()
        self.scenario = scenario

    def add(self, check: str, value: Any, expect: str, ok: bool) -> None:
        self.append({"scenario": self.scenario, "check": check, "value": value, "expect": expect, "ok": bool(ok)})

    def eq(self, check: str, value: Any, want: Any) -> None:
        self.add(check, value, f"== {want}", value == want)

    def more(self, check: str, value: float, floor: float) -> None:
        self.add(check, value, f"> {floor}", value > floor)


class _Pool:
    """One data directory served by one server process at a time."""

    def __init__(self, data: Path, log: Path, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.data, self.log_path, self.args, self.env = data, log, args, env
        self.proc: ServerProcess | None = None

    def start(self) -> str:
        self.proc = ServerProcess(self.data, *self.args, log_path=self.log_path)
        self.proc.env.update(self.env)
        self.proc.start()
        return self.proc.url

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def _pool(workdir: Path, *args: str, data: Path | None = None, env: dict[str, str] | None = None) -> Iterator[_Pool]:
    pool = _Pool(data or workdir / "data", workdir / "server.log", args, env or {})
    try:
        yield pool
    finally:
        pool.stop()


def _put(c: httpx.Client, coll: str, ids) -> httpx.Response:
    ids = list(ids)
    return c.put(f"/v1/collections/{coll}/vectors",
                 json={"ids": ids, "vectors": [vector(i) for i in ids], "payloads": [{"i": i} for i in ids]})


def _create(c: httpx.Client, name: str, **extra: Any) -> httpx.Response:
    return c.post("/v1/collections", json={"name": name, "dim": DIM, **extra})


def _missing(c: httpx.Client, coll: str, ids: list[int]) -> list[int]:
    r = c.post(f"/v1/collections/{coll}/vectors/get", json={"ids": ids, "with_payloads": False})
    r.raise_for_status()
    return r.json()["missing"]


def _field(r: httpx.Response) -> str | None:
    try:
        return r.json()["error"]["field"]
    except (ValueError, KeyError, TypeError):
        return None


def _collection_dir(data: Path, name: str) -> Path:
    return data / "collections" / json.loads((data / "catalog.json").read_text())["collections"][name]


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- poison-id
def poison_id(workdir: Path, quick: bool) -> list[dict]:
    rows = _Rows("poison-id")
    with _pool(workdir) as pool:
        with httpx.Client(base_url=pool.start(), timeout=60) as c:
            for name in ("d", "e"):
                _create(c, name).raise_for_status()
                _put(c, name, range(5)).raise_for_status()
            before = c.get("/v1/collections/d").json()
            r = _put(c, "d", [BAD_ID])
            after = c.get("/v1/collections/d").json()
            rows.eq("PUT of id 2**63-1: status", r.status_code, 422)
            rows.eq("PUT of id 2**63-1: error field", _field(r), "ids.0")
            rows.eq("WAL bytes written by the refused PUT", after["wal_bytes"] - before["wal_bytes"], 0)
            rows.eq("collection state after it", after["state"], "ready")
            rows.eq("PUT of id 2**63-2 (the largest id): status", _put(c, "d", [BAD_ID - 1]).status_code, 200)
        pool.stop()
        directory = _collection_dir(pool.data, "d")
        wal = WriteAheadLog(directory / "wal")  # NOTE: through the WAL's own API, as a bug could have
        list(wal.replay(json.loads((directory / "MANIFEST").read_text())["lsn"]))
        wal.sync(wal.append("upsert", np.array([BAD_ID]), np.ones((1, DIM), np.float32), None))
        wal.close()
        on_disk = _files(directory)
        try:
            url = pool.start()
        except (RuntimeError, TimeoutError) as e:
            rows.add("server starts with a poisoned WAL record", str(e).splitlines()[0], "starts", False)
            return rows
        with httpx.Client(base_url=url, timeout=60) as c:
            health = c.get("/health")
            rows.eq("/health status with a poisoned WAL record", health.status_code, 200)
            rows.eq("collections quarantined in /health", sorted(health.json().get("quarantined", {})), ["d"])
            r = c.post("/v1/collections/e/search", json={"vector": vector(3), "k": 1})
            found = r.json()["results"][0]["ids"] if r.is_success else r.status_code
            rows.eq("other collection: search finds its point", found, [3])
            rows.eq("other collection: upsert status", _put(c, "e", [9]).status_code, 200)
            r = c.get("/v1/collections/d")
            rows.eq("quarantined collection: status", r.status_code, 503)
            rows.eq("quarantined collection: error field", _field(r), "name")
        rows.eq("quarantine logged with its reason", "quarantined" in pool.log() and "lsn" in pool.log(), True)
        pool.stop()
        rows.eq("quarantined collection's files left untouched", _files(directory) == on_disk, True)
    return rows


# ---------------------------------------------------------------------- kill9-writers
def kill9_writers(workdir: Path, quick: bool) -> list[dict]:
    rows = _Rows("kill9-writers")
    num_cycles, rng, worst = 2 if quick else 20, random.Random(1234), Verdict()
    # NOTE: frequent snapshots and an IVF collection that trains mid-stream: kills land in
    # snapshots, WAL rotation and the training swap too.
    with _pool(workdir, "--snapshot-every", "25") as pool:
        url = pool.start()
        with httpx.Client(base_url=url, timeout=60) as c:
            _create(c, "flat", metric="l2").raise_for_status()
            _create(c, "ivf", index="ivf", nlist=4, train_size=300).raise_for_status()
        writers = Writers(url, ["flat", "ivf"], seed=7)
        for _ in range(num_cycles):
            writers.url = url
            writers.start(8)
            time.sleep(rng.uniform(1.0, 2.5))
            pool.kill()
            writers.join()
            url = pool.start()
            v = verify(url, writers, exact_vectors=("flat",))
            for field in ("lost", "wrong", "resurrected"):
                setattr(worst, field, max(getattr(worst, field), getattr(v, field)))
        with httpx.Client(base_url=url, timeout=60) as c:
            state = c.get("/v1/collections/ivf").json()["state"]
    rows.eq("kill -9 cycles (restart + verify each)", num_cycles, num_cycles)
    rows.more("acknowledged upserts", len(writers.acked), 0)
    rows.more("acknowledged deletes", writers.num_acked_deletes, 0)
    rows.eq("acknowledged upserts lost (worst cycle)", worst.lost, 0)
    rows.eq("acknowledged upserts with another payload or vector", worst.wrong, 0)
    rows.eq("acknowledged deletes resurrected (worst cycle)", worst.resurrected, 0)
    rows.eq("writes refused while the server ran", len(writers.errors) + sum(writers.refusals.values()), 0)
    rows.eq("IVF collection trained through the kills", state, "trained")
    return rows


# ---------------------------------------------------------------------- enospc
def enospc(workdir: Path, quick: bool) -> list[dict]:
    rows = _Rows("enospc")
    try:
        with tmpfs(workdir / "fs", (4 if quick else 16) << 20) as root:
            _enospc(rows, workdir, root, quick)
    except MountError as e:
        rows.add("a small tmpfs to fill", f"not mounted: {e}", "mounted (needs root)", False)
    return rows


def _enospc(rows: _Rows, workdir: Path, root: Path, quick: bool) -> None:
    with _pool(workdir, "--snapshot-every", "20", data=root / "data") as pool:
        with httpx.Client(base_url=pool.start(), timeout=60) as c:
            _create(c, "c").raise_for_status()
            acked = 0
            for _ in range(25 if quick else 105):  # NOTE: 5 records past the last snapshot
                _put(c, "c", range(acked, acked + 10)).raise_for_status()
                acked += 10
            filler = fill(root)
            while (r := _put(c, "c", range(acked, acked + 10))).status_code == 200 and acked < 100_000:
                acked += 10  # NOTE: the WAL's last page has room for a few small records
            refused = list(range(acked, acked + 10))
            rows.eq("write on a full disk: status", r.status_code, 507)
            rows.eq("write on a full disk: Retry-After", "Retry-After" in r.headers, True)
            for what, r in (("collection", _create(c, "x")), ("cache", c.post("/v1/caches", json={"name": "y", "dim": DIM}))):
                rows.eq(f"{what} create on a full disk: status", r.status_code, 507)
                rows.eq(f"{what} create on a full disk: Retry-After", "Retry-After" in r.headers, True)
            rows.eq("directories left by the refused create", len(list((pool.data / "collections").iterdir())) - 1, 0)
            listed = [x["name"] for x in c.get("/v1/collections").json()["collections"]]
            listed += [x["name"] for x in c.get("/v1/caches").json()["caches"]]
            rows.eq("refused collection/cache listed", sorted(set(listed) & {"x", "y"}), [])
            rows.eq("refused write visible", len(refused) - len(_missing(c, "c", refused)), 0)
        pool.stop()  # NOTE: its shutdown snapshot fails on the full disk: the WAL keeps everything
        with httpx.Client(base_url=pool.start(), timeout=60) as c:
            rows.eq("acknowledged upserts lost (restart on the full disk)", len(_missing(c, "c", list(range(acked)))), 0)
            free(filler)
            rows.eq("write after space returns, no restart: status", _put(c, "c", refused).status_code, 200)
            rows.eq("collection create after space returns: status", _create(c, "x").status_code, 201)
            rows.eq("cache create after space returns: status",
                    c.post("/v1/caches", json={"name": "y", "dim": DIM}).status_code, 201)
        pool.kill()
        with httpx.Client(base_url=pool.start(), timeout=60) as c:
            rows.eq("acknowledged upserts lost (kill -9 + restart)", len(_missing(c, "c", list(range(acked + 10)))), 0)
            rows.eq("collection and cache created later survive", [c.get("/v1/collections/x").status_code,
                                                                    c.get("/v1/caches/y").status_code], [200, 200])
        rows.eq("shutdown snapshot on the full disk failed cleanly (logged, WAL kept)",
                "snapshot at close failed" in pool.log(), True)


# ---------------------------------------------------------------------- torn-wal
def torn_wal(workdir: Path, quick: bool) -> list[dict]:
    rows = _Rows("torn-wal")
    num_writes = 20 if quick else 200
    for case, damage in (("torn", _tear_last), ("corrupt", _corrupt_fifth_last)):
        with _pool(workdir / case, "--snapshot-every", "1000000") as pool:
            with httpx.Client(base_url=pool.start(), timeout=60) as c:
                _create(c, "c").raise_for_status()
                for w in range(num_writes):  # one WAL record (lsn w + 1) per write, ids 5w..5w+4
                    _put(c, "c", range(5 * w, 5 * w + 5)).raise_for_status()
            pool.kill()  # no shutdown snapshot: everything is in the WAL
            (segment,) = sorted((_collection_dir(pool.data, "c") / "wal").glob("*.wal"))
            first_bad = damage(segment)
            with httpx.Client(base_url=pool.start(), timeout=60) as c:
                kept = num_writes * 5 - len(_missing(c, "c", list(range(num_writes * 5))))
                rows.eq(f"{case}: ids kept (every complete record before the damage)", kept, 5 * (first_bad - 1))
                r = _put(c, "c", [10**9])
                rows.eq(f"{case}: next write's lsn", r.json().get("lsn") if r.is_success else r.status_code, first_bad)
            log = pool.log()
            said = (f"after lsn {first_bad - 1}" in log
                    and ("torn tail of" in log if case == "torn" else f"(lsn {first_bad + 1}..{num_writes})" in log))
            rows.eq(f"{case}: recovery logs what it dropped (bytes, lsn)", said, True)
    return rows


def _offsets(segment: Path) -> list[int]:
    data, off, out = segment.read_bytes(), 0, []
    while (rec := parse_at(data, off, None)) is not None:
        out.append(off)
        off += rec[1]
    return out


def _tear_last(segment: Path) -> int:
    """Cut the last record in half (a crash mid-append); return its lsn."""
    offsets = _offsets(segment)
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(offsets[-1] + (size - offsets[-1]) // 2)
    return len(offsets)


def _corrupt_fifth_last(segment: Path) -> int:
    """Flip a byte inside the fifth-last record (its CRC fails); return its lsn."""
    offsets = _offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[-5] + 20] ^= 0xFF
    segment.write_bytes(bytes(data))
    return len(offsets) - 4


# ---------------------------------------------------------------------- fsync-eio
def fsync_eio(workdir: Path, quick: bool) -> list[dict]:
    rows = _Rows("fsync-eio")
    switch = workdir / "fault"
    num_flips = 2 if quick else 10
    with _pool(workdir, env={"TRINITY_FAULT_FSYNC": f"@{switch}"}) as pool:
        url = pool.start()
        with httpx.Client(base_url=url, timeout=60) as c:
            _create(c, "c", metric="l2").raise_for_status()
            _put(c, "c", range(10)).raise_for_status()
            switch.write_text("eio:/wal/")
            r = _put(c, "c", [10**9])
            rows.eq("write while fsync fails: status", r.status_code, 503)
            rows.eq("... says the fsync failed", "fsync" in r.text, True)
            rows.eq("... Retry-After", "Retry-After" in r.headers, True)
            rows.eq("refused write visible", 1 - len(_missing(c, "c", [10**9])), 0)
            switch.unlink()
            rows.eq("write after the fault clears, no restart: status", _put(c, "c", [10**9 + 1]).status_code, 200)
        writers = Writers(url, ["c"], seed=3)
        writers.acked.update((("c", i), {"i": i}) for i in range(10))
        writers.acked[("c", 10**9 + 1)] = {"i": 10**9 + 1}
        writers.next_id = 1000
        writers.start(4)
        for _ in range(num_flips):
            time.sleep(0.5)
            switch.write_text("eio:/wal/")
            time.sleep(0.5)
            switch.unlink()
        time.sleep(0.5)
        writers.join()
        acked_after = len(writers.acked)
        pool.kill()
        v = verify(pool.start(), writers, exact_vectors=())
    rows.more("writes refused while fsync failed (under 4 writers)", sum(writers.refusals.values()), 0)
    rows.eq("statuses of refused writes", sorted(writers.refusals), [503])
    rows.more("acknowledged upserts", acked_after, 12)
    rows.eq("acknowledged upserts lost (kill -9 + restart)", v.lost, 0)
    rows.eq("acknowledged upserts with another payload", v.wrong, 0)
    rows.eq("acknowledged deletes resurrected", v.resurrected, 0)
    rows.eq("refused upserts present after the restart", v.refused_present, 0)
    rows.eq("other errors", writers.errors[:3], [])
    return rows


SCENARIOS: dict[str, Callable[[Path, bool], list[dict]]] = {
    "poison-id": poison_id, "kill9-writers": kill9_writers, "enospc": enospc, "torn-wal": torn_wal,
    "fsync-eio": fsync_eio,
}
