"""Hop-level graph search: per-query state arrays and the compiled kernels that advance them.

A query's state is an *itopk buffer* (the ``itopk`` best nodes seen, best first, each with
an "expanded" flag), a small open-addressing *visited hash* that may be forgotten (when it
fills up it is cleared and refilled with the buffer's nodes: a forgotten node that comes
back is scored again but can never re-enter the buffer twice, as the buffer only gets
better), and counters (hops done, distance evaluations, converged).  One *hop* expands the
``search_width`` best unexpanded nodes of the buffer: all their neighbours not yet seen
are scored and merged into the buffer.  A query has converged when its buffer holds no
unexpanded node.

Engine seam: :func:`init_state` seeds a batch of queries from the entry points and
:func:`advance` moves any subset of rows (``rows``) of a :class:`GraphSearchState` by up to
``num_hops`` hops in one compiled call (parallel over the rows, GIL released) and returns
which of those rows are done (converged, or at their hop limit).  Rows are independent:
a query's result never depends on which other rows were advanced with it or in how many
calls its hops were split, so an engine may advance every running query by one or a few
hops per iteration, let queries join (:func:`seed_rows` restarts rows of a persistent
batch in place) and leave between hops, and read a partial top-k of any rows with
:func:`state_topk`.  ``GraphIndex.search`` is a loop over ``advance`` until every row is
done.  ``itopk``, ``search_width``, ``max_hops`` and the hash size are per row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from trinity.index.jit import serial_twin

_EMPTY = -1
_HASH_GOLDEN = np.uint32(2654435761)
#: Fewer rows than this run on the calling thread: a parallel launch costs more than it saves.
_PARALLEL_MIN_ROWS = 2


@dataclass(frozen=True)
class GraphSearchState:
    """Per-query search state; every array has one row per query (mutated in place)."""

    queries: np.ndarray  # (n, dim) float32, internal scoring space
    buf_nodes: np.ndarray  # (n, max_itopk) int32, best first, -1 = empty
    buf_scores: np.ndarray  # (n, max_itopk) float32 internal similarity, -inf = empty
    buf_expanded: np.ndarray  # (n, max_itopk) uint8
    visited: np.ndarray  # (n, max_hash_size) int32 open-addressing set, -1 = empty
    visited_count: np.ndarray  # (n,) int32
    hash_size: np.ndarray  # (n,) int32 the row's part of ``visited``: a power of two, as one-shot search sizes it
    itopk: np.ndarray  # (n,) int32
    search_width: np.ndarray  # (n,) int32
    max_hops: np.ndarray  # (n,) int32
    hops: np.ndarray  # (n,) int32
    num_evals: np.ndarray  # (n,) int64 distance evaluations (seeding included)
    converged: np.ndarray  # (n,) uint8: no unexpanded node left in the buffer

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def done(self) -> np.ndarray:
        """Rows that will not move any more (converged or at their hop limit)."""
        return (self.converged != 0) | (self.hops >= self.max_hops)


@functools.lru_cache(maxsize=1024)
def hash_size_for(max_itopk: int, search_width: int, degree: int, num_entries: int) -> int:
    """Power of two >= 32x the nodes a buffer (or the seeds) plus one hop's neighbours can hold.

    NOTE: a search scores ~15-25 nodes per buffer slot before it converges; with 4x (CAGRA's
    shared-memory size) the set was forgotten every few hops and ~30% of all distance
    evaluations re-scored forgotten nodes (20k MiniLM vectors, itopk 64).
    """
    need = 32 * (max(max_itopk, num_entries) + search_width * degree)
    return 1 << max(6, min(16, (need - 1).bit_length()))


def init_state(vecs: np.ndarray, aux: np.ndarray, entries: np.ndarray, degree: int, queries: np.ndarray,
               itopk: np.ndarray, search_width: np.ndarray, max_hops: np.ndarray) -> GraphSearchState:
    """A fresh state for prepared ``queries``, its buffers seeded with the scored ``entries``."""
    n, width = queries.shape[0], int(itopk.max())
    hsize = hash_size_for(width, int(search_width.max()), degree, entries.size)
    state = empty_state(n, queries.shape[1], width, hsize)
    seed_rows(vecs, aux, entries, state, np.arange(n), queries, itopk, search_width, max_hops, hsize)
    return state


def empty_state(num_rows: int, dim: int, width: int, hsize: int) -> GraphSearchState:
    """Unseeded rows with buffers of ``width`` and hashes of ``hsize`` (:func:`seed_rows` fills them)."""
    def rows(dtype, *shape):
        return np.zeros((num_rows, *shape), dtype)
    return GraphSearchState(queries=rows(np.float32, dim), buf_nodes=rows(np.int32, width),
                            buf_scores=rows(np.float32, width), buf_expanded=rows(np.uint8, width),
                            visited=rows(np.int32, hsize), visited_count=rows(np.int32), hash_size=rows(np.int32),
                            itopk=rows(np.int32),
                            search_width=rows(np.int32), max_hops=rows(np.int32), hops=rows(np.int32),
                            num_evals=rows(np.int64), converged=rows(np.uint8))


def seed_rows(vecs: np.ndarray, aux: np.ndarray, entries: np.ndarray, state: GraphSearchState, rows: np.ndarray,
              queries: np.ndarray, itopk: np.ndarray, search_width: np.ndarray, max_hops: np.ndarray,
              hash_size: int | np.ndarray) -> None:
    """(Re)start ``rows`` of ``state`` in place for prepared ``queries``: empty buffers and hash
    (``hash_size`` entries of ``visited``), then the scored ``entries``."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    state.queries[rows] = queries
    state.itopk[rows], state.search_width[rows], state.max_hops[rows] = itopk, search_width, max_hops
    state.hash_size[rows] = np.minimum(hash_size, state.visited.shape[1])
    seed = _seed if rows.size >= _PARALLEL_MIN_ROWS and numba.get_num_threads() > 1 else _seed_serial
    seed(vecs, aux, entries, rows, state.queries, state.buf_nodes, state.buf_scores, state.buf_expanded, state.visited,
         state.visited_count, state.hash_size, state.itopk, state.hops, state.num_evals, state.converged)


