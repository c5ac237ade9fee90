"""Small blocked-list fixtures and comparators for the kernel tests."""

from __future__ import annotations

import numpy as np
import torch

from trinity.index.blocks import BlockedLists
from trinity.index.metric import get_metric
from trinity.index.scan import ProbeChunk
from trinity.index.topk import RunningTopK


def make_lists(rng: np.random.Generator, *, n: int, dim: int, nlist: int, block_size: int, metric: str,
               dtype: torch.dtype, device: torch.device, empty: tuple[int, ...] = (), integer: bool = False,
               ids: np.ndarray | None = None) -> tuple[BlockedLists, np.ndarray]:
    """Lists with ``n`` vectors spread over ``nlist`` lists (``empty`` lists get none)."""
    m = get_metric(metric)
    if integer:  # exact dot products, and exact ties between duplicated vectors
        base = rng.integers(-3, 4, (max(8, n // 3), dim)).astype(np.float32)
        x = base[rng.integers(0, base.shape[0], n)]
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    xt = m.prepare_vectors(torch.from_numpy(x)).to(device)
    lists = BlockedLists(nlist, dim, block_size, dtype=dtype, device=device, with_aux=m.uses_norms)
    allowed = np.setdiff1d(np.arange(nlist), np.asarray(empty, dtype=np.int64))
    assign = allowed[rng.integers(0, allowed.size, n)]
    ids = rng.choice(10**12, n, replace=False).astype(np.int64) if ids is None else ids
    aux = m.vector_aux(xt.to(dtype).float()) if m.uses_norms else None
    lists.append(assign, xt, aux, ids)
    return lists, x


def queries_for(rng: np.random.Generator, nq: int, dim: int, metric: str, device: torch.device,
                integer: bool = False) -> torch.Tensor:
    q = rng.integers(-3, 4, (nq, dim)) if integer else rng.standard_normal((nq, dim))
    q = q.astype(np.float32)
    return get_metric(metric).prepare_queries(torch.from_numpy(q)).to(device)


def random_chunk(rng: np.random.Generator, lists: BlockedLists, probes: list[list[int]], ranged: bool) -> ProbeChunk:
    """CSR chunk from per-query probe lists; ``ranged``: random block ranges for ~half the pairs
    (some past the end, some empty)."""
    ptr = np.zeros(len(probes) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(p) for p in probes])
    lids = np.array([l for p in probes for l in p], dtype=np.int64)
    if not ranged:
        return ProbeChunk(ptr, lids)
    nb = lists.num_list_blocks(lids)
    start = np.where(rng.random(lids.size) < 0.5, rng.integers(0, nb + 1), 0)
    end = np.where(rng.random(lids.size) < 0.5, start + rng.integers(0, 4, lids.size), nb + 2)
    return ProbeChunk(ptr, lids, start.astype(np.int64), end.astype(np.int64))


def clone(t: RunningTopK) -> RunningTopK:
    return RunningTopK(t.scores.clone(), t.ids.clone(), t.k.clone())


def assert_topk_equal(got: RunningTopK, want: RunningTopK, *, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Same ids (where scores are not near-tied: within ``atol + rtol*|score|``) and scores."""
    gs, gi = got.scores.cpu().numpy(), got.ids.cpu().numpy()
    ws, wi = want.scores.cpu().numpy(), want.ids.cpu().numpy()
    assert gi.shape == wi.shape
    np.testing.assert_array_equal(gi >= 0, wi >= 0, err_msg="different numbers of results")
    np.testing.assert_allclose(gs, ws, rtol=rtol, atol=atol, err_msg="scores")
    for r in range(gi.shape[0]):
        if np.array_equal(gi[r], wi[r]):
            continue
        valid = wi[r] >= 0
        last = int(valid.sum()) - 1
        for j in np.nonzero(gi[r] != wi[r])[0]:
            tol = atol + rtol * abs(float(ws[r, j]))
            near = valid & (np.abs(ws[r] - ws[r, j]) <= 2 * tol)
            # a swap is only allowed among near-tied scores (or a tie running past the cut)
            assert gi[r, j] in wi[r][near] or near[last], f"row {r} rank {j}: {gi[r]} vs {wi[r]}"
