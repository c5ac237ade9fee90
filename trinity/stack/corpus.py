"""What the local stack runs against: the real corpus loaded into a pool, a warm-up, and
Prometheus samples read back for the demo's report."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from trinity.client.pool import PoolClient
from trinity.data.embed import load_embedded_corpus

__all__ = ["CORPUS_SOURCE", "load_corpus", "scrape", "sum_samples", "warm_pool"]

CORPUS_SOURCE = "Python stdlib docstrings (trinity.data), all-MiniLM-L6-v2 embeddings cached in ~/.cache/trinity"


def load_corpus(pool_url: str, collection: str, num_passages: int, progress: bool = True, batch: int = 2000) -> int:
    """Embed (or load cached) ``num_passages`` passages and upsert them with ``{"text": ...}`` payloads."""
    texts, emb = load_embedded_corpus(num_passages, progress=progress)

    async def upload() -> None:
        pool = PoolClient(pool_url)
        try:
            # NOTE: dim 384 gives the collection the pool's MiniLM embedder, so `text` queries work too.
            await pool.create_collection(collection, emb.shape[1])
            for start in range(0, len(texts), batch):
                ids = range(start, min(start + batch, len(texts)))
                await pool.upsert(collection, list(ids), emb[start:start + batch],
                                  [{"text": texts[i], "source": "python-stdlib-docstrings"} for i in ids])
        finally:
            await pool.aclose()

    asyncio.run(upload())
    return len(texts)


def warm_pool(pool_url: str, collection: str, n: int = 30) -> None:
    """Searches without a deadline: compile the pool's kernels and settle its iteration-time estimate.

    NOTE: a fresh pool's first iterations include JIT compilation; until its iteration-time
    estimate settles, searches with tight deadlines come back partial and empty.
    """
    for i in range(n):
        httpx.post(f"{pool_url}/v1/collections/{collection}/search", json={"text": f"warm-up query {i}", "k": 4},
                   timeout=120).raise_for_status()


def scrape(url: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample of a Prometheus endpoint."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def sum_samples(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix + "{"))
