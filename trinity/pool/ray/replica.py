"""``PoolReplica``: one pool replica as a Ray Serve deployment -- the single-process pool app
(``trinity.pool.app.create_app``) with its own data directory, driven in-process.

Its constructor runs the app's lifespan, which replays the WAL and loads the snapshots, so Ray
Serve routes nothing to a restarted replica before it has caught up.  Its ``__del__`` runs the
graceful shutdown (snapshots).  ``check_health`` fails when the engine loop has stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trinity.pool.app import create_app
from trinity.pool.config import PoolConfig
from trinity.pool.memory import skip_unused_triton, tune_malloc
from trinity.pool.ray.asgi import Exchange, Lifespan, call
from trinity.pool.ray.placement import PlacementFile

__all__ = ["PoolReplica", "replica_dir"]


def replica_dir(root: Path, index: int) -> Path:
    return Path(root) / f"replica-{index}"


class PoolReplica:
    async def __init__(self, config: PoolConfig, index: int) -> None:
        tune_malloc()
        skip_unused_triton()
        self.index = index
        self.config = config.model_copy(update={"data_dir": replica_dir(config.data_dir, index),
                                                "api_keys": frozenset()})
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = create_app(self.config)
        self.state = self.app.state.pool
        self.placements = PlacementFile(self.config.data_dir)
        self.lifespan = Lifespan(self.app)
        await self.lifespan.start()

    async def handle(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                     body: bytes) -> Exchange:
        return await call(self.app, method, path, query, headers, body)

    def load_placements(self) -> dict[str, dict[str, Any]]:
        return self.placements.load()

    def set_placement(self, name: str, placement: dict[str, Any] | None) -> int:
        self.placements.set(name, placement)
        return self.index

    def next_id(self, name: str) -> int:
        """The next server-assigned id of a collection here (0 when it is not here)."""
        coll = self.state.catalog.collections.get(name)
        return 0 if coll is None else int(coll.next_id)

    def load(self) -> dict[str, int]:
        """Searches in flight here (and the process, for tests that kill it)."""
        return {"index": self.index, "inflight": self.state.inflight, "pid": os.getpid()}

    def check_health(self) -> None:
        thread = self.state.engine._thread
        if thread is None or not thread.is_alive():
            raise RuntimeError(f"pool replica {self.index}: the engine loop has stopped")

    async def __del__(self) -> None:
        await self.lifespan.stop()
