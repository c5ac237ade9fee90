"""Engine outcomes as Trinity errors: the one place the pool reads the engine's exceptions and
a :class:`~trinity.engine.SearchResult`'s code to pick the answer.

A deadline that cuts a search short is not an error: it is answered ``partial`` (or
``rejected`` when the deadline had passed before admission).
"""

from __future__ import annotations

from trinity.engine import EngineClosedError, OverloadedError, SearchResult, UnknownCollectionError
from trinity.errors import ErrorCode, NotFound, Overloaded, TrinityError

__all__ = ["engine_error", "result_error"]


def engine_error(exc: BaseException) -> TrinityError | None:
    """``exc`` as the pool answers it (``None``: not one the pool answers as such)."""
    if isinstance(exc, UnknownCollectionError):
        return NotFound("the collection was dropped during the search", "name", code=ErrorCode.UNKNOWN_COLLECTION)
    if isinstance(exc, EngineClosedError):
        return TrinityError("the server is shutting down", code=ErrorCode.ENGINE_CLOSED)
    if isinstance(exc, OverloadedError):
        return Overloaded(str(exc), retry_after_s=exc.retry_after_s)
    return exc if isinstance(exc, TrinityError) else None


def result_error(result: SearchResult, name: str) -> TrinityError | None:
    """The error a finished search answers with, or ``None`` when its result is the answer
    (complete, partial, or rejected for its deadline)."""
    code = result.code
    if code is None or code is ErrorCode.DEADLINE_EXCEEDED:
        return None
    if code is ErrorCode.OVERLOADED:
        return Overloaded(result.message or "overloaded: the engine's admission queue is full")
    if code is ErrorCode.UNKNOWN_COLLECTION:
        return NotFound(f"collection {name!r} was dropped during the search", "name", code=code)
    if code is ErrorCode.CLIENT_GONE:
        return TrinityError("the search was aborted", code=code)
    return TrinityError(f"search failed: {result.message}")
