"""Engine outcomes as Trinity errors: the one place the pool reads the engine's exceptions and
a :class:`~trinity.engine.SearchResult`'s status to pick an error code.

A deadline that cuts a search short is not an error: it is answered ``partial`` (or
``rejected`` when the deadline had passed before admission).
"""

from __future__ import annotations

from trinity.engine import EngineClosedError, OverloadedError, RequestStatus, SearchResult, UnknownCollectionError
from trinity.errors import ErrorCode, NotFound, Overloaded, TrinityError

__all__ = ["engine_error", "result_error"]

_ERROR_CODES = frozenset({ErrorCode.OVERLOADED, ErrorCode.UNKNOWN_COLLECTION, ErrorCode.ENGINE_CLOSED,
                          ErrorCode.INTERNAL})


def engine_error(exc: BaseException) -> TrinityError | None:
    """``exc`` as a :class:`TrinityError` (``None``: not one the pool answers as such)."""
    if isinstance(exc, TrinityError):
        return exc
    if isinstance(exc, OverloadedError):
        return Overloaded(str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, EngineClosedError):
        return TrinityError("the server is shutting down", code=ErrorCode.ENGINE_CLOSED)
    if isinstance(exc, UnknownCollectionError):
        return NotFound("the collection was dropped during the search", "name", code=ErrorCode.UNKNOWN_COLLECTION)
    return None


def _code_of(result: SearchResult, deadline_ms: float | None, reject_policy: bool, dropped: bool) -> ErrorCode | None:
    code = getattr(result, "code", None)
    if code is not None:  # NOTE: the engine's own code, once SearchResult carries one
        return ErrorCode(code)
    status = result.status
    if status is RequestStatus.FINISHED_ERROR:
        return ErrorCode.UNKNOWN_COLLECTION if dropped else ErrorCode.INTERNAL
    if status is RequestStatus.FINISHED_ABORTED:
        return ErrorCode.ENGINE_CLOSED
    if status is RequestStatus.FINISHED_REJECTED and not reject_policy:
        # NOTE: under the "partial" policy a rejection before the deadline can only be the full queue.
        late = deadline_ms is not None and result.total_ms >= deadline_ms * (1 - 1e-9)
        return None if late else ErrorCode.OVERLOADED
    return None


def result_error(result: SearchResult, name: str, *, deadline_ms: float | None, reject_policy: bool,
                 dropped: bool) -> TrinityError | None:
    """The error a finished search answers with, or ``None`` when its result is the answer."""
    code = _code_of(result, deadline_ms, reject_policy, dropped)
    if code not in _ERROR_CODES:
        return None
    if code is ErrorCode.OVERLOADED:
        return Overloaded(result.message or "overloaded: the engine's admission queue is full")
    if code is ErrorCode.UNKNOWN_COLLECTION:
        return NotFound(f"collection {name!r} was dropped during the search", "name", code=code)
    if code is ErrorCode.ENGINE_CLOSED:
        return TrinityError("the search was aborted (server shutting down)", code=code)
    return TrinityError(f"search failed: {result.message}")
