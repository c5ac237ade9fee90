"""Async HTTP client of the vector pool service, with deadline-bounded calls.

Every call that sits on a request's critical path takes a ``deadline_ms`` budget and
is wrapped in :func:`asyncio.timeout` for exactly that long, so the caller gets an
answer or a :class:`PoolError` (``kind="timeout"``) by the deadline -- never later.
Searches forward a slightly smaller ``deadline_ms`` to the server, whose scheduler then
returns its best-so-far (``partial``) result before the client gives up.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from trinity.errors import ErrorCode, TrinityError

__all__ = ["CacheLookup", "PoolClient", "PoolError", "SearchHit", "SearchResult"]

_KIND_CODES = {"timeout": ErrorCode.DEADLINE_EXCEEDED, "unavailable": ErrorCode.UNAVAILABLE,
               "overloaded": ErrorCode.OVERLOADED, "not_found": ErrorCode.NOT_FOUND,
               "bad_request": ErrorCode.INVALID_ARGUMENT, "error": ErrorCode.UPSTREAM_FAILED}


class PoolError(TrinityError):
    """A pool call failed. ``kind``: timeout | unavailable | overloaded | not_found | bad_request | error;
    ``code``: the pool's own error code when it answered one; ``pool_status``: its HTTP status."""

    def __init__(self, kind: str, message: str, pool_status: int | None = None, code: str | None = None) -> None:
        known = code in ErrorCode.__members__.values()
        super().__init__(f"pool {kind}: {message}", code=ErrorCode(code) if known else _KIND_CODES[kind])
        self.kind, self.pool_status = kind, pool_status


@dataclass(frozen=True)
class SearchHit:
    id: int
    score: float
    payload: Any = None


@dataclass(frozen=True)
class SearchResult:
    """One query's answer; ``partial`` means the deadline cut the scan short."""

    hits: list[SearchHit]
    partial: bool = False
    fraction_scanned: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    client_ms: float = 0.0


@dataclass(frozen=True)
class CacheLookup:
    hit: bool
    similarity: float | None = None
    value: Any = None
    client_ms: float = 0.0


def _kind(status: int) -> str:
    return {404: "not_found", 429: "overloaded", 503: "unavailable"}.get(
        status, "bad_request" if 400 <= status < 500 else "error")


