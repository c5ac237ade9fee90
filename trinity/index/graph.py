"""Graph index (CAGRA-style fixed-degree graph, itopk-buffer search), FAISS-shaped.

Vectors live in one blocked list that only grows between consolidations, so a node
number is the vector's slot.  The build runs when an add brings at least as many vectors
as the index holds: a CAGRA graph (:mod:`trinity.index.graph_build`), then
``refine_passes`` passes of search-based refinement (:mod:`trinity.index.graph_refine`;
``refine_itopk=0`` skips them).
Smaller adds are inserts (:mod:`trinity.index.graph_update`).  ``remove`` marks nodes
deleted: they are never returned but still route, until more than
``consolidate_threshold`` of the nodes are deleted and the graph is repaired and
compacted.  Search state, the hop kernels and the seam the engine drives per hop are in
:mod:`trinity.index.graph_search`.
"""

from __future__ import annotations

import numpy as np
import torch

from trinity.errors import InvalidInput
from trinity.index.base import BaseIndex
from trinity.index.blocks import BlockedLists
from trinity.index.graph_build import build_graph
from trinity.index.graph_persist import GraphPersistence
from trinity.index.graph_refine import refine
from trinity.index.graph_search import GraphSearchState, advance, hash_size_for, init_state, seed_rows, state_topk
from trinity.index.graph_update import consolidate, insert_nodes
from trinity.index.idmap import IdMap
from trinity.index.inputs import ArrayLike, as_ids, as_matrix, check_k
from trinity.index.metric import Metric

DEFAULT_GRAPH_BLOCK_SIZE = 256
_SEARCH_BATCH = 4096
_STATE_BYTES = 64 << 20  # bounds the visited sets of one internal search batch
_NO_HOP_LIMIT = (1 << 31) - 1
#: kNN candidates per node before pruning, per unit of degree (CAGRA uses 2x; see benchmarks/README.md).
_INTERMEDIATE_FACTOR = 3


def _positive(value: object, name: str, upper: int = 1 << 20) -> int:
    return check_k(value, name=name, max_k=upper)


def _per_query(value: int | np.ndarray, n: int, name: str, upper: int) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value), (n,))
    if arr.dtype.kind not in "iu" or arr.size and (arr.min() < 1 or arr.max() > upper):
        raise InvalidInput(f"{name}: expected ints in [1, {upper}], got {value!r}", name)
    return arr.astype(np.int32)


