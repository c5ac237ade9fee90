"""Store errors: what a write, a collection or the data directory can fail with."""

from __future__ import annotations

from trinity.errors import ErrorCode, TrinityError
from trinity.fsutil import is_disk_full

__all__ = ["CollectionGone", "DataDirLocked", "StorageFull", "StoreUnavailable", "storage_error"]


class CollectionGone(TrinityError):
    """The collection was dropped (or the server is closing) while a request ran."""

    code = ErrorCode.UNKNOWN_COLLECTION

    def __init__(self, name: str) -> None:
        super().__init__(f"collection {name!r} was dropped", "name")


class StoreUnavailable(TrinityError):
    """The store cannot do this now: a failed write-ahead log (``unavailable``: retry later) or a
    quarantined collection (``quarantined``: an operator must act)."""

    code = ErrorCode.UNAVAILABLE

    @property
    def retry(self) -> bool:
        return self.retryable


class StorageFull(StoreUnavailable):
    """No space left on the device: nothing was stored or acknowledged."""

    code = ErrorCode.STORAGE_FULL


class DataDirLocked(TrinityError):
    """Another live server owns the data directory."""

    code = ErrorCode.UNAVAILABLE


def storage_error(e: OSError, what: str) -> StoreUnavailable:
    """An ``OSError`` raised while ``what`` as the store error a client sees."""
    if is_disk_full(e):
        return StorageFull(f"no space left on the device: {what} failed, nothing was stored; retry when "
                           f"space is freed")
    return StoreUnavailable(f"{what} failed ({e.strerror or e}); nothing was stored")
