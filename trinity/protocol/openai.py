"""OpenAI wire format: response/chunk builders and an SSE reader.

Shared by the emulated engines (which speak it) and the gateway (which speaks it to
clients and reads it from backends). Shapes follow the OpenAI API as served by vLLM,
including vLLM's top-level ``kv_transfer_params`` extension.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = [
    "ClosingStreamingResponse", "Endpoint", "add_openai_routes", "body_of", "chunk", "chunk_of", "done_event",
    "error_body", "install_error_handlers", "iter_sse_json", "new_id", "response", "sse_event", "usage",
]

#: ``"completions"`` (``/v1/completions``) or ``"chat"`` (``/v1/chat/completions``).
Endpoint = Literal["completions", "chat"]


def add_openai_routes(app: Any, handle: Callable[[Any, Endpoint], Any]) -> None:
    """Register ``POST /v1/completions`` and ``POST /v1/chat/completions`` on a FastAPI
    ``app``, both answered by ``await handle(request, endpoint)``."""

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, "chat")


def new_id(endpoint: Endpoint) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(
    endpoint: Endpoint, rid: str, model: str, text: str, finish_reason: str | None,
    usage_: dict[str, int] | None, created: int | None = None, **extra: Any,
) -> dict[str, Any]:
    """A complete (non-streaming) completion or chat completion body."""
    created = created or int(time.time())
    if endpoint == "chat":
        choice: dict[str, Any] = {
            "index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": None, "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage_}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def chunk(
    endpoint: Endpoint, rid: str, model: str, created: int, *, text: str | None = None,
    finish_reason: str | None = None, role: bool = False, usage_: dict[str, int] | None = None,
    no_choices: bool = False, **extra: Any,
) -> dict[str, Any]:
    """One streamed chunk; ``no_choices`` gives the trailing usage-only chunk."""
    if endpoint == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    body: dict[str, Any] = {
        "id": rid, "object": obj, "created": created, "model": model, "choices": [] if no_choices else [choice],
    }
    if usage_ is not None:
        body["usage"] = usage_
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def body_of(endpoint: Endpoint, rid: str, model: str, choices: list[Any], usage_: dict[str, int] | None,
            **extra: Any) -> dict[str, Any]:
    """A non-streaming body around ready-made ``choices``."""
    obj = "chat.completion" if endpoint == "chat" else "text_completion"
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": choices,
            "usage": usage_}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def chunk_of(endpoint: Endpoint, rid: str, model: str, created: int, choices: list[dict[str, Any]],
             usage_: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    """A streamed chunk around ready-made ``choices`` (``[]`` with ``usage_``: the usage chunk)."""
    obj = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    body: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def install_error_handlers(app: Any) -> None:
    """Answer unknown routes, wrong methods and malformed requests with OpenAI's error shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    async def http_error(_: Request, exc: HTTPException) -> Response:
        etype = {404: "NotFoundError", 405: "MethodNotAllowedError"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), exc.status_code, None, etype), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        errs = exc.errors()
        param = ".".join(str(p) for p in errs[0].get("loc", ())[1:]) if errs else None
        msg = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errs)
        return JSONResponse(error_body(msg or "invalid request", 400, param or None), status_code=400)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def done_event() -> bytes:
    return b"data: [DONE]\n\n"


def error_body(message: str, status: int, param: str | None = None, etype: str | None = None) -> dict[str, Any]:
    """OpenAI-style error body (what the ``openai`` client turns into ``APIStatusError``)."""
    default = "BadRequestError" if status < 500 else "InternalServerError"
    return {"error": {"message": message, "type": etype or default, "param": param, "code": status}}


async def iter_sse_json(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """Decode ``data:`` events of an SSE line stream into JSON objects until ``[DONE]``.

    Raises:
        ValueError: on an event that is not JSON, or an in-stream ``{"error": ...}`` event.
    """
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        obj = json.loads(data)
        if isinstance(obj, dict) and "error" in obj and "choices" not in obj:
            err = obj["error"]
            raise ValueError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        yield obj


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that always closes its body generator and calls ``on_close``.

    NOTE: when a client disconnects, Starlette cancels the body task but leaves the
    generator to the garbage collector, and a generator that never started never runs its
    ``finally``; closing it here frees upstream connections and admission slots promptly.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            if self._on_close is not None and inspect.isawaitable(result := self._on_close()):
                await result
