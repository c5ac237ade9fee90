"""The collections one engine serves: name -> index, plus cheap stats for scheduling."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from trinity.errors import ErrorCode, TrinityError
from trinity.engine.graph_rows import GRAPH_MAX_ITOPK, hop_cost, hop_limit
from trinity.index import FlatIndex, GraphIndex, IVFIndex
from trinity.index.base import BaseIndex


_GRAPH_ITOPK = 64  # a graph request's itopk when it names none (GraphIndex.search's default)


class UnknownCollectionError(TrinityError, KeyError, ValueError):
    """No collection with that name."""

    code = ErrorCode.UNKNOWN_COLLECTION

    def __init__(self, message: str) -> None:
        super().__init__(message, "collection")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown collection"


@dataclass(frozen=True)
class CollectionStats:
    """What the scheduler needs to plan work on one collection: its units (IVF lists, flat
    chunks or graph hops) and their sizes."""

    kind: str
    num_units: int  # nlist (IVF), chunks (flat), or the most hops a request may take (graph)
    default_nprobe: int  # IVF probes, or a graph request's itopk, when the request names none
    unit_sizes: np.ndarray  # vectors per list / chunk, planned evaluations per hop (metadata, read-only)


class Collections:
    """Thread-safe registry of indexes served by one engine.

    A subclass may serve other index types (the simulator's index shells) through
    ``index_types``, :meth:`describe` and :meth:`assign`.
    """

    index_types: tuple[type, ...] = (FlatIndex, IVFIndex, GraphIndex)

    def __init__(self) -> None:
        self._indexes: dict[str, BaseIndex] = {}
        self._stats: dict[str, tuple[int, CollectionStats]] = {}
        self._generation: dict[str, int] = {}  # bumped by every add: a re-created name is a new collection
        self._lock = threading.Lock()

    def add(self, name: str, index: BaseIndex) -> None:
        if not isinstance(index, self.index_types):
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
        stats = self.describe(index)
        stats.unit_sizes.setflags(write=False)
        self._stats[name] = (index.lists.version, stats)
        return stats

    def describe(self, index) -> CollectionStats:
        """``index``'s units and their sizes (cached by :meth:`stats` until the index changes)."""
        if isinstance(index, IVFIndex):
            return CollectionStats("ivf", index.nlist, index.nprobe, index.lists.list_len.astype(np.int64))
        if isinstance(index, GraphIndex):
            num_units = int(hop_limit(GRAPH_MAX_ITOPK)) if index.ntotal else 0
            return CollectionStats("graph", num_units, _GRAPH_ITOPK, np.full(num_units, hop_cost(index), np.int64))
        sizes = np.array([index.chunk_num_vectors(c) for c in range(index.num_chunks)], dtype=np.int64)
        return CollectionStats("flat", index.num_chunks, 0, sizes)

    def assign(self, name: str, queries: np.ndarray, nprobes: np.ndarray, request_ids: list[str]) -> np.ndarray:
        """Each query's units, ``-1`` padded at the end of its row: IVF probes best first (the coarse quantizer,
        one batched call), flat every chunk, graph its hops (``nprobes``: how many).  ``request_ids``
        let a simulated index assign."""
        index = self.get(name)
        if isinstance(index, GraphIndex):
            num_hops = np.where(index.ntotal > 0, nprobes, 0)
            hops = np.arange(int(num_hops.max(initial=0)), dtype=np.int64)
            return np.where(hops < num_hops[:, None], hops, -1)
        if not isinstance(index, IVFIndex):
            return np.broadcast_to(np.arange(index.num_chunks, dtype=np.int64), (len(queries), index.num_chunks))
        prepared, _ = index.prepare_validated(queries)
        return index.assign_prepared(prepared, np.minimum(nprobes, index.nlist))
