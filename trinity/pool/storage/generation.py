"""Engine registrations of a collection's index: one per index, retired on swap or drop."""

from __future__ import annotations

import itertools
import threading

from trinity.engine import SearchEngine
from trinity.index.base import BaseIndex

# NOTE: process-wide: a re-created collection never reuses a retired generation's engine name.
_NUMBERS = itertools.count(1)


class Generation:
    """One index registered with the engine under a unique name.

    NOTE: the engine must never see a request for a name that is gone (its scheduler
    looks the collection up on its loop thread), so a retired generation is only
    dropped from the engine once its last in-flight search has finished.
    """

    __slots__ = ("_lock", "engine", "engine_name", "index", "inflight", "retired")

    def __init__(self, engine: SearchEngine, name: str, index: BaseIndex) -> None:
        self.engine, self.index = engine, index
        self.engine_name = f"{name}#{next(_NUMBERS)}"
        self.inflight, self.retired = 0, False
        self._lock = threading.Lock()
        engine.add_collection(self.engine_name, index)

    def pin(self) -> bool:
        """Count one search in flight; ``False`` (nothing counted) once retired."""
        with self._lock:
            if self.retired:
                return False
            self.inflight += 1
            return True

    def unpin(self) -> None:
        with self._lock:
            self.inflight -= 1
            drop = self.retired and self.inflight == 0
        if drop:
            self._drop()

    def retire(self) -> None:
        with self._lock:
            self.retired = True
            drop = self.inflight == 0
        if drop:
            self._drop()

    def _drop(self) -> None:
        try:
            self.engine.drop_collection(self.engine_name)
        except KeyError:
            pass
