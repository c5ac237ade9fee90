"""Validation and conversion of user inputs (vectors, ids, k).

Every public index entry point funnels through here so that bad input fails with a
``ValueError`` that names the problem, before any state is touched.
"""

from __future__ import annotations

import numpy as np
import torch

from trinity.errors import InvalidInput

ArrayLike = np.ndarray | torch.Tensor
#: The largest id an index stores (``2**63 - 1`` is kept free: ``next id = max id + 1`` fits int64).
MAX_ID = int(np.iinfo(np.int64).max) - 1


def canonical_device(device: str | torch.device) -> torch.device:
    """``device`` as tensors report it: ``cuda`` becomes ``cuda:<current>`` (``cuda != cuda:0``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def as_matrix(x: ArrayLike, dim: int, *, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Return ``x`` as a contiguous 2-D ``(n, dim)`` tensor on ``device`` in ``dtype``.

    Accepts numpy arrays and torch tensors of any float dtype; a 1-D input is a single row.
    Raises ``ValueError`` for a wrong dimension, an empty batch, non-numeric data or
    NaN/inf values.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object or arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: expected a float array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: expected a float array, got dtype {t.dtype}")
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected shape (n, {dim}) or ({dim},), got {tuple(t.shape)}")
    if t.shape[1] != dim:
        raise ValueError(f"{name}: wrong dimension {t.shape[1]}, index dimension is {dim}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    t = t.to(device=device, dtype=dtype)
    # NOTE: a row sum is finite whenever every element is (barring overflow), and it is
    # several times cheaper than a full elementwise check on large batches.
    if not bool(torch.isfinite(t.sum(dim=1)).all()) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return t.contiguous()


def as_ids(ids: ArrayLike | None, n: int, *, name: str = "ids") -> np.ndarray | None:
    """Return ``ids`` as a 1-D int64 numpy array of length ``n`` (or ``None``)."""
    if ids is None:
        return None
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size:
            raise ValueError(f"{name}: expected integer ids, got dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise ValueError(f"{name}: got {arr.shape[0]} ids for {n} vectors")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: ids must fit in int64")
    out = arr.astype(np.int64, copy=False)
    if out.size and out.min() < 0:
        raise ValueError(f"{name}: ids must be >= 0 (-1 is the padding id)")
    if out.size and out.max() > MAX_ID:
        raise ValueError(f"{name}: ids must be <= {MAX_ID} (2**63 - 2)")
    if np.unique(out).size != out.size:
        raise ValueError(f"{name}: duplicate ids in one call")
    return out


def check_k(k: int, *, name: str = "k", max_k: int = 4096) -> int:
    """Validate a result count."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidInput(f"{name}: expected an int, got {type(k).__name__}", name)
    if not 1 <= int(k) <= max_k:
        raise InvalidInput(f"{name}: must be in [1, {max_k}], got {k}", name)
    return int(k)


def as_query(query, dim: int) -> np.ndarray:
    """Validate one query vector cheaply (numpy; the runner prepares it in batches)."""
    if isinstance(query, torch.Tensor):
        query = query.detach().cpu().float().numpy()
    arr = np.asarray(query)
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise InvalidInput(f"query: expected a float vector, got dtype {arr.dtype}", "query")
    arr = arr.astype(np.float32, copy=False).reshape(-1) if arr.ndim == 1 or arr.shape[:1] == (1,) else None
    if arr is None:
        raise InvalidInput("query: expected one vector", "query")
    if arr.shape[0] != dim:
        raise InvalidInput(f"query: wrong dimension {arr.shape[0]}, collection dimension is {dim}", "query")
    if not np.isfinite(arr).all():
        raise InvalidInput("query: contains NaN or inf", "query")
    return arr
