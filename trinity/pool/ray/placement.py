"""Where a collection lives: on every replica (``replicated``) or split by id hash over the first
``num_shards`` replicas (``sharded``).  Each replica keeps the placements in its data directory
(``placements.json``, replaced atomically), so a router that starts later learns them."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trinity.fsutil import atomic_write

__all__ = ["Placement", "PlacementFile", "shard_of"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Placement:
    mode: Literal["replicated", "sharded"]
    num_shards: int
    dim: int
    metric: str

    @property
    def sharded(self) -> bool:
        return self.mode == "sharded"

    def replicas(self, num_replicas: int) -> list[int]:
        """The replicas that hold the collection (shard ``i`` on replica ``i``)."""
        return list(range(self.num_shards if self.sharded else num_replicas))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        return cls(str(data["mode"]), int(data["num_shards"]), int(data["dim"]), str(data["metric"]))  # type: ignore[arg-type]


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard of each id: Fibonacci hashing, so that sequential ids spread evenly."""
    h = np.asarray(ids, dtype=np.int64).astype(np.uint64) * _GOLDEN
    return ((h >> np.uint64(32)) % np.uint64(num_shards)).astype(np.int64)


class PlacementFile:
    """``placements.json`` of one replica's data directory."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "placements.json"
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): dict(v) for k, v in data.items()}

    def set(self, name: str, placement: dict[str, Any] | None) -> None:
        with self._lock:
            data = self.load()
            if placement is None:
                data.pop(name, None)
            else:
                data[name] = Placement.from_json(placement).to_json()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(data, sort_keys=True).encode())
