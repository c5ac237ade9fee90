"""Graph updates after the build: inserts (a search for each new node, the distance pruning of
:mod:`trinity.index.graph_refine` over what it found, reverse links re-pruned as in HNSW) and
FreshDiskANN-style consolidation of deleted nodes (each live in-neighbour of a deleted node
takes that node's out-neighbours as candidates and is pruned again), then compaction."""

from __future__ import annotations

import numba
import numpy as np
import torch

from trinity.index.graph_build import repair_reachability, similarity
from trinity.index.graph_refine import robust_prune
from trinity.index.graph_search import advance, init_state

_INSERT_CHUNK = 1024
_INSERT_HOPS = 1 << 20


def insert_nodes(vecs: np.ndarray, aux: np.ndarray, graph: np.ndarray, entries: np.ndarray, new: np.ndarray,
                 query_scale: float, num_candidates: int) -> None:
    """Link the nodes ``new`` (their rows of ``graph`` are ``-1``) into ``graph`` in place."""
    degree = graph.shape[1]
    for s in range(0, new.size, _INSERT_CHUNK):
        chunk = new[s:s + _INSERT_CHUNK].astype(np.int64)
        q = vecs[chunk] * np.float32(query_scale)
        m = chunk.size
        itopk = np.full(m, num_candidates, np.int32)
        state = init_state(vecs, aux, entries, degree, q, itopk, np.ones(m, np.int32), np.full(m, _INSERT_HOPS, np.int32))
        advance(vecs, aux, graph, state, np.arange(m), _INSERT_HOPS)
        local = similarity(torch.from_numpy(vecs[chunk]), torch.from_numpy(vecs[chunk]),
                           torch.from_numpy(aux[chunk]) if aux.size else None)
        local.fill_diagonal_(-torch.inf)
        lk = min(degree, m - 1)
        nodes = state.buf_nodes
        if lk > 0:
            best = torch.topk(local, lk, dim=1).indices.numpy()
            nodes = np.concatenate([nodes, chunk[best].astype(np.int32)], axis=1)
        out = np.full((m, degree), -1, np.int32)
        robust_prune(vecs, aux, nodes, chunk, out)
        graph[chunk] = out
        _link_back(vecs, aux, graph, chunk)


def _link_back(vecs: np.ndarray, aux: np.ndarray, graph: np.ndarray, new: np.ndarray) -> None:
    """Reverse links, as HNSW: each ``v`` that a new node links to (among its first half of
    edges) prunes its list plus its new in-neighbours again; a new node that ends up with no
    in-edge takes the last slot of its best neighbour."""
    d = graph.shape[1]
    head = graph[new, :max(1, d // 2)]
    us, vs = np.repeat(new, head.shape[1]), head.ravel().astype(np.int64)
    keep = vs >= 0
    order = np.argsort(vs[keep], kind="stable")
    us, vs = us[keep][order], vs[keep][order]
    if not vs.size:
        return
    targets, first, counts = np.unique(vs, return_index=True, return_counts=True)
    rank = np.arange(vs.size) - np.repeat(first, counts)
    cand = np.full((targets.size, 2 * d), -1, np.int32)
    cand[:, :d] = graph[targets]
    fits = rank < d
    cand[np.repeat(np.arange(targets.size), counts)[fits], d + rank[fits]] = us[fits]
    out = np.full((targets.size, d), -1, np.int32)
    robust_prune(vecs, aux, cand, targets, out)
    graph[targets] = out
    linked = (graph[head.clip(0)] == new[:, None, None]).any(axis=(1, 2))
    for u in new[~linked & (graph[new, 0] >= 0)]:
        graph[graph[u, 0], d - 1] = u


@numba.njit(inline="always")
def _sim(vecs, aux, scale, a, b):  # pragma: no cover - compiled
    s = np.float32(0.0)
    for d in range(vecs.shape[1]):
        s += vecs[a, d] * vecs[b, d]
    s *= scale
    if aux.size:
        s += aux[b]
    return s


def consolidate(vecs: np.ndarray, aux: np.ndarray, graph: np.ndarray, deleted: np.ndarray, entries: np.ndarray,
                query_scale: float, num_candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop deleted nodes: ``(live nodes in old numbering, new graph, new entries)``."""
    rows = np.nonzero(_touches_deleted(graph, deleted))[0]
    if rows.size:
        cand = _repair_candidates(vecs, aux, graph, deleted, rows, np.float32(query_scale), num_candidates)
        out = np.full((rows.size, graph.shape[1]), -1, np.int32)
        robust_prune(vecs, aux, cand, rows, out)
        graph[rows] = out
    live = np.nonzero(deleted == 0)[0]
    entries = np.array([_live_stand_in(graph, deleted, e) for e in entries], np.int64)
    remap = np.full(graph.shape[0], -1, np.int64)
    remap[live] = np.arange(live.size)
    new_graph = np.where(graph[live] >= 0, remap[np.maximum(graph[live], 0)], -1).astype(np.int32)
    new_entries = np.unique(remap[entries[entries >= 0]])
    new_entries = new_entries[new_entries >= 0].astype(np.int32)
    if new_entries.size == 0 and live.size:
        new_entries = np.zeros(1, np.int32)
    if live.size:
        repair_reachability(new_graph, new_graph.copy(), new_entries)
    return live, new_graph, new_entries


def _live_stand_in(graph: np.ndarray, deleted: np.ndarray, node: int) -> int:
    if not deleted[node]:
        return int(node)
    return next((int(v) for v in graph[node] if v >= 0 and not deleted[v]), -1)


@numba.njit(cache=True, nogil=True)
def _touches_deleted(graph, deleted):  # pragma: no cover - compiled
    out = np.zeros(graph.shape[0], np.bool_)
    for u in range(graph.shape[0]):
        if deleted[u]:
            continue
        for v in graph[u]:
            if v >= 0 and deleted[v]:
                out[u] = True
                break
    return out


@numba.njit(cache=True, nogil=True, fastmath=True)
def _repair_candidates(vecs, aux, graph, deleted, rows, scale, width):  # pragma: no cover - compiled
    """Live out-neighbours of each row and of its deleted out-neighbours, best first."""
    d = graph.shape[1]
    out = np.full((rows.size, width), -1, np.int32)
    for r in range(rows.size):
        u = rows[r]
        pool = np.empty(d + d * d, np.int64)
        m = 0
        for v in graph[u]:
            if v < 0:
                continue
            if not deleted[v]:
                pool[m] = v
                m += 1
                continue
            for w in graph[v]:
                if w >= 0 and w != u and not deleted[w]:
                    pool[m] = w
                    m += 1
        pool = np.unique(pool[:m])
        scores = np.empty(pool.size, np.float32)
        for j in range(pool.size):
            scores[j] = -_sim(vecs, aux, scale, u, pool[j])
        order = np.argsort(scores, kind="mergesort")
        for j in range(min(width, pool.size)):
            out[r, j] = pool[order[j]]
    return out
