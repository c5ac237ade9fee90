"""Calling an ASGI app in-process: one HTTP exchange (``call``) and its lifespan (``Lifespan``).

A pool replica runs the single-process pool's own app this way, so that validation, errors,
metrics and the route handlers are the same code; only the bytes travel over Ray.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Message

__all__ = ["Exchange", "Lifespan", "call"]


@dataclass(frozen=True)
class Exchange:
    """An HTTP request or answer as plain data (what a Ray call carries)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


async def call(app: ASGIApp, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
               body: bytes) -> Exchange:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query, "headers": headers,
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
    done = asyncio.Event()
    sent = False
    start: dict = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return Exchange(int(start.get("status", 500)), tuple(start.get("headers", ())), b"".join(chunks))


class Lifespan:
    """Drive an app's lifespan: ``await start()`` runs its startup, ``await stop()`` its shutdown."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                                  self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete")

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        await self._task

    async def _expect(self, kind: str) -> None:
        getter = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait((getter, self._task), return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            self._task.result()
            raise RuntimeError(f"the app's lifespan ended without {kind}")
        message = getter.result()
        if message["type"] != kind:
            raise RuntimeError(f"lifespan: expected {kind}, got {message['type']}: {message.get('message', '')}")
