"""Behaviour shared by every Trinity index: ids, add/remove, validation, persistence hooks.

Subclasses decide which list a vector goes to (:meth:`_assign_lists`) and how a batch
of queries is searched (:meth:`search`).  Storage is always :class:`BlockedLists`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from trinity.index.blocks import BlockedLists
from trinity.index.idmap import IdMap
from trinity.index.inputs import ArrayLike, as_ids, as_matrix, canonical_device, check_k
from trinity.index.metric import Metric, get_metric
from trinity.index.persist import INDEX_KINDS, save_index


def resolve_device_dtype(device: str | torch.device, dtype: torch.dtype | str | None) -> tuple[torch.device, torch.dtype]:
    """Validate the storage device/dtype pair (fp32 on CPU; fp32/fp16/bf16 on CUDA)."""
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA requested but torch.cuda.is_available() is False")
    dev = canonical_device(dev)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}.get(dtype)
        if dtype is None:
            raise ValueError("dtype: expected float32, float16 or bfloat16")
    dtype = dtype or torch.float32
    allowed = (torch.float32,) if dev.type == "cpu" else (torch.float32, torch.float16, torch.bfloat16)
    if dtype not in allowed:
        raise ValueError(f"dtype: {dtype} storage is not supported on {dev.type}; use one of {allowed}")
    return dev, dtype


class BaseIndex:
    """Common state: dimension, metric, blocked storage and the id -> slot map."""

    kind = "base"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # NOTE: a subclass that names its own kind is what load_index builds for it
            INDEX_KINDS[cls.kind] = cls

    def __init__(self, dim: int, num_lists: int, block_size: int, metric: str | Metric,
                 device: str | torch.device, dtype: torch.dtype | str | None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim: must be a positive int, got {dim!r}")
        self.dim = int(dim)
        self.metric = get_metric(metric)
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.lists = BlockedLists(num_lists, self.dim, block_size, dtype=self.dtype,
                                  device=self.device, with_aux=self.metric.uses_norms)
        self._slot_of = IdMap()  # id -> slot
        self._next_id = 0
        # NOTE: one writer at a time; searches may run concurrently with each other, and
        # callers that mix searches with writes (the engine) serialise them themselves.
        self.write_lock = threading.RLock()

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return len(self._slot_of)

    @property
    def is_trained(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.ntotal

    def __contains__(self, vid: int) -> bool:
        return int(vid) >= 0 and int(vid) in self._slot_of

    # ------------------------------------------------------------------ writes
    def add(self, x: ArrayLike, ids: ArrayLike | None = None) -> np.ndarray:
        """Add vectors; return their int64 ids.

        With ``ids=None`` fresh ids are allocated; explicit ids replace any stored vector
        with the same id (upsert).
        """
        if not self.is_trained:
            raise ValueError(f"{type(self).__name__}: add before train")
        vecs = as_matrix(x, self.dim, name="x", device=self.device, dtype=torch.float32)
        id_arr = as_ids(ids, vecs.shape[0])
        with self.write_lock:
            if id_arr is None:
                id_arr = np.arange(self._next_id, self._next_id + vecs.shape[0], dtype=np.int64)
            else:
                existing = id_arr[self._slot_of.get(id_arr) >= 0]
                if existing.size:
                    self.remove(existing)
            vecs = self.metric.prepare_vectors(vecs)
            lists = self._assign_lists(vecs)
            aux = self.metric.vector_aux(vecs) if self.metric.uses_norms else None
            slots = self.lists.append(lists, vecs, aux, id_arr)
            self._slot_of.put(id_arr, slots)
            self._next_id = max(self._next_id, int(id_arr.max()) + 1)
        return id_arr

    def add_with_ids(self, x: ArrayLike, ids: ArrayLike) -> np.ndarray:
        """FAISS spelling of ``add(x, ids)``."""
        return self.add(x, ids)

    def remove(self, ids: ArrayLike | list[int]) -> int:
        """Remove ids (unknown ids are ignored); return how many were removed."""
        arr = np.atleast_1d(np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids))
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"ids: expected integer ids, got dtype {arr.dtype}")
        with self.write_lock:
            arr = arr.astype(np.int64)
            _, first = np.unique(arr, return_index=True)
            arr = arr[np.sort(first)]  # distinct, in the given order
            slots = self._slot_of.pop(arr[arr >= 0]) if arr.size else arr
            slots = slots[slots >= 0]
            if not slots.size:
                return 0
            moved = self.lists.remove_slots(slots)
            if moved:
                self._slot_of.put(np.fromiter(moved.keys(), np.int64, len(moved)),
                                  np.fromiter(moved.values(), np.int64, len(moved)))
        return int(slots.size)

    remove_ids = remove

    def reconstruct(self, ids: ArrayLike | list[int]) -> np.ndarray:
        """Stored vectors for ``ids`` (after metric preparation, e.g. normalised for cosine)."""
        arr = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        found = self._slot_of.get(arr) if arr.size else arr
        if (found < 0).any():
            raise KeyError(f"ids not found: {arr[found < 0][:10].tolist()}")
        slots = torch.from_numpy(found).to(self.device)
        return self.lists.vectors.view(-1, self.dim).index_select(0, slots).float().cpu().numpy()

    def ids(self) -> np.ndarray:
        """All stored ids (unordered)."""
        return self._slot_of.keys()

    # ------------------------------------------------------------------ search helpers
    def _prepare_search(self, q: ArrayLike, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        k = check_k(k)
        queries = as_matrix(q, self.dim, name="queries", device=self.device, dtype=torch.float32)
        return self.metric.prepare_queries(queries), self.metric.query_offset(queries), k

    def prepare_queries(self, q: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``q`` and map it to the internal scoring space: ``(queries, offsets)``."""
        prepared, offset, _ = self._prepare_search(q, 1)
        return prepared, offset

    def prepare_validated(self, q: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`prepare_queries` for an already validated float32 ``(n, dim)`` array.

        NOTE: the engine validates each query at submit; re-validating every batch in the
        loop thread costs more than the scan for small batches, so this skips it.
        """
        t = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)
        return self.metric.prepare_queries(t), self.metric.query_offset(t)

    # ------------------------------------------------------------------ persistence hooks
    def _assign_lists(self, vecs: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able constructor parameters (manifest)."""
        return {"dim": self.dim, "metric": self.metric.name, "block_size": self.lists.block_size,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def state_arrays(self) -> dict[str, torch.Tensor]:
        arrays = self.lists.state_arrays()
        arrays["next_id"] = torch.tensor([self._next_id], dtype=torch.int64)
        return arrays

    def load_state_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        self.lists.load_state(arrays)
        ids = self.lists.slot_ids.view(-1).cpu().numpy()
        slots = np.nonzero(ids >= 0)[0]
        self._slot_of = IdMap(2 * slots.size)
        self._slot_of.put(ids[slots], slots)
        self._next_id = int(arrays["next_id"][0])

    def save(self, path: str) -> None:
        """Atomically write the index to directory ``path`` (see :mod:`trinity.index.persist`)."""
        save_index(self, path)

    def memory_bytes(self) -> dict[str, int]:
        """Storage bytes by purpose, plus ``raw_vectors`` (ntotal * dim * element size)."""
        out = self.lists.memory_bytes()
        out["id_map"] = self._slot_of.nbytes()
        out["total"] += out["id_map"]
        out["raw_vectors"] = self.ntotal * self.dim * self.lists.vectors.element_size()
        return out
