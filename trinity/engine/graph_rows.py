"""The runner's persistent batch for a graph collection: one search state row per slot.

A graph request's unit of work is a hop.  Its row holds the hop-level search state of
:mod:`trinity.index.graph_search` (itopk buffer, visited hash, counters); a ride advances
each rider's row by the hops it was given, in place, and a row that converges before its
last planned hop is reported done early.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import torch

from trinity.index import GraphIndex
from trinity.index.graph_search import GraphSearchState, empty_state, hash_size_for

#: The largest itopk a graph request may ask for (every row is sized for it).
GRAPH_MAX_ITOPK = 256
#: Hops a request may take beyond itopk / search_width: convergence took at most itopk + 17 hops
#: on 1,000 MiniLM queries over 19k passages at itopk 16-256 (benchmarks/README.md, issue 24).
GRAPH_EXTRA_HOPS = 32
#: The most nodes one hop of a request may expand (CAGRA's search_width).
GRAPH_MAX_SEARCH_WIDTH = 8


def graph_itopk(itopk: int, k: int) -> int:
    """The itopk a request runs with: at least its k, at most what a row holds."""
    return min(max(itopk, k), GRAPH_MAX_ITOPK)


def hop_limit(itopk: int | np.ndarray, search_width: int | np.ndarray = 1) -> int | np.ndarray:
    """Hops a graph request may take: its units."""
    return -(-np.asarray(itopk) // np.asarray(search_width)) + GRAPH_EXTRA_HOPS


def hop_cost(index: GraphIndex) -> int:
    """Planned distance evaluations per hop of width 1: half the out-degree (12.9-24.6 measured, itopk 256-16)."""
    return max(1, index.graph_degree // 2)


class GraphRows:
    """Rows of the requests of one graph collection (one index object)."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.width = GRAPH_MAX_ITOPK
        # NOTE: the hashes' room, sized for width 1; each row uses what one-shot search would give it, up to
        # this (a wider search forgets its hash sooner, costing evaluations, never answers)
        self.hsize = hash_size_for(self.width, 1, index.graph_degree, index.entries.size)
        self.state: GraphSearchState | None = None
        self._storage = index.lists  # a compaction replaces it, renumbering the nodes rows hold
        self.offsets = np.zeros(0, np.float32)
        self.k = np.zeros(0, np.int64)

    @property
    def num_rows(self) -> int:
        return self.k.size

    def add(self, slots: np.ndarray, queries: torch.Tensor, offsets: torch.Tensor, ks: np.ndarray,
            itopk: np.ndarray, widths: np.ndarray) -> None:
        """Seed rows ``slots`` in place for prepared ``queries`` with their ``k``, ``itopk`` (see
        :func:`graph_itopk`) and search widths."""
        if self.num_rows <= int(slots.max()):
            self._grow(1 << max(6, math.ceil(math.log2(int(slots.max()) + 1))))
        self.index.seed_rows(self.state, slots, queries.numpy(), itopk, widths, hop_limit(itopk, widths))
        self.offsets[slots] = offsets.numpy()
        self.k[slots] = ks

    def _grow(self, num_rows: int) -> None:
        old, n = self.state, self.num_rows
        self.state = empty_state(num_rows, self.index.dim, self.width, self.hsize)
        if old is not None:
            for f in fields(GraphSearchState):
                getattr(self.state, f.name)[:n] = getattr(old, f.name)
        self.offsets = np.concatenate([self.offsets, np.zeros(num_rows - n, np.float32)])
        self.k = np.concatenate([self.k, np.zeros(num_rows - n, np.int64)])

    def _check_storage(self) -> None:
        """After a compaction every row restarts from the entry points (its hops so far are lost)."""
        if self.index.lists is self._storage or self.state is None:
            self._storage = self.index.lists
            return
        self._storage, state = self.index.lists, self.state
        self.index.seed_rows(state, np.arange(self.num_rows), state.queries, np.maximum(state.itopk, 1),
                             np.maximum(state.search_width, 1), np.maximum(state.max_hops, 1))

    def advance(self, slots: np.ndarray, hops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance row ``slots[i]`` by ``hops[i]``; return ``(evaluations, done)`` per rider."""
        self._check_storage()
        state = self.state
        before, limit = state.num_evals[slots], state.max_hops[slots]
        state.max_hops[slots] = np.minimum(limit, state.hops[slots] + hops)  # one call, each row its own hops
        try:
            self.index.advance(state, slots, int(hops.max()))
        finally:
            state.max_hops[slots] = limit
        return state.num_evals[slots] - before, state.done()[slots]

    def results(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, ids, k)`` of rows ``slots`` in user units (row ``n``'s answer: its first ``k[n]``)."""
        self._check_storage()
        ks = self.k[slots]
        d, i = self.index.results(self.state, int(ks.max()), self.offsets[slots], rows=slots)
        return d, i, ks
