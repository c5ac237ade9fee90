"""Parameters of one ``trinity bench engine`` run: the systems, the offered rates, the mix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trinity.bench.workload import DEFAULT_CLASSES, RequestClass

SYSTEMS = ("static", "trinity-fifo", "trinity")
PEERS = ("auto", "faiss", "torch")
DEFAULT_RATES = (500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 4000.0)


@dataclass
class EngineBenchConfig:
    """Parameters of one ``trinity bench engine`` run (all recorded in the JSON)."""

    num_vectors: int = 200_000
    nlist: int = 1024
    num_queries: int = 1000  # held-out query pool (passages not in the index)
    rates: tuple[float, ...] = DEFAULT_RATES
    duration_s: float = 3.0
    systems: tuple[str, ...] = SYSTEMS
    classes: tuple[RequestClass, ...] = DEFAULT_CLASSES
    max_batch: int = 64
    max_wait_ms: float = 2.0
    target_iteration_ms: float = 4.0
    drain_cap_s: float = 10.0
    settle_s: float = 0.3  # idle pause between runs
    warmup_s: float = 1.0
    warmup_rate: float = 300.0
    seed: int = 0
    data: str = "real"  # "real" (embedded corpus) or "synthetic" (clustered random vectors, for tests)
    embed_missing: bool = False  # embed corpus passages missing from the cache (slow on CPU)
    cache_index: bool = True
    threads: int | None = None  # torch, numba and faiss threads; None = every usable core
    blas_threshold: int = 16
    switch_interval_ms: float | None = None  # sys.setswitchinterval for the run; None = Python default
    miss_target: float = 0.01
    repeats: int = 1  # runs per (rate, system); rows and verdicts use the median
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)  # extra SchedulerConfig fields (ablations)
    device: str = "cpu"  # where the collection lives: "cpu" or "cuda[:n]"
    dtype: str | None = None  # storage dtype of the collection (None: the device's default)
    peer: str = "auto"  # static batcher's index: "faiss" (CPU), "torch" (gather + bmm + topk); auto: by device
    index: str = "ivf"  # the collection: "ivf", or "graph" (GraphIndex; the static batcher runs its search too)
    graph_degree: int = 40  # GraphIndex out-degree (index "graph")
    out: Path | None = None
    plot: bool = True

    def __post_init__(self) -> None:
        if self.data not in ("real", "synthetic"):
            raise ValueError(f"data: expected 'real' or 'synthetic', got {self.data!r}")
        unknown = set(self.systems) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"systems: unknown {sorted(unknown)}; expected a subset of {SYSTEMS}")
        if self.repeats < 1:
            raise ValueError("repeats: need at least 1")
        if not self.rates or min(self.rates) <= 0:
            raise ValueError("rates: need at least one positive rate")
        if self.num_vectors < self.nlist:
            raise ValueError("num_vectors must be >= nlist")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda[:n]', got {self.device!r}")
        if self.peer not in PEERS:
            raise ValueError(f"peer: expected one of {PEERS}, got {self.peer!r}")
        if self.index not in ("ivf", "graph"):
            raise ValueError(f"index: expected 'ivf' or 'graph', got {self.index!r}")
        if self.index == "graph" and self.device != "cpu":
            raise ValueError("index: GraphIndex runs on CPU only; use --device cpu")
        if self.peer == "faiss" and self.device != "cpu":
            raise ValueError("peer: faiss is the CPU peer; use --peer torch (or auto) with a GPU collection")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names) or not names:
            raise ValueError("classes: need at least one class, with unique names")

    @property
    def peer_kind(self) -> str:
        if self.index == "graph":
            return "trinity"
        return ("faiss" if self.device == "cpu" else "torch") if self.peer == "auto" else self.peer

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = [c.to_dict() for c in self.classes]
        d["out"] = str(self.out) if self.out else None
        return d