class PoolClient:
    """One keep-alive connection pool to the vector pool server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8077``.
        api_key: bearer key (the pool's ``TRINITY_API_KEYS``), if the pool requires one.
        server_margin_ms: how much earlier than the client deadline the server is asked to
            stop, covering HTTP and JSON time on the way back.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, connect_timeout_s: float = 1.0,
                 admin_timeout_s: float = 120.0, server_margin_ms: float = 3.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.margin_ms = server_margin_ms
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(admin_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None, deadline_ms: float | None = None) -> Any:
        """One request; raises :class:`PoolError`. ``deadline_ms`` bounds the whole call."""
        try:
            async with asyncio.timeout(None if deadline_ms is None else max(deadline_ms, 0.0) / 1e3):
                resp = await self._http.request(method, path, json=body)
        except TimeoutError:
            raise PoolError("timeout", f"{path}: no answer within {deadline_ms:.1f} ms") from None
        except httpx.TimeoutException as exc:
            raise PoolError("timeout", f"{path}: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise PoolError("unavailable", f"{path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json()
            except ValueError:
                detail = resp.text[:300]
            error = detail.get("error") if isinstance(detail, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            raise PoolError(_kind(resp.status_code), f"{path}: HTTP {resp.status_code}: {detail}", resp.status_code,
                            code)
        try:
            return resp.json() if resp.content else {}
        except ValueError:
            raise PoolError("error", f"{path}: response is not JSON", resp.status_code) from None

    async def search(self, collection: str, *, vector: Sequence[float] | None = None, text: str | None = None,
                     k: int = 4, nprobe: int | None = None, stage: str = "prefill", deadline_ms: float = 100.0,
                     with_payloads: bool = True) -> SearchResult:
        """Search one query (a vector, or a text the collection's embedder encodes)."""
        body: dict[str, Any] = {"k": k, "stage": stage, "with_payloads": with_payloads,
                                "deadline_ms": self._server_deadline(deadline_ms)}
        if vector is not None:
            body["vector"] = list(map(float, vector))
        else:
            body["text"] = text or " "
        if nprobe is not None:
            body["nprobe"] = nprobe
        t0 = time.perf_counter()
        data = await self._call("POST", f"/v1/collections/{collection}/search", body, deadline_ms)
        return _parse_search(data, (time.perf_counter() - t0) * 1e3)

    def _server_deadline(self, deadline_ms: float) -> float:
        return max(0.5, deadline_ms - self.margin_ms)

    async def cache_lookup(self, cache: str, *, tenant: str, vector: Sequence[float] | None = None,
                           text: str | None = None, deadline_ms: float = 50.0, stage: str = "prefill") -> CacheLookup:
        """Semantic lookup among ``tenant``'s entries only (the pool enforces the isolation)."""
        body: dict[str, Any] = {"tenant": tenant, "stage": stage, "deadline_ms": self._server_deadline(deadline_ms)}
        if vector is not None:
            body["vector"] = list(map(float, vector))
        else:
            body["text"] = text or " "
        t0 = time.perf_counter()
        data = await self._call("POST", f"/v1/caches/{cache}/lookup", body, deadline_ms)
        ms = (time.perf_counter() - t0) * 1e3
        return CacheLookup(bool(data.get("hit")), data.get("similarity"), data.get("value"), ms)

    async def cache_insert(self, cache: str, *, tenant: str, value: Any, vector: Sequence[float] | None = None,
                           text: str | None = None, deadline_ms: float | None = 2000.0) -> None:
        body: dict[str, Any] = {"tenant": tenant, "value": value}
        if vector is not None:
            body["vector"] = list(map(float, vector))
        if text:
            body["text"] = text[:20_000]  # NOTE: with a vector it is only the entry's key text (dedupe)
        await self._call("POST", f"/v1/caches/{cache}/insert", body, deadline_ms)

    async def health(self, deadline_ms: float = 1000.0) -> dict[str, Any]:
        return await self._call("GET", "/health", None, deadline_ms)

    async def describe(self, collection: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/collections/{collection}")

    async def create_collection(self, name: str, dim: int, *, metric: str = "cosine", index: str = "flat",
                                nlist: int | None = None, embedder: str | None = None,
                                exist_ok: bool = True) -> dict[str, Any]:
        body = {"name": name, "dim": dim, "metric": metric, "index": index, "nlist": nlist, "embedder": embedder}
        try:
            return await self._call("POST", "/v1/collections", {k: v for k, v in body.items() if v is not None})
        except PoolError as exc:
            if exist_ok and exc.pool_status == 409:
                return await self.describe(name)
            raise

    async def create_cache(self, name: str, *, kind: str = "answer", threshold: float = 0.92, ttl_s: float = 3600.0,
                           max_entries: int = 10_000, exist_ok: bool = True) -> dict[str, Any]:
        body = {"name": name, "kind": kind, "threshold": threshold, "ttl_s": ttl_s, "max_entries": max_entries}
        try:
            return await self._call("POST", "/v1/caches", body)
        except PoolError as exc:
            if exist_ok and exc.pool_status == 409:
                return {"name": name, "existing": True}
            raise

    async def upsert(self, collection: str, ids: Sequence[int], vectors: Any,
                     payloads: Sequence[Any] | None = None) -> dict[str, Any]:
        """Upsert (<= 10,000 rows per call); numpy ``vectors`` travel as base64 float32."""
        body: dict[str, Any] = {"ids": [int(i) for i in ids]}
        if hasattr(vectors, "astype"):
            body["vectors_b64"] = base64.b64encode(vectors.astype("<f4", copy=False).tobytes()).decode()
        else:
            body["vectors"] = [list(map(float, v)) for v in vectors]
        if payloads is not None:
            body["payloads"] = list(payloads)
        return await self._call("PUT", f"/v1/collections/{collection}/vectors", body)


def _parse_search(data: dict[str, Any], client_ms: float) -> SearchResult:
    """The first (only) query's result of a ``/search`` response."""
    try:
        res = data["results"][0]
        ids, scores = res["ids"], res["scores"]
    except (KeyError, IndexError, TypeError):
        raise PoolError("error", "malformed search response") from None
    if res.get("status") == "rejected":
        raise PoolError("overloaded", "search rejected by the pool's admission (deadline infeasible)")
    payloads = list(res.get("payloads") or []) + [None] * len(ids)
    hits = [SearchHit(int(i), float(s), p) for i, s, p in zip(ids, scores, payloads)]
    timings = {**(data.get("timings") or {}), **(res.get("timings") or {})}
    return SearchResult(hits, bool(res.get("partial")), res.get("fraction_scanned"), timings, client_ms)
