"""Configuration of one simulation: workload, retrieval mix, cluster, SLOs (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

PLACEMENTS = ("dedicated", "prefill", "decode", "cpu")
POLICIES = ("stage", "fifo", "static")


@dataclass(frozen=True)
class LengthDist:
    """Token lengths: ``fixed`` (mean), ``uniform`` (mean +- spread) or ``lognormal`` (mean, cv)."""

    kind: str = "fixed"
    mean: float = 512.0
    spread: float = 0.0  # uniform: half width; lognormal: coefficient of variation
    max_len: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal") or self.mean < 1 or self.spread < 0:
            raise ValueError(f"length distribution: bad {self}")


@dataclass(frozen=True)
class RetrievalMix:
    """Which requests retrieve, and how.

    ``rag_share`` of requests search before their prefill (``k``, ``nprobe``), adding
    ``passage_tokens`` per passage to the prompt; ``cache_share`` look up a semantic cache
    first (a hit, at ``cache_hit_rate``, is answered from the cache); ``decode_share``
    search every ``decode_every`` generated tokens while decoding (and before the prefill,
    as the gateway does: decode-time retrieval needs a collection).
    """

    rag_share: float = 0.5
    cache_share: float = 0.0
    cache_hit_rate: float = 0.3
    decode_share: float = 0.0
    decode_every: int = 32
    k: int = 4
    decode_k: int = 0  # passages per decode-time search (0: k; the gateway's retrieval.decode_k is 1)
    nprobe: int = 32
    cache_nprobe: int = 4
    decode_nprobe: int = 8
    passage_tokens: int = 64
    prefetch_tokens: int = 4  # a decode-time search starts this many tokens before it is needed
    rag_deadline_ms: float = 150.0
    cache_deadline_ms: float = 20.0
    decode_deadline_ms: float = 50.0

    def __post_init__(self) -> None:
        shares = (self.rag_share, self.cache_share, self.cache_hit_rate, self.decode_share)
        if any(not 0.0 <= s <= 1.0 for s in shares) or self.decode_every < 1 or self.k < 1 or self.nprobe < 1:
            raise ValueError(f"retrieval mix: bad {self}")


@dataclass(frozen=True)
class WorkloadConfig:
    """Arrivals (Poisson: ``cv`` 1; Gamma otherwise) at ``rate`` req/s for ``duration_s``,
    lengths from distributions or an Azure LLM trace CSV (``trace``)."""

    rate: float = 10.0
    duration_s: float = 60.0
    cv: float = 1.0
    prompt: LengthDist = LengthDist("lognormal", 1024.0, 0.5)
    output: LengthDist = LengthDist("lognormal", 256.0, 0.5)
    trace: str | None = None
    retrieval: RetrievalMix = RetrievalMix()

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0 or self.cv <= 0:
            raise ValueError("workload: rate, duration_s and cv must be > 0")


@dataclass(frozen=True)
class ClusterConfig:
    """GPUs per role and where retrieval lives.

    ``placement``: ``dedicated`` (``num_vector`` GPUs of their own), ``prefill`` / ``decode``
    (an index replica on every GPU of that role, sharing it with the LLM engine) or ``cpu``
    (``num_vector`` CPU nodes).  ``policy``: the vector engine's batching -- ``stage``
    (Trinity's stage-aware scheduler), ``fifo`` (the same scheduler, FIFO) or ``static``
    (a dynamic batcher per search signature, run to completion).
    """

    num_prefill: int = 1
    num_decode: int = 1
    num_vector: int = 1
    placement: str = "dedicated"
    policy: str = "stage"
    model: str = "llama-3-8b-h100"
    search: str = "search-h100"
    cpu_search: str = "search-cpu-calibrated"
    cpu_cores: int = 64
    corpus_vectors: int = 10_000_000
    nlist: int = 16_384
    index: str = "ivf"  # ivf | flat (the demo's collections are flat)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    target_iteration_ms: float = 2.0
    static_max_batch: int = 64
    static_max_wait_ms: float = 2.0
    embed_ms: float = 0.0  # gateway: embedding a query (one CPU worker; requests that retrieve or look up a cache)
    decode_embed_ms: float = 0.0  # ... the text so far, before a decode-time search
    hop_ms: float = 0.0  # gateway: one HTTP leg (each search, the prefill leg, each decode leg)
    overhead_cv: float = 0.0  # lognormal spread of those gateway costs (0: fixed)
    host_cores: int = 0  # > 0: embedding and streaming share this many host cores (the one-machine demo stack)
    host_ms_per_token: float = 0.0  # host CPU per streamed token (gateway, client, emulator)
    host_background: float = 0.0  # share of the host cores busy with other work (FCFS jobs)
    host_stretch: float = 1.0  # host work takes this many times longer (CPU shared with other processes)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS or self.policy not in POLICIES:
            raise ValueError(f"placement in {PLACEMENTS}, policy in {POLICIES}")
        if self.num_prefill < 1 or self.num_decode < 1 or self.num_vector < 0:
            raise ValueError("cluster: need >= 1 prefill and decode instance")
        if self.placement in ("dedicated", "cpu") and self.num_vector < 1:
            raise ValueError(f"placement {self.placement}: num_vector must be >= 1")

    @property
    def num_vector_gpus(self) -> int:
        return self.num_vector if self.placement == "dedicated" else 0


@dataclass(frozen=True)
class SloConfig:
    ttft_ms: float = 1000.0
    tpot_ms: float = 100.0
    attainment: float = 0.9


@dataclass(frozen=True)
class SimConfig:
    workload: WorkloadConfig = WorkloadConfig()
    cluster: ClusterConfig = ClusterConfig()
    slo: SloConfig = SloConfig()
    seed: int = 0
    max_drain_s: float = 600.0  # after the last arrival, simulate at most this long

    def with_rate(self, rate: float) -> SimConfig:
        return replace(self, workload=replace(self.workload, rate=rate))

    def with_cluster(self, **kw: Any) -> SimConfig:
        return replace(self, cluster=replace(self.cluster, **kw))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_mix() -> RetrievalMix:
    """The study's mix: half RAG, a fifth with a cache lookup, a fifth retrieving while decoding."""
    return RetrievalMix(rag_share=0.5, cache_share=0.2, cache_hit_rate=0.3, decode_share=0.2, decode_every=32)


__all__ = ["ClusterConfig", "LengthDist", "PLACEMENTS", "POLICIES", "RetrievalMix", "SimConfig", "SloConfig",
           "WorkloadConfig", "default_mix"]