def advance(vecs: np.ndarray, aux: np.ndarray, graph: np.ndarray, state: GraphSearchState, rows: np.ndarray,
            num_hops: int) -> np.ndarray:
    """Advance ``rows`` of ``state`` by up to ``num_hops`` hops; return their done flags."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    kernel = _advance if rows.size >= _PARALLEL_MIN_ROWS and numba.get_num_threads() > 1 else _advance_serial
    chunk = numba.set_parallel_chunksize(1)  # NOTE: rows take unequal numbers of hops: hand them out one by one
    try:
        kernel(vecs, aux, graph, state.queries, rows, np.int32(num_hops), state.buf_nodes, state.buf_scores,
               state.buf_expanded, state.visited, state.visited_count, state.hash_size, state.itopk, state.search_width,
               state.max_hops, state.hops, state.num_evals, state.converged)
    finally:
        numba.set_parallel_chunksize(chunk)
    return state.done()[rows]


def state_topk(state: GraphSearchState, deleted: np.ndarray, k: int,
               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` live nodes of the buffer of each of ``rows`` (default: all): ``(scores, nodes)``,
    -inf / -1 padded."""
    rows = np.arange(state.num_queries) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    scores = np.full((rows.size, k), -np.inf, np.float32)
    nodes = np.full((rows.size, k), _EMPTY, np.int64)
    _topk(state.buf_nodes, state.buf_scores, rows, deleted, scores, nodes)
    return scores, nodes


