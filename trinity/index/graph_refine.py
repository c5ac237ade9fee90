"""Search-based refinement of the CAGRA graph (as in Vamana / NSG).

A kNN graph only offers each node its nearest neighbours as edge candidates.  Here every
node searches the built graph for itself (itopk ``trace_itopk``) and takes the nodes the
search *expanded* on its way -- farther nodes in other directions included -- plus its
first kNN candidates; these are pruned by distance (an edge ``u -> c`` is kept unless a
kept ``s`` is at least as close to ``c`` as ``u`` is) and filled back to the fixed degree
with the nearest pruned candidates.  Reverse edges then go through the same pruning, as
in HNSW: each node's list is re-pruned from its own edges plus up to ``REVERSE_CAP`` nodes
that link to it.  A pass searches the graph the previous pass produced.
"""

from __future__ import annotations

import numba
import numpy as np

from trinity.index.graph_build import repair_reachability, reverse_edges
from trinity.index.graph_search import _forget, _prefetch_row, _push, _score, _visit, hash_size_for

_CHUNKS = 256
REVERSE_CAP = 64


def refine(vecs: np.ndarray, aux: np.ndarray, graph: np.ndarray, entries: np.ndarray, knn: np.ndarray,
           trace_itopk: int, query_scale: float, num_passes: int = 1) -> np.ndarray:
    """A refined fixed-degree graph over the same nodes (``graph`` is only read)."""
    n, degree = graph.shape
    for _ in range(num_passes):
        trace = np.full((n, 2 * trace_itopk), -1, np.int32)
        hsize = hash_size_for(trace_itopk, 1, degree, entries.size)
        _trace(vecs, aux, graph, entries, np.float32(query_scale), trace_itopk, hsize, trace, max(1, min(_CHUNKS, n)))
        cand = np.concatenate([trace, knn[:, :2 * degree]], axis=1)
        pruned = np.full((n, degree), -1, np.int32)
        robust_prune(vecs, aux, cand, np.arange(n), pruned)
        graph = np.full((n, degree), -1, np.int32)
        cand = np.concatenate([pruned, reverse_edges(pruned, REVERSE_CAP)], axis=1)
        robust_prune(vecs, aux, cand, np.arange(n), graph)
        repair_reachability(graph, knn, entries)
    return graph


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _trace(vecs, aux, graph, entries, scale, width, hsize, trace, nchunks):  # pragma: no cover - compiled
    """Per node: the nodes a search for it expands, then its final buffer (itself excluded)."""
    n, degree = graph.shape
    cap = trace.shape[1]
    per = (n + nchunks - 1) // nchunks
    for ch in numba.prange(nchunks):
        nodes = np.empty((1, width), np.int32)
        scores = np.empty((1, width), np.float32)
        expanded = np.empty((1, width), np.uint8)
        visited = np.empty((1, hsize), np.int32)
        vcount = np.zeros(1, np.int32)
        q = np.empty(vecs.shape[1], np.float32)
        fresh = np.empty(degree, np.int32)
        fresh_s = np.empty(degree, np.float32)
        for u in range(ch * per, min(n, (ch + 1) * per)):
            nodes[:] = -1
            scores[:] = -np.inf
            expanded[:] = 0
            visited[:] = -1
            vcount[0] = 0
            for d in range(q.size):
                q[d] = vecs[u, d] * scale
            for e in entries:
                if _visit(visited, vcount, 0, e, hsize - 1):
                    _push(nodes, scores, expanded, 0, width, e, _score(q, vecs, aux, e))
            m = 0
            while True:
                p = -1
                for j in range(width):
                    if nodes[0, j] < 0:
                        break
                    if expanded[0, j] == 0:
                        p = j
                        break
                if p < 0:
                    break
                expanded[0, p] = 1
                v = nodes[0, p]
                if m < cap and v != u:
                    trace[u, m] = v
                    m += 1
                if vcount[0] + degree > hsize // 2:
                    _forget(visited, vcount, nodes, 0, hsize)
                f = 0
                for e in range(degree):
                    nb = graph[v, e]
                    if nb >= 0 and _visit(visited, vcount, 0, nb, hsize - 1):
                        _prefetch_row(vecs, nb)
                        fresh[f] = nb
                        f += 1
                for j in range(f):
                    fresh_s[j] = _score(q, vecs, aux, fresh[j])
                for j in range(f):
                    _push(nodes, scores, expanded, 0, width, fresh[j], fresh_s[j])
            for j in range(width):
                v = nodes[0, j]
                if v >= 0 and v != u and expanded[0, j] == 0 and m < cap:
                    trace[u, m] = v
                    m += 1


@numba.njit(inline="always")
def _dist(vecs, aux, a, b):  # pragma: no cover - compiled
    """Squared L2 for L2 indexes, ``1 - a.b`` for inner product (hnswlib's convention)."""
    s = np.float32(0.0)
    for d in range(vecs.shape[1]):
        s += vecs[a, d] * vecs[b, d]
    if aux.size:
        return -(np.float32(2.0) * s + aux[a] + aux[b])
    return np.float32(1.0) - s


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def robust_prune(vecs, aux, cand, rows, out):  # pragma: no cover - compiled
    """Distance pruning of node ``rows[r]``'s candidates ``cand[r]`` into ``out[r]`` (see module doc)."""
    degree = out.shape[1]
    for r in numba.prange(rows.size):
        u = rows[r]
        pool = np.unique(cand[r])
        pool = pool[(pool >= 0) & (pool != u)]
        dist = np.empty(pool.size, np.float32)
        for j in range(pool.size):
            dist[j] = _dist(vecs, aux, u, pool[j])
        order = np.argsort(dist, kind="mergesort")
        pruned = np.empty(pool.size, np.int64)
        k = 0
        o = 0
        for j in range(pool.size):
            c = pool[order[j]]
            keep = k < degree
            for t in range(k if keep else 0):
                if _dist(vecs, aux, out[r, t], c) <= dist[order[j]]:
                    keep = False
                    break
            if keep:
                out[r, k] = c
                k += 1
            else:
                pruned[o] = c
                o += 1
        for t in range(min(degree - k, o)):
            out[r, k + t] = pruned[t]
        for t in range(k + min(degree - k, o), degree):
            out[r, t] = -1
