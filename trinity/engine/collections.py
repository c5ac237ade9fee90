"""The collections one engine serves: name -> index, plus cheap stats for scheduling."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from trinity.errors import ErrorCode, TrinityError
from trinity.index import FlatIndex, IVFIndex
from trinity.index.base import BaseIndex


class UnknownCollectionError(TrinityError, KeyError, ValueError):
    """No collection with that name."""

    code = ErrorCode.UNKNOWN_COLLECTION

    def __init__(self, message: str) -> None:
        super().__init__(message, "collection")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown collection"


@dataclass(frozen=True)
class CollectionStats:
    """What the scheduler needs to budget work on one collection.

    ``unit_cost`` is the expected vectors per unit: for IVF the *size-biased* mean list
    size (sum s^2 / sum s) -- queries come from the data distribution, so populous lists
    are probed more often than a plain mean suggests; for flat, vectors per chunk.
    """

    kind: str
    num_units: int  # nlist (IVF) or chunks (flat)
    default_nprobe: int
    unit_cost: float
    max_unit_cost: int  # the largest list / chunk: worst case of one unit
    unit_sizes: np.ndarray | None = None  # IVF: vectors per list (metadata, read-only)


class Collections:
    """Thread-safe registry of indexes served by one engine."""

    def __init__(self) -> None:
        self._indexes: dict[str, BaseIndex] = {}
        self._stats: dict[str, tuple[int, CollectionStats]] = {}
        self._generation: dict[str, int] = {}  # bumped by every add: a re-created name is a new collection
        self._lock = threading.Lock()

    def add(self, name: str, index: BaseIndex) -> None:
        if not isinstance(index, (FlatIndex, IVFIndex)):
            raise ValueError(f"collection {name!r}: unsupported index type {type(index).__name__}")
        with self._lock:
            if name in self._indexes:
                raise ValueError(f"collection {name!r} already exists")
            self._indexes[name] = index
            self._generation[name] = self._generation.get(name, 0) + 1

    def remove(self, name: str) -> BaseIndex:
        with self._lock:
            self._stats.pop(name, None)
            try:
                return self._indexes.pop(name)
            except KeyError:
                raise UnknownCollectionError(f"unknown collection {name!r}") from None

    def get(self, name: str) -> BaseIndex:
        try:
            return self._indexes[name]
        except KeyError:
            raise UnknownCollectionError(f"unknown collection {name!r}") from None

    def generation(self, name: str) -> int:
        """How many times ``name`` was added (``0``: never); a request on an older one lost its collection."""
        return self._generation.get(name, 0) if name in self._indexes else 0

    def names(self) -> list[str]:
        return list(self._indexes)

    def __contains__(self, name: str) -> bool:
        return name in self._indexes

    def stats(self, name: str) -> CollectionStats:
        index = self.get(name)
        cached = self._stats.get(name)
        if cached is not None and cached[0] == index.lists.version:
            return cached[1]
        if isinstance(index, IVFIndex):
            sizes = index.lists.list_len.astype(np.float64)
            cost = float((sizes * sizes).sum() / max(sizes.sum(), 1.0))
            unit_sizes = index.lists.list_len.astype(np.int64)
            unit_sizes.setflags(write=False)
            stats = CollectionStats("ivf", index.nlist, index.nprobe, max(cost, 1.0), int(sizes.max(initial=0)),
                                    unit_sizes)
        else:
            chunk = index.chunk_blocks * index.lists.block_size
            stats = CollectionStats("flat", index.num_chunks, 0, float(chunk), chunk)
        self._stats[name] = (index.lists.version, stats)
        return stats
