"""Compile the CPU kernels ahead of the first request.

numba compiles on first call (seconds) and caches the machine code on disk; a serving
process calls :func:`warmup` at start so the first real iteration is not a compile.
"""

from __future__ import annotations

import numpy as np


def warmup() -> None:
    """Run every numba kernel once on tiny inputs (all metrics, all index kinds)."""
    from trinity.index.flat import FlatIndex
    from trinity.index.ivf import IVFIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    for metric in ("ip", "l2"):
        ivf = IVFIndex(8, 4, metric=metric, nprobe=2)
        ivf.train(x, niter=1)
        ivf.add(x)
        ivf.search(x[:2], 3)
        flat = FlatIndex(8, metric=metric)
        flat.add(x)
        flat.search(x[:2], 3)
        _warm_graph(x, metric)


def _warm_graph(x: np.ndarray, metric: str) -> None:
    """Build (CAGRA + refinement), search on one and on several rows, insert, delete and consolidate."""
    from trinity.index.graph import GraphIndex

    graph = GraphIndex(x.shape[1], metric=metric, graph_degree=4, num_entries=4, refine_itopk=8, refine_passes=1)
    ids = graph.add(x[:48])
    for rows in (x[:1], x[:2]):
        graph.search(rows, 3, itopk=8)
    graph.add(x[48:])
    graph.remove(ids[:16])
    graph.search(x[:2], 3, itopk=8)
