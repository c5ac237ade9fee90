"""Graph construction, CAGRA-style (arXiv 2308.15136).

1. An approximate kNN graph of ``intermediate_degree`` from Trinity's own IVF: k-means
   lists, then per list one GEMM of its members against the members of the ``num_probes``
   lists nearest its centroid (the list itself first).
2. Rank-based pruning to ``degree``: an edge ``X -> Y`` (rank ``c`` in X's list) is
   *detourable* through ``Z`` (rank ``a``) when ``Y`` is ``Z``'s neighbour of rank ``b`` and
   ``max(a, b) < c``; edges are kept by (detourable routes, rank), fewest first.  Routes
   are counted through the first ``degree`` neighbours of each ``Z`` (the cost is
   ``intermediate_degree * degree`` lookups per node).
3. Reverse edges merged: the first half of a node's list is its best pruned edges, then
   the reverse edges (by their rank at the source), then the rest of the pruned edges.
4. Reachability repair: nodes not reached from the entry points get an in-edge from their
   nearest reached kNN neighbour (replacing an edge whose target keeps another in-edge).

Entry points are the nearest nodes to ``num_entries`` k-means centroids.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from trinity.index.kmeans import kmeans

_ROW_CHUNKS = 256
_REPAIR_ROUNDS = 4


def similarity(a: torch.Tensor, b: torch.Tensor, b_aux: torch.Tensor | None) -> torch.Tensor:
    """Internal similarity of rows of ``a`` to rows of ``b`` (``2 a.b - |b|^2`` for L2, as a ranking)."""
    if b_aux is None:
        return a @ b.t()
    return torch.addmm(b_aux, a, b.t(), alpha=2.0)


def knn_candidates(x: torch.Tensor, aux: torch.Tensor | None, k: int, num_probes: int, list_size: int,
                   seed: int = 0) -> np.ndarray:
    """``(n, k)`` int32 approximate nearest neighbours (best first, no self, ``-1`` padded)."""
    n = x.shape[0]
    nlist = max(1, min(n // 2, round(n / list_size)))
    out = np.full((n, k), -1, np.int32)
    if n < 2:
        return out
    centroids = kmeans(x, nlist, niter=10, seed=seed) if nlist > 1 else x[:1].clone()
    c_aux = -(centroids * centroids).sum(1)
    assign = torch.cat([similarity(x[s:s + 16384], centroids, c_aux).argmax(1) for s in range(0, n, 16384)])
    order = torch.argsort(assign, stable=True)
    counts = torch.bincount(assign, minlength=nlist).tolist()
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    probes = torch.topk(similarity(centroids, centroids, c_aux), min(num_probes, nlist), dim=1).indices.numpy()
    for c in range(nlist):
        if counts[c] == 0:
            continue
        others = [int(p) for p in probes[c] if p != c][: max(0, num_probes - 1)]
        members = order[starts[c]:starts[c + 1]]
        cand = torch.cat([members] + [order[starts[p]:starts[p + 1]] for p in others])
        scores = similarity(x[members], x[cand], None if aux is None else aux[cand])
        m = members.shape[0]
        scores[torch.arange(m), torch.arange(m)] = -torch.inf
        kk = min(k, cand.shape[0] - 1)
        if kk <= 0:
            continue
        best = torch.topk(scores, kk, dim=1)
        found = cand[best.indices].to(torch.int32)
        found[torch.isneginf(best.values)] = -1
        out[members.numpy(), :kk] = found.numpy()
    return out


def entry_points(x: torch.Tensor, aux: torch.Tensor | None, num_entries: int, seed: int = 0) -> np.ndarray:
    """Distinct nodes nearest to ``num_entries`` k-means centroids (int32)."""
    n = x.shape[0]
    e = min(num_entries, n)
    centroids = kmeans(x, e, niter=10, seed=seed) if e < n else x.clone()
    best = torch.full((e,), -torch.inf)
    arg = torch.zeros(e, dtype=torch.long)
    for s in range(0, n, 16384):
        # NOTE: the node nearest (in L2) to each centroid: 2 c.x - |x|^2, whatever the metric.
        xs = x[s:s + 16384]
        sc = torch.addmm(-(xs * xs).sum(1)[:, None], xs, centroids.t(), alpha=2.0)
        v, i = sc.max(0)
        better = v > best
        best[better], arg[better] = v[better], i[better] + s
    return np.unique(arg.numpy()).astype(np.int32)


def build_graph(x: torch.Tensor, aux: torch.Tensor | None, degree: int, intermediate_degree: int, num_entries: int,
                num_probes: int, list_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-degree graph ``(n, degree)`` int32 over the rows of ``x``, its entry points and the kNN lists."""
    knn = knn_candidates(x, aux, intermediate_degree, num_probes, list_size, seed)
    pruned = np.full((x.shape[0], degree), -1, np.int32)
    prune(knn, np.ascontiguousarray(knn[:, :degree]), pruned)
    graph = merge_reverse(pruned, max(1, degree // 2))
    entries = entry_points(x, aux, num_entries, seed)
    repair_reachability(graph, knn, entries)
    return graph, entries, knn


def prune(cand: np.ndarray, adj: np.ndarray, out: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Rank-based pruning: ``out[r]`` = the best ``out.shape[1]`` of ``cand[r]`` (see module doc).

    ``adj`` gives each candidate's own ranked neighbours; ``rows`` (default: all) are the
    nodes ``cand`` belongs to, so they are never their own neighbours.
    """
    rows = np.arange(cand.shape[0], dtype=np.int64) if rows is None else rows.astype(np.int64)
    _prune(cand, adj, rows, out, max(1, min(_ROW_CHUNKS, cand.shape[0])))


@numba.njit(parallel=True, cache=True, nogil=True)
def _prune(cand, adj, rows, out, nchunks):  # pragma: no cover - compiled
    m, c = cand.shape
    degree = out.shape[1]
    per = (m + nchunks - 1) // nchunks
    for ch in numba.prange(nchunks):
        rank = np.full(adj.shape[0], -1, np.int16)
        detour = np.zeros(c, np.int32)
        for r in range(ch * per, min(m, (ch + 1) * per)):
            valid = 0
            for j in range(c):
                v = cand[r, j]
                if v >= 0 and v != rows[r] and rank[v] < 0:
                    rank[v] = valid
                    valid += 1
            detour[:valid] = 0
            for j in range(c):
                z = cand[r, j]
                if z < 0 or z == rows[r] or rank[z] < 0:
                    continue
                a = rank[z]
                for b in range(adj.shape[1]):
                    y = adj[z, b]
                    if y >= 0 and rank[y] > a and rank[y] > b:
                        detour[rank[y]] += 1
            kept = np.empty(valid, np.int32)
            for j in range(c):
                v = cand[r, j]
                if v >= 0 and rank[v] >= 0:
                    kept[rank[v]] = v
                    rank[v] = -1
            order = np.argsort(detour[:valid], kind="mergesort")
            out[r, :] = -1
            for j in range(min(degree, valid)):
                out[r, j] = kept[order[j]]


@numba.njit(cache=True, nogil=True)
def reverse_edges(graph, cap):  # pragma: no cover - compiled
    """``(n, cap)`` sources of each node's in-edges, by their rank at the source, ``-1`` padded."""
    n, d = graph.shape
    rev = np.full((n, cap), -1, np.int32)
    count = np.zeros(n, np.int32)
    for r in range(d):
        for x in range(n):
            y = graph[x, r]
            if y >= 0 and count[y] < cap:
                rev[y, count[y]] = x
                count[y] += 1
    return rev


@numba.njit(cache=True, nogil=True)
def merge_reverse(pruned, half):  # pragma: no cover - compiled
    """``half`` best pruned edges, then reverse edges (by source rank), then the rest; no duplicates."""
    n, d = pruned.shape
    rev = reverse_edges(pruned, half)
    out = np.full((n, d), -1, np.int32)
    for x in range(n):
        m = 0
        for phase in range(3):
            lo, hi = (0, half) if phase != 2 else (half, d)
            for j in range(lo, hi):
                v = pruned[x, j] if phase != 1 else rev[x, j]
                if m == d or v < 0 or v == x:
                    continue
                dup = False
                for t in range(m):
                    if out[x, t] == v:
                        dup = True
                        break
                if not dup:
                    out[x, m] = v
                    m += 1
    return out


@numba.njit(cache=True, nogil=True)
def reachable(graph, entries, live):  # pragma: no cover - compiled
    """uint8 mask of the nodes reachable from ``entries`` (through any node, deleted or not)."""
    n = graph.shape[0]
    seen = np.zeros(n, np.uint8)
    stack = np.empty(n, np.int64)
    top = 0
    for e in entries:
        if e >= 0 and not seen[e]:
            seen[e] = 1
            stack[top] = e
            top += 1
    _flood(graph, seen, stack, top)
    return seen & live


@numba.njit(cache=True, nogil=True)
def _flood(graph, seen, stack, top):  # pragma: no cover - compiled
    while top > 0:
        top -= 1
        u = stack[top]
        for v in graph[u]:
            if v >= 0 and not seen[v]:
                seen[v] = 1
                stack[top] = v
                top += 1


def repair_reachability(graph: np.ndarray, knn: np.ndarray, entries: np.ndarray) -> int:
    """Give unreached nodes in-edges until all are reached (or rounds run out); return unreached."""
    live = np.ones(graph.shape[0], np.uint8)
    for _ in range(_REPAIR_ROUNDS):
        seen = reachable(graph, entries, live)
        if seen.all():
            return 0
        _repair(graph, knn, seen, entries)
    return int(graph.shape[0] - reachable(graph, entries, live).sum())


@numba.njit(cache=True, nogil=True)
def _repair(graph, knn, seen, entries):  # pragma: no cover - compiled
    n, d = graph.shape
    indeg = np.zeros(n, np.int32)
    for u in range(n):
        for v in graph[u]:
            if v >= 0:
                indeg[v] += 1
    stack = np.empty(n, np.int64)
    fallback = 0
    for u in range(n):
        if seen[u]:
            continue
        src = -1
        for v in knn[u]:
            if v >= 0 and seen[v]:
                src = v
                break
        if src < 0:
            src = entries[fallback % entries.size]
            fallback += 1
        slot = d - 1
        for e in range(d - 1, -1, -1):
            w = graph[src, e]
            if w < 0 or indeg[w] > 1:
                slot = e
                break
        w = graph[src, slot]
        if w >= 0:
            indeg[w] -= 1
        graph[src, slot] = u
        indeg[u] += 1
        seen[u] = 1
        stack[0] = u
        _flood(graph, seen, stack, 1)