class GraphIndex(GraphPersistence, BaseIndex):
    """Graph ANN index: ``add``, ``search(q, k, itopk, search_width, max_hops) -> (D, I)``, ``remove``.

    Build knobs: ``intermediate_degree`` kNN candidates per node (default 3x the degree) from
    IVF lists of ``build_list_size`` vectors, each probing ``build_probes`` lists;
    ``num_entries`` entry points; ``refine_itopk`` the itopk of the refinement searches, run
    ``refine_passes`` times (each pass searches the graph the previous one built).
    """

    kind = "graph"

    def __init__(self, dim: int, metric: str | Metric = "ip", graph_degree: int = 40,
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None, block_size: int = DEFAULT_GRAPH_BLOCK_SIZE,
                 intermediate_degree: int | None = None, num_entries: int = 64, build_probes: int = 12,
                 build_list_size: int = 256, refine_itopk: int = 96, refine_passes: int = 2,
                 consolidate_threshold: float = 0.2,
                 seed: int = 0) -> None:
        if torch.device(device).type != "cpu":
            raise ValueError(f"device: GraphIndex runs on CPU only (numba kernels), got {device!r}")
        self.graph_degree = _positive(graph_degree, "graph_degree", 1024)
        self.intermediate_degree = _positive(intermediate_degree or _INTERMEDIATE_FACTOR * self.graph_degree,
                                             "intermediate_degree", 4096)
        if self.intermediate_degree < self.graph_degree:
            raise ValueError(f"intermediate_degree: must be >= graph_degree ({self.graph_degree}), "
                             f"got {self.intermediate_degree}")
        self.num_entries = _positive(num_entries, "num_entries", 1 << 16)
        self.build_probes = _positive(build_probes, "build_probes")
        self.build_list_size = _positive(build_list_size, "build_list_size")
        self.refine_itopk = 0 if refine_itopk == 0 else _positive(refine_itopk, "refine_itopk", 4096)
        self.refine_passes = _positive(refine_passes, "refine_passes", 16)
        if not isinstance(consolidate_threshold, (int, float)) or not 0.0 < consolidate_threshold <= 1.0:
            raise ValueError(f"consolidate_threshold: expected a float in (0, 1], got {consolidate_threshold!r}")
        self.consolidate_threshold = float(consolidate_threshold)
        self.seed = int(seed)
        super().__init__(dim, 1, block_size, metric, device, dtype)
        self._graph = np.full((0, self.graph_degree), -1, np.int32)  # capacity rows; the first num_nodes are live
        self._deleted = np.zeros(0, np.uint8)
        self.entries = np.zeros(0, np.int32)

    # ------------------------------------------------------------------ storage views
    @property
    def num_nodes(self) -> int:
        """Nodes in the graph, deleted ones included."""
        return int(self.lists.list_len[0])

    @property
    def graph(self) -> np.ndarray:
        """``(num_nodes, graph_degree)`` int32 out-neighbours (``-1`` = none)."""
        return self._graph[:self.num_nodes]

    @property
    def deleted(self) -> np.ndarray:
        return self._deleted[:self.num_nodes]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        vecs = self.lists.vectors.view(-1, self.dim).numpy()
        aux = self.lists.aux.view(-1).numpy() if self.lists.aux is not None else np.zeros(0, np.float32)
        return vecs, aux

    @property
    def _query_scale(self) -> float:
        return 2.0 if self.metric.uses_norms else 1.0

    def _assign_lists(self, vecs: torch.Tensor) -> np.ndarray:
        return np.zeros(vecs.shape[0], dtype=np.int64)

    # ------------------------------------------------------------------ writes
    def add(self, x: ArrayLike, ids: ArrayLike | None = None) -> np.ndarray:
        """Add vectors (a build, or inserts into the built graph); return their int64 ids."""
        vecs = as_matrix(x, self.dim, name="x", device=self.device, dtype=torch.float32)
        id_arr = as_ids(ids, vecs.shape[0])
        with self.write_lock:
            if id_arr is None:
                id_arr = np.arange(self._next_id, self._next_id + vecs.shape[0], dtype=np.int64)
            else:
                self._mark_deleted(id_arr)
            vecs = self.metric.prepare_vectors(vecs)
            aux = self.metric.vector_aux(vecs) if self.metric.uses_norms else None
            live_before = self.ntotal
            first = self.num_nodes
            slots = self.lists.append(self._assign_lists(vecs), vecs, aux, id_arr)
            if not np.array_equal(slots, np.arange(first, first + slots.size)):
                raise RuntimeError("GraphIndex: storage slots are not sequential")  # NOTE: node == slot invariant
            self._slot_of.put(id_arr, slots)
            self._next_id = max(self._next_id, int(id_arr.max()) + 1)
            self._grow(self.num_nodes)
            if slots.size >= live_before:
                self._rebuild()
            else:
                vecs_np, aux_np = self._arrays()
                insert_nodes(vecs_np, aux_np, self._graph, self.entries, slots, self._query_scale,
                             self.intermediate_degree)
            self._maybe_consolidate()
        return id_arr

    def remove(self, ids: ArrayLike | list[int]) -> int:
        """Mark ids deleted (unknown ids are ignored); return how many were removed."""
        arr = np.atleast_1d(np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids))
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"ids: expected integer ids, got dtype {arr.dtype}")
        with self.write_lock:
            removed = self._mark_deleted(arr.astype(np.int64))
            self._maybe_consolidate()
        return removed

    remove_ids = remove

    def _mark_deleted(self, ids: np.ndarray) -> int:
        ids = np.unique(ids[ids >= 0])
        slots = self._slot_of.pop(ids) if ids.size else ids
        slots = slots[slots >= 0]
        self._deleted[slots] = 1
        return int(slots.size)

    def _grow(self, rows: int) -> None:
        if rows > self._graph.shape[0]:
            cap = max(rows, int(self._graph.shape[0] * 1.5))
            graph = np.full((cap, self.graph_degree), -1, np.int32)
            graph[:self._graph.shape[0]] = self._graph
            deleted = np.zeros(cap, np.uint8)
            deleted[:self._deleted.size] = self._deleted
            self._graph, self._deleted = graph, deleted

    def _maybe_consolidate(self) -> None:
        if self.num_nodes and self.deleted.sum() > self.consolidate_threshold * self.num_nodes:
            self.consolidate()

    def consolidate(self) -> None:
        """Repair the in-neighbours of deleted nodes, then drop the deleted nodes."""
        with self.write_lock:
            if not self.deleted.any():
                return
            vecs, aux = self._arrays()
            live, graph, entries = consolidate(vecs, aux, self.graph.copy(), self.deleted, self.entries,
                                               self._query_scale, self.intermediate_degree)
            self._compact(live)
            self._graph, self._deleted, self.entries = graph, np.zeros(live.size, np.uint8), entries

    def _compact(self, live: np.ndarray) -> None:
        """Rewrite storage with only the ``live`` nodes, in order (the graph is the caller's)."""
        idx = torch.from_numpy(live.astype(np.int64))
        vecs = self.lists.vectors.view(-1, self.dim).index_select(0, idx)
        aux = None if self.lists.aux is None else self.lists.aux.view(-1).index_select(0, idx)
        ids = self.lists.slot_ids.view(-1).index_select(0, idx).numpy()
        self.lists = BlockedLists(1, self.dim, self.lists.block_size, dtype=self.dtype, device=self.device,
                                  with_aux=self.metric.uses_norms)
        self.lists.append(np.zeros(live.size, np.int64), vecs, aux, ids)
        self._slot_of = IdMap(2 * live.size)
        self._slot_of.put(ids, np.arange(live.size, dtype=np.int64))

    def _rebuild(self) -> None:
        if self.deleted.any():
            self._compact(np.nonzero(self.deleted == 0)[0])
        n = self.num_nodes
        x = self.lists.vectors.view(-1, self.dim)[:n]
        aux = None if self.lists.aux is None else self.lists.aux.view(-1)[:n]
        graph, self.entries, knn = build_graph(x, aux, self.graph_degree, self.intermediate_degree,
                                               self.num_entries, self.build_probes, self.build_list_size, self.seed)
        if self.refine_itopk:
            vecs, aux_np = self._arrays()
            graph = refine(vecs, aux_np, graph, self.entries, knn, self.refine_itopk, self._query_scale,
                           self.refine_passes)
        self._graph, self._deleted = graph, np.zeros(n, np.uint8)

    # ------------------------------------------------------------------ search
    def start_search(self, queries: np.ndarray, itopk: int | np.ndarray = 64, search_width: int | np.ndarray = 1,
                     max_hops: int | np.ndarray | None = None) -> GraphSearchState:
        """A seeded search state for prepared ``queries`` (see :meth:`prepare_queries`)."""
        n = queries.shape[0]
        vecs, aux = self._arrays()
        return init_state(vecs, aux, self.entries, self.graph_degree, queries, *self._limits(n, itopk, search_width,
                                                                                             max_hops))

    def seed_rows(self, state: GraphSearchState, rows: np.ndarray, queries: np.ndarray, itopk: int | np.ndarray = 64,
                  search_width: int | np.ndarray = 1, max_hops: int | np.ndarray | None = None) -> None:
        """(Re)start ``rows`` of ``state`` (a persistent batch, see :func:`empty_state`) for prepared ``queries``."""
        vecs, aux = self._arrays()
        itopk, search_width, max_hops = self._limits(len(rows), itopk, search_width, max_hops)
        hash_size = [hash_size_for(t, w, self.graph_degree, self.entries.size)
                     for t, w in zip(itopk.tolist(), search_width.tolist())]
        seed_rows(vecs, aux, self.entries, state, rows, queries, itopk, search_width, max_hops, np.array(hash_size))

    @staticmethod
    def _limits(n: int, itopk, search_width, max_hops) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (_per_query(itopk, n, "itopk", 1 << 16), _per_query(search_width, n, "search_width", 256),
                _per_query(_NO_HOP_LIMIT if max_hops is None else max_hops, n, "max_hops", _NO_HOP_LIMIT))

    def advance(self, state: GraphSearchState, rows: np.ndarray | None = None, num_hops: int = 1) -> np.ndarray:
        """Advance ``rows`` (default: all) of ``state`` by up to ``num_hops``; return their done flags."""
        rows = np.arange(state.num_queries) if rows is None else rows
        vecs, aux = self._arrays()
        return advance(vecs, aux, self._graph, state, rows, num_hops)

    def results(self, state: GraphSearchState, k: int, offset: torch.Tensor | np.ndarray,
                rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` live results so far of ``rows`` (default: all) of ``state``: ``(D, I)`` in user
        conventions (``offset``: one per row returned)."""
        scores, nodes = state_topk(state, self._deleted, k, rows)
        valid = nodes >= 0
        ids = np.full(nodes.shape, -1, np.int64)
        ids[valid] = self.lists.slot_ids.view(-1).numpy()[nodes[valid]]
        offset = np.asarray(offset, dtype=np.float32)
        dist = np.maximum(offset[:, None] - scores, 0.0) if self.metric.uses_norms else scores.copy()
        dist[~valid] = self.metric.sentinel
        return dist, ids

    def search(self, q: ArrayLike, k: int, itopk: int = 64, search_width: int = 1,
               max_hops: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` (``itopk >= ntotal`` is exact): ``(D, I)``, best first, ``-1`` padded."""
        queries, offset, k = self._prepare_numpy(q, k)
        itopk = max(_positive(itopk, "itopk", 1 << 16), k)
        width = _positive(search_width, "search_width", 256)
        hops = _NO_HOP_LIMIT if max_hops is None else _positive(max_hops, "max_hops", _NO_HOP_LIMIT)
        vecs, aux = self._arrays()
        d_out, i_out = [], []
        hsize = hash_size_for(itopk, width, self.graph_degree, self.entries.size)
        step = max(1, min(_SEARCH_BATCH, _STATE_BYTES // (4 * hsize)))
        for s in range(0, queries.shape[0], step):
            qb = queries[s:s + step]
            n = qb.shape[0]
            state = init_state(vecs, aux, self.entries, self.graph_degree, qb, np.full(n, itopk, np.int32),
                               np.full(n, width, np.int32), np.full(n, hops, np.int32))
            advance(vecs, aux, self._graph, state, np.arange(n), hops)
            d, i = self.results(state, k, offset[s:s + step])
            d_out.append(d)
            i_out.append(i)
        return np.concatenate(d_out), np.concatenate(i_out)

    def _prepare_numpy(self, q: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`_prepare_search` in numpy; a float32 numpy batch skips torch (~9 us per call)."""
        if not (isinstance(q, np.ndarray) and q.dtype == np.float32 and q.ndim == 2 and q.shape[1] == self.dim
                and q.shape[0] and np.isfinite(q.sum()) and not self.metric.normalizes):
            queries, offset, k = self._prepare_search(q, k)
            return queries.numpy(), offset.numpy(), k
        q = np.ascontiguousarray(q)
        if self.metric.uses_norms:
            return q * np.float32(2.0), np.einsum("ij,ij->i", q, q), check_k(k)
        return q, np.zeros(q.shape[0], np.float32), check_k(k)
