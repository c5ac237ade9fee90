"""IVF collections: an exact flat training buffer first, then k-means and a swap.

An IVF collection starts as a flat *training buffer*: vectors are searchable at once
(exactly).  When the buffer reaches ``train_size`` vectors (default ``39 * nlist``, FAISS'
guideline) -- or on an explicit ``train()`` -- k-means runs in the background, the IVF
index is filled from the buffer, swapped in under a new engine name and snapshotted.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from trinity.errors import Conflict
from trinity.index import IVFIndex
from trinity.index.base import BaseIndex
from trinity.pool.storage.spec import CollectionSpec

log = logging.getLogger("trinity.pool.storage.collection")
_MAX_TRAIN_POINTS_PER_LIST = 64  # what trinity.index.kmeans keeps per centroid


class IVFTraining:
    """Training half of :class:`~trinity.pool.storage.collection.DurableCollection`."""

    spec: CollectionSpec
    index: BaseIndex
    _mutate: threading.Lock  # the host also provides _check_writable(), _swap(index), snapshot()

    def _needs_training(self) -> bool:
        return (self.spec.index == "ivf" and not isinstance(self.index, IVFIndex)
                and self.index.ntotal >= self.spec.effective_train_size)

    def train(self) -> bool:
        """Train the IVF quantizer on the buffered vectors and swap the IVF index in."""
        if self.spec.index != "ivf":
            raise Conflict(f"collection {self.spec.name!r} is a flat collection; nothing to train")
        with self._mutate:
            self._check_writable()
            buffer = self.index
            if isinstance(buffer, IVFIndex):
                return False
            if buffer.ntotal < self.spec.nlist:
                raise Conflict(f"training needs at least nlist={self.spec.nlist} vectors, "
                                     f"the collection holds {buffer.ntotal}")
            with buffer.write_lock:
                ids = buffer.ids()
                if ids.size > _MAX_TRAIN_POINTS_PER_LIST * self.spec.nlist:  # k-means subsamples anyway
                    ids = np.random.default_rng(0).choice(ids, _MAX_TRAIN_POINTS_PER_LIST * self.spec.nlist,
                                                          replace=False)
                sample = buffer.reconstruct(ids)
        ivf = IVFIndex(self.spec.dim, int(self.spec.nlist), self.spec.metric, nprobe=self.spec.nprobe or 8)
        ivf.train(sample)  # NOTE: the slow part runs without the lock; writes go to the buffer
        del sample
        with self._mutate:
            self._check_writable()
            if self.index is not buffer:
                return False
            with buffer.write_lock:
                ids = buffer.ids()
                if ids.size:
                    ivf.add(buffer.reconstruct(ids), ids)
            self._swap(ivf)
        log.info("collection %s: trained IVF (nlist=%d) on %d vectors", self.spec.name, ivf.nlist, ivf.ntotal)
        self.snapshot()
        return True

