"""The pool's outer ASGI layer: what every request passes before and after its route.

* API keys (401), the body size cap (413 before the app sees a byte too many), a time
  limit on receiving the body (408), JSON bodies only (415);
* a client that goes away before its answer cancels the handler (its searches are aborted);
* an unexpected error answers 500 with the standard error body and keeps the connection
  open (uvicorn would close it without telling the client);
* per-route request metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trinity.errors import ErrorCode, TrinityError
from trinity.pool.auth import KeyChecker
from trinity.pool.errors import error_response
from trinity.pool.state import PoolState

log = logging.getLogger("trinity.pool")
_JSON_TYPES = (b"application/json", b"text/json")


class Guard:
    def __init__(self, app: ASGIApp, state: PoolState) -> None:
        self.app, self.state = app, state
        self.limit, self.body_timeout_s = state.config.max_body_bytes, state.config.body_timeout_s
        self.auth = KeyChecker(state.config.api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if not self.auth.allowed(scope):
            await self._error(scope, send_wrapper, ErrorCode.UNAUTHENTICATED, "missing or invalid API key",
                              "authorization", {"WWW-Authenticate": 'Bearer realm="trinity"'})
        elif length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._error(scope, send_wrapper, ErrorCode.BODY_TOO_LARGE, f"request body exceeds {self.limit} bytes",
                              "body")
        else:
            await self._serve(scope, receive, send_wrapper, headers, status)
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.state.http.requests.labels(scope["method"], path, str(status[0] or 499)).inc()
        self.state.http.latency.labels(scope["method"], path).observe(time.perf_counter() - t0)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, headers: dict, status: list[int]) -> None:
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            await self._error(scope, send, ErrorCode.BODY_TIMEOUT,
                              f"request body not received within {self.body_timeout_s:g} s", "body",
                              {"Connection": "close"})
            return
        except TrinityError as exc:
            await self._error(scope, send, exc.code, exc.message, exc.field)
            return
        if body is None:  # the client left while sending
            return
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and ctype and ctype not in _JSON_TYPES and not ctype.endswith(b"+json"):
            await self._error(scope, send, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "expected a JSON body (Content-Type: "
                              f"application/json), got {ctype.decode('latin-1')!r}", "content-type")
            return
        app = asyncio.ensure_future(self.app(scope, _replay(body, receive), send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((app, gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            app.cancel()
            raise
        finally:
            gone.cancel()
        if not app.done():  # NOTE: cancelling the handler aborts its engine requests (routes.py)
            app.cancel()
            self.state.http.disconnects.inc()
        try:
            await app
        except asyncio.CancelledError:
            if gone.cancelled():  # NOTE: not cancelled for a disconnect: someone cancelled us
                raise
        except Exception:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            if status[0]:
                raise  # the answer has started: only closing the connection can end it
            await self._error(scope, send, ErrorCode.INTERNAL, "internal server error", None)

    async def _read(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise TrinityError(f"request body exceeds {self.limit} bytes", "body", code=ErrorCode.BODY_TOO_LARGE)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _error(scope: Scope, send: Send, code: ErrorCode, message: str, field: str | None,
                     headers: dict[str, str] | None = None) -> None:
        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await error_response(code, message, field, headers)(scope, no_body, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect

    return replay


async def _disconnected(receive: Receive) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
