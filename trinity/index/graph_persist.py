"""Persistence and accounting of :class:`~trinity.index.graph.GraphIndex` (same snapshot format
as every index: the blocked list's arrays plus ``graph``, ``deleted`` and ``entries``)."""

from __future__ import annotations

import numpy as np
import torch

from trinity.index.idmap import IdMap
from trinity.index.persist import IndexFormatError


class GraphPersistence:
    """Mixin for GraphIndex: manifest config, state arrays, load, memory accounting."""

    def config(self) -> dict:
        return {**super().config(), "graph_degree": self.graph_degree, "intermediate_degree": self.intermediate_degree,
                "num_entries": self.num_entries, "build_probes": self.build_probes,
                "build_list_size": self.build_list_size, "refine_itopk": self.refine_itopk,
                "refine_passes": self.refine_passes,
                "consolidate_threshold": self.consolidate_threshold,
                "seed": self.seed}

    def state_arrays(self) -> dict[str, torch.Tensor]:
        arrays = super().state_arrays()
        arrays["graph"] = torch.from_numpy(self.graph.copy())
        arrays["deleted"] = torch.from_numpy(self.deleted.copy())
        arrays["entries"] = torch.from_numpy(self.entries.astype(np.int32))
        return arrays

    def load_state_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        self.lists.load_state(arrays)
        n = self.num_nodes
        nb = int(self.lists.num_list_blocks()[0])
        if not np.array_equal(self.lists.block_table[0, :nb], np.arange(nb)):
            raise IndexFormatError("array 'block_table': graph storage must be one sequential list")
        for name, shape in (("graph", (n, self.graph_degree)), ("deleted", (n,))):
            if name not in arrays or tuple(arrays[name].shape) != shape:
                raise IndexFormatError(f"array {name!r}: expected shape {shape}")
        graph = arrays["graph"].numpy().astype(np.int32)
        entries = arrays["entries"].numpy().astype(np.int32) if "entries" in arrays else None
        if entries is None or entries.ndim != 1 or graph.size and (graph.min() < -1 or graph.max() >= n) \
                or entries.size and (entries.min() < 0 or entries.max() >= n):
            raise IndexFormatError("arrays 'graph'/'entries': node numbers out of range")
        self._graph, self._deleted, self.entries = graph.copy(), arrays["deleted"].numpy().astype(np.uint8), entries
        ids = self.lists.slot_ids.view(-1).numpy()[:n]
        live = np.nonzero((ids >= 0) & (self._deleted == 0))[0]
        self._slot_of = IdMap(2 * live.size)
        self._slot_of.put(ids[live], live)
        self._next_id = int(arrays["next_id"][0])

    def memory_bytes(self) -> dict[str, int]:
        out = super().memory_bytes()
        out["graph"] = self._graph.nbytes + self._deleted.nbytes + self.entries.nbytes
        out["total"] += out["graph"]
        return out