@intrinsic
def _prefetch_row(typingctx, arr, row):  # pragma: no cover - compiled
    """Prefetch every 64-byte line of row ``row`` of a C-contiguous 2-D array (llvm.prefetch)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        row_ = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [row_, context.get_constant(types.intp, 0)])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        base = builder.bitcast(ptr, i8p)
        nbytes = builder.extract_value(ary.strides, 0)
        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), nbytes, ir.Constant(intp, 64), intp=intp) as (off, _):
            builder.call(fn, [builder.gep(base, [off]), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, row), codegen


@numba.njit(inline="always")
def _score(q, vecs, aux, node):  # pragma: no cover - compiled
    s = np.float32(0.0)
    for d in range(q.size):
        s += q[d] * vecs[node, d]
    if aux.size:
        s += aux[node]
    return s


@numba.njit(inline="always")
def _visit(table, count, i, node, mask):  # pragma: no cover - compiled
    """Insert ``node`` into row ``i`` of the visited hash (its first ``mask + 1`` entries); False
    when it was already there."""
    j = np.int64((np.uint32(node) * _HASH_GOLDEN) >> np.uint32(8)) & mask
    while table[i, j] != _EMPTY:
        if table[i, j] == node:
            return False
        j = (j + 1) & mask
    table[i, j] = node
    count[i] += 1
    return True


@numba.njit(inline="always")
def _forget(table, count, nodes, i, size):  # pragma: no cover - compiled
    """Clear row ``i`` of the visited hash (``size`` entries), keeping the buffer's nodes (no
    duplicates in it)."""
    table[i, :size] = _EMPTY
    count[i] = 0
    for p in range(nodes.shape[1]):
        if nodes[i, p] >= 0:
            _visit(table, count, i, nodes[i, p], size - 1)


@numba.njit(inline="always")
def _push(nodes, scores, expanded, i, width, node, s):  # pragma: no cover - compiled
    """Insert ``(node, s)`` into the sorted buffer row ``i`` of length ``width``."""
    if s <= scores[i, width - 1]:
        return
    p = width - 1
    while p > 0 and scores[i, p - 1] < s:
        nodes[i, p] = nodes[i, p - 1]
        scores[i, p] = scores[i, p - 1]
        expanded[i, p] = expanded[i, p - 1]
        p -= 1
    nodes[i, p] = node
    scores[i, p] = s
    expanded[i, p] = 0


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _seed(vecs, aux, entries, rows, queries, nodes, scores, expanded, visited, vcount, hsize, itopk, hops, evals,
          converged):  # pragma: no cover - compiled
    for j in numba.prange(rows.size):
        i = rows[j]
        nodes[i, :] = _EMPTY
        scores[i, :] = -np.inf
        expanded[i, :] = 0
        visited[i, :hsize[i]] = _EMPTY
        vcount[i] = 0
        hops[i] = 0
        evals[i] = 0
        q = queries[i]
        for e in range(entries.size):
            if _visit(visited, vcount, i, entries[e], hsize[i] - 1):
                _push(nodes, scores, expanded, i, itopk[i], entries[e], _score(q, vecs, aux, entries[e]))
                evals[i] += 1
        converged[i] = 1 if nodes[i, 0] < 0 else 0


@numba.njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _advance(vecs, aux, graph, queries, rows, num_hops, nodes, scores, expanded, visited, vcount, hsize, itopk, width,
             max_hops, hops, evals, converged):  # pragma: no cover - compiled
    degree = graph.shape[1]
    for r in numba.prange(rows.size):
        i = rows[r]
        limit = hsize[i] // 2
        q = queries[i]
        picked = np.empty(width[i], dtype=np.int32)
        fresh = np.empty(width[i] * degree, dtype=np.int32)
        fresh_s = np.empty(width[i] * degree, dtype=np.float32)
        for _ in range(num_hops):
            if converged[i] or hops[i] >= max_hops[i]:
                break
            npick = 0
            for p in range(itopk[i]):
                if nodes[i, p] < 0:
                    break
                if expanded[i, p] == 0:
                    expanded[i, p] = 1
                    picked[npick] = nodes[i, p]
                    npick += 1
                    if npick == width[i]:
                        break
            if npick == 0:
                converged[i] = 1
                break
            if vcount[i] + npick * degree > limit:
                _forget(visited, vcount, nodes, i, hsize[i])
            m = 0
            for j in range(npick):
                for e in range(degree):
                    nb = graph[picked[j], e]
                    if nb >= 0 and _visit(visited, vcount, i, nb, hsize[i] - 1):
                        _prefetch_row(vecs, nb)
                        fresh[m] = nb
                        m += 1
            for j in range(m):  # NOTE: rows are prefetched, and scored apart from the pushes, so their loads overlap
                fresh_s[j] = _score(q, vecs, aux, fresh[j])
            for j in range(m):
                _push(nodes, scores, expanded, i, itopk[i], fresh[j], fresh_s[j])
            evals[i] += m
            hops[i] += 1
        if not converged[i]:
            left = False
            for p in range(itopk[i]):
                if nodes[i, p] >= 0 and expanded[i, p] == 0:
                    left = True
                    break
            converged[i] = 0 if left else 1


_seed_serial = serial_twin(_seed, nogil=True, fastmath=True)
_advance_serial = serial_twin(_advance, nogil=True, fastmath=True)


@numba.njit(cache=True, nogil=True)
def _topk(buf_nodes, buf_scores, rows, deleted, scores, nodes):  # pragma: no cover - compiled
    k = scores.shape[1]
    for j in range(rows.size):
        i, m = rows[j], 0
        for p in range(buf_nodes.shape[1]):
            node = buf_nodes[i, p]
            if node < 0 or m == k:
                break
            if not deleted[node]:
                scores[j, m] = buf_scores[i, p]
                nodes[j, m] = node
                m += 1
