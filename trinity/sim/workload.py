"""Seeded request streams: Poisson or Gamma arrivals, length distributions or an Azure LLM
inference trace (CSV columns ``TIMESTAMP, ContextTokens, GeneratedTokens``), and each
request's retrieval (RAG, cache lookup and hit, decode-time retrieval)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from trinity.sim.config import LengthDist, WorkloadConfig


@dataclass(frozen=True)
class Workload:
    """Column arrays, one entry per request, ordered by arrival."""

    arrival: np.ndarray  # seconds
    prompt: np.ndarray  # tokens
    output: np.ndarray  # tokens
    rag: np.ndarray  # bool: search before the prefill
    cache: np.ndarray  # bool: cache lookup first
    cache_hit: np.ndarray  # bool: ... which hits (answered from the cache)
    decode_rag: np.ndarray  # bool: search every ``decode_every`` tokens while decoding

    def __len__(self) -> int:
        return int(self.arrival.size)


def arrivals(rate: float, duration_s: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in ``[0, duration_s)``: Gamma inter-arrivals with mean ``1/rate`` and
    coefficient of variation ``cv`` (``cv == 1``: Poisson)."""
    shape = 1.0 / (cv * cv)
    n = int(rate * duration_s + 10 * np.sqrt(rate * duration_s) + 10)
    times = np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), n))
    while times[-1] < duration_s:
        times = np.concatenate([times, times[-1] + np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), n))])
    return times[times < duration_s]


def lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    if dist.kind == "fixed":
        x = np.full(n, dist.mean)
    elif dist.kind == "uniform":
        x = rng.uniform(dist.mean - dist.spread, dist.mean + dist.spread, n)
    else:
        sigma = np.sqrt(np.log1p(dist.spread ** 2))
        x = rng.lognormal(np.log(dist.mean) - sigma * sigma / 2, sigma, n)
    return np.clip(np.rint(x), 1, dist.max_len).astype(np.int64)


def read_azure_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(seconds from the first request, context tokens, generated tokens) of an Azure trace CSV."""
    times, ctx, gen = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            stamp = row["TIMESTAMP"].strip()
            try:
                t = float(stamp)
            except ValueError:
                head, _, frac = stamp.partition(".")
                t = datetime.fromisoformat(head).timestamp() + float(f"0.{frac or 0}")
            times.append(t)
            ctx.append(int(row["ContextTokens"]))
            gen.append(int(row["GeneratedTokens"]))
    if not times:
        raise ValueError(f"trace {path}: no rows")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    return t[order] - t[order][0], np.asarray(ctx)[order], np.asarray(gen)[order]


def build_workload(cfg: WorkloadConfig, seed: int) -> Workload:
    """The request stream; with a trace, its lengths and its arrival pattern rescaled to ``rate``."""
    rng = np.random.default_rng([seed, 20])
    if cfg.trace:
        t, prompt, output = read_azure_trace(cfg.trace)
        span = max(t[-1], 1e-9)
        t = t * (len(t) / span) / cfg.rate if len(t) > 1 else t  # NOTE: keep the trace's burstiness
        keep = t < cfg.duration_s
        arrival, prompt, output = t[keep], np.maximum(prompt[keep], 1), np.maximum(output[keep], 1)
    else:
        arrival = arrivals(cfg.rate, cfg.duration_s, cfg.cv, rng)
        prompt, output = lengths(cfg.prompt, arrival.size, rng), lengths(cfg.output, arrival.size, rng)
    n, mix = arrival.size, cfg.retrieval
    u = rng.random((4, n))
    cache, decode = u[1] < mix.cache_share, u[3] < mix.decode_share
    return Workload(arrival, prompt.astype(np.int64), output.astype(np.int64), (u[0] < mix.rag_share) | decode, cache,
                    cache & (u[2] < mix.cache_hit_rate), decode)
