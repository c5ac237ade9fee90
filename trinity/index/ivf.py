"""Inverted-file index over blocked lists.

``search`` = coarse assignment (top-``nprobe`` lists per query, best first) + one
:func:`~trinity.index.scan.scan` over all probes.  The engine drives the same two
primitives itself -- ``assign`` once per request, ``scan`` over bounded chunks of probes
per iteration -- which is why they are public.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from trinity.index.base import BaseIndex
from trinity.index.inputs import ArrayLike, as_matrix, check_k
from trinity.index.kmeans import kmeans
from trinity.index.metric import Metric
from trinity.index.probes import ProbeChunk
from trinity.index.scan import scan
from trinity.index.topk import RunningTopK
from trinity.index.jit import serial_twin

DEFAULT_IVF_BLOCK_SIZE = 16
#: Queries per internal search batch; bounds per-call buffers (pairs x k), not the index.
_SEARCH_BATCH = 256
_ASSIGN_ROWS = 8192
#: Up to this many queries the coarse assignment runs in the calling thread alone: waking a
#: worker (on a core the caller's peers may hold) costs more than it saves (benchmarks/README.md).
_SERIAL_ASSIGN_ROWS = 32


class IVFIndex(BaseIndex):
    """IVF-Flat with a FAISS-style API (``train``, ``add``, ``search``, ``remove``)."""

    kind = "ivf"

    def __init__(self, dim: int, nlist: int, metric: str | Metric = "ip", device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None, block_size: int = DEFAULT_IVF_BLOCK_SIZE,
                 nprobe: int = 8, scan_backend: str = "auto") -> None:
        if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or nlist < 1:
            raise ValueError(f"nlist: must be a positive int, got {nlist!r}")
        super().__init__(dim, int(nlist), block_size, metric, device, dtype)
        self.nlist = int(nlist)
        self.nprobe = min(check_k(nprobe, name="nprobe", max_k=1 << 20), self.nlist)
        self.scan_backend = scan_backend
        self.centroids: torch.Tensor | None = None  # (nlist, dim) float32, internal space
        self._centroid_aux: torch.Tensor | None = None

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None

    def train(self, x: ArrayLike, *, niter: int = 20, seed: int = 0) -> None:
        """Train the coarse quantizer with k-means on ``x`` (at least ``nlist`` rows)."""
        vecs = self.metric.prepare_vectors(as_matrix(x, self.dim, name="x", device=self.device, dtype=torch.float32))
        self.set_centroids(kmeans(vecs, self.nlist, niter=niter, seed=seed, spherical=self.metric.normalizes))

    def set_centroids(self, centroids: ArrayLike) -> None:
        """Install externally trained centroids (e.g. shared with a peer index)."""
        c = as_matrix(centroids, self.dim, name="centroids", device=self.device, dtype=torch.float32)
        if c.shape[0] != self.nlist:
            raise ValueError(f"centroids: expected {self.nlist} rows, got {c.shape[0]}")
        if self.ntotal:
            raise ValueError("centroids: cannot change the quantizer of a non-empty index")
        self.centroids = c
        self._centroid_aux = self.metric.vector_aux(c)

    def _assign_lists(self, vecs: torch.Tensor) -> np.ndarray:
        return self.assign_prepared(self.metric.prepare_queries(vecs), 1, bulk=True)[:, 0]

    def assign(self, q: ArrayLike, nprobe: int | None = None) -> np.ndarray:
        """Top-``nprobe`` list ids per query, best first: ``(n, nprobe)`` int64."""
        queries, _ = self.prepare_queries(q)
        return self.assign_prepared(queries, self._nprobe(nprobe))

    def assign_prepared(self, queries: torch.Tensor, nprobe: int | np.ndarray, bulk: bool = False) -> np.ndarray:
        """Like :meth:`assign` for queries already in the internal space.

        ``nprobe`` may be an int or a per-query array; entries past a query's own nprobe
        are ``-1``.
        """
        if not self.is_trained:
            raise ValueError("IVFIndex: search or add before train")
        per_query = np.broadcast_to(np.asarray(nprobe, dtype=np.int64), (queries.shape[0],))
        width = int(per_query.max())
        probes = np.empty((queries.shape[0], width), dtype=np.int64)
        if self.device.type == "cpu" and not bulk:
            # NOTE: per-row scoring makes a query's probes independent of its batch (a BLAS
            # GEMM may pick other kernels for other batch shapes), and for the engine's
            # small batches of newcomers it avoids waking torch's thread pool.
            kernel = _assign_rows_serial if queries.shape[0] <= _SERIAL_ASSIGN_ROWS else _assign_rows
            kernel(np.ascontiguousarray(queries.numpy()), self.centroids.numpy(),
                   self._centroid_aux.numpy(), probes)
            probes[np.arange(width)[None, :] >= per_query[:, None]] = -1
            return probes
        # NOTE: row chunks bound the score buffer (a bulk add of 200k vectors would
        # otherwise materialise a 200k x nlist matrix).
        for s in range(0, queries.shape[0], _ASSIGN_ROWS):
            scores = torch.addmm(self._centroid_aux, queries[s:s + _ASSIGN_ROWS].float(), self.centroids.t())
            best = scores.argmax(dim=1, keepdim=True) if width == 1 else torch.topk(scores, width, dim=1).indices
            probes[s:s + _ASSIGN_ROWS] = best.cpu().numpy()
        probes[np.arange(width)[None, :] >= per_query[:, None]] = -1
        return probes

    def _nprobe(self, nprobe: int | None) -> int:
        if nprobe is None:
            return self.nprobe
        return min(check_k(nprobe, name="nprobe", max_k=1 << 20), self.nlist)

    def search(self, q: ArrayLike, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k``: ``(D, I)`` of shape ``(n, k)``, best first, ``-1`` padded."""
        queries, offset, k = self._prepare_search(q, k)
        nprobe = self._nprobe(nprobe)
        if not self.is_trained:
            raise ValueError("IVFIndex: search before train")
        d_out, i_out = [], []
        for s in range(0, queries.shape[0], _SEARCH_BATCH):
            qb = queries[s:s + _SEARCH_BATCH]
            topk = RunningTopK.empty(qb.shape[0], k, device=self.device)
            self.scan(qb, ProbeChunk.from_probes(self.assign_prepared(qb, nprobe)), topk)
            d, i = topk.to_results(self.metric, offset[s:s + _SEARCH_BATCH])
            d_out.append(d)
            i_out.append(i)
        return np.concatenate(d_out), np.concatenate(i_out)

    def scan(self, queries: torch.Tensor, chunk: ProbeChunk, topk: RunningTopK) -> None:
        """Scan a CSR set of probes for prepared queries, merging into ``topk`` in place."""
        scan(self.lists, queries, chunk, topk, backend=self.scan_backend)

    def list_sizes(self) -> np.ndarray:
        """Vectors per inverted list."""
        return self.lists.list_len.copy()

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {**super().config(), "nlist": self.nlist, "nprobe": self.nprobe}

    def state_arrays(self) -> dict[str, torch.Tensor]:
        arrays = super().state_arrays()
        if self.centroids is not None:
            arrays["centroids"] = self.centroids.cpu()
        return arrays

    def load_state_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        if "centroids" in arrays:
            self.centroids = arrays["centroids"].to(self.device, torch.float32).contiguous()
            self._centroid_aux = self.metric.vector_aux(self.centroids)
        super().load_state_arrays(arrays)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _assign_rows(queries, centroids, c_aux, out):  # pragma: no cover - compiled
    """Best ``out.shape[1]`` centroids per query row (score desc, then smaller list id).

    NOTE: queries go in register tiles of 4 (each centroid row is loaded once for 4 dot
    products, ~3x faster for the engine's batches of newcomers); every dot keeps the
    summation order of the single-query loop, so a query's probes never depend on its
    batch.
    """
    nlist, dim = centroids.shape
    n = queries.shape[0]
    for g in numba.prange((n + 3) // 4):
        i0 = 4 * g
        rows = min(4, n - i0)
        scores = np.empty((4, nlist), dtype=np.float32)
        if rows == 4:
            for c in range(nlist):
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                s3 = np.float32(0.0)
                for d in range(dim):
                    x = centroids[c, d]
                    s0 += queries[i0, d] * x
                    s1 += queries[i0 + 1, d] * x
                    s2 += queries[i0 + 2, d] * x
                    s3 += queries[i0 + 3, d] * x
                scores[0, c] = s0 + c_aux[c]
                scores[1, c] = s1 + c_aux[c]
                scores[2, c] = s2 + c_aux[c]
                scores[3, c] = s3 + c_aux[c]
        else:
            for r in range(rows):
                for c in range(nlist):
                    s = np.float32(0.0)
                    for d in range(dim):
                        s += queries[i0 + r, d] * centroids[c, d]
                    scores[r, c] = s + c_aux[c]
        for r in range(rows):
            _top_ids(scores[r], out[i0 + r])


_assign_rows_serial = serial_twin(_assign_rows, fastmath=True)


@numba.njit(inline="always")
def _top_ids(scores, out):  # pragma: no cover - compiled
    """The ``out.size`` best ids of ``scores`` (score desc, then smaller id) into ``out``.

    NOTE: a full stable argsort of every row cost ~23 us per query at nlist 1024; selecting
    the w-th best with a partition and sorting only the winners is several times cheaper.
    """
    n = scores.size
    w = out.size
    if w >= n:
        out[:n] = np.argsort(-scores, kind="mergesort")
        return
    thr = np.partition(scores.copy(), n - w)[n - w]  # the w-th largest score
    sel = np.empty(w, dtype=np.int64)
    m = 0
    for c in range(n):  # ids ascending: ties keep the smaller id first
        if scores[c] > thr:
            sel[m] = c
            m += 1
    for c in range(n):
        if m == w:
            break
        if scores[c] == thr:
            sel[m] = c
            m += 1
    order = np.argsort(-scores[sel], kind="mergesort")  # stable: equal scores stay id-ascending
    out[:] = sel[order]
