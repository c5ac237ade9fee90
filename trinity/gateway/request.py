"""Client request parsing and prompt rewriting (RAG augmentation, continuation legs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trinity.errors import BadRequest
from trinity.gateway.retrieval import Passage
from trinity.protocol.openai import Endpoint

__all__ = ["ClientRequest", "augment", "continuation_body"]

#: Fields the gateway sets per leg; the client's values are read, then dropped.
_PER_LEG = ("stream", "stream_options", "kv_transfer_params")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


@dataclass(frozen=True)
class ClientRequest:
    """A validated OpenAI request. ``query`` is the text embedded for caches and retrieval:
    the prompt, or the system + user message texts of a chat."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    query: str

    @classmethod
    def parse(cls, endpoint: Endpoint, body: dict[str, Any], model_override: str | None = None) -> ClientRequest:
        body = dict(body)
        if endpoint == "chat":
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
                raise BadRequest("messages: expected a non-empty list of message objects", "messages")
            query = "\n".join(_text(m.get("content")) for m in msgs if m.get("role") in ("system", "user"))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = body["prompt"] = prompt[0]
            if not isinstance(prompt, str):
                raise BadRequest("prompt: expected a string (token-id and batched prompts are not "
                                           "supported by the gateway)", "prompt")
            query = prompt
        n = body.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise BadRequest("n: expected an integer >= 1", "n")
        key = "max_completion_tokens" if endpoint == "chat" and body.get("max_completion_tokens") else "max_tokens"
        max_tokens = body.get(key)
        if max_tokens is None and endpoint == "completions":
            max_tokens = 16  # NOTE: the OpenAI default for /v1/completions; made explicit for the caches
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            raise BadRequest(f"{key}: expected an integer >= 1", key)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("stream: expected a boolean", "stream")
        opts = body.get("stream_options") or {}
        if model_override:
            body["model"] = model_override
        return cls(endpoint, body, str(body.get("model") or ""), stream,
                   bool(isinstance(opts, dict) and opts.get("include_usage")), max_tokens, query)

    @property
    def cacheable(self) -> bool:
        """A plain text answer the answer cache can store and replay (no tools, n, logprobs, formats)."""
        b = self.body
        return (b.get("n", 1) == 1 and not b.get("tools") and not b.get("logprobs") and not b.get("top_logprobs")
                and b.get("response_format") in (None, {"type": "text"}) and not b.get("echo"))

    @property
    def continuable(self) -> bool:
        """Whether decode-time retrieval may split the answer into legs: one plain-text choice (``n``,
        tool calls and structured output are produced by one leg, as the engine produced them)."""
        b = self.body
        return b.get("n", 1) == 1 and not b.get("tools") and b.get("response_format") in (None, {"type": "text"})

    def upstream_body(self) -> dict[str, Any]:
        """The body for the backend, minus the per-leg fields the gateway sets itself."""
        return {k: v for k, v in self.body.items() if k not in _PER_LEG}

    def with_max_tokens(self, body: dict[str, Any], n: int | None) -> dict[str, Any]:
        out = dict(body)
        if n is None:
            return out
        out["max_tokens"] = n
        if "max_completion_tokens" in out:
            out["max_completion_tokens"] = n
        return out


def _context(passages: Sequence[Passage]) -> str:
    return "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages, 1))


def augment(req: ClientRequest, passages: Sequence[Passage]) -> dict[str, Any]:
    """The upstream body with retrieved passages prepended (completions) or in the system message (chat)."""
    body = req.upstream_body()
    if not passages:
        return body
    header = "Use the following retrieved passages if they are relevant.\n" + _context(passages)
    if req.endpoint == "completions":
        body["prompt"] = f"{header}\n\n{body['prompt']}"
        return body
    msgs = [dict(m) for m in body["messages"]]
    # NOTE: many chat templates accept one system message, first: merge into it if present.
    if msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{_text(msgs[0].get('content'))}\n\n{header}"
    else:
        msgs.insert(0, {"role": "system", "content": header})
    body["messages"] = msgs
    return body


def continuation_body(req: ClientRequest, prev: dict[str, Any], leg_text: str,
                      passages: Sequence[Passage]) -> dict[str, Any]:
    """Next leg on the same decode instance: the previous leg's context + its output (+ passages).

    Every leg's prompt is a prefix of the next one's, so the instance's prefix cache serves
    the old context and only the new text and the passage are prefilled.
    """
    body = {k: v for k, v in prev.items() if k not in (*_PER_LEG, "continue_final_message", "add_generation_prompt")}
    if req.endpoint == "completions":
        extra = f"\n\n[Retrieved while answering: {_context(passages)}]\n\n" if passages else ""
        body["prompt"] = f"{prev['prompt']}{leg_text}{extra}"
        return body
    msgs = [dict(m) for m in prev["messages"]]
    if prev.get("continue_final_message") and msgs and msgs[-1].get("role") == "assistant":
        msgs[-1]["content"] = _text(msgs[-1].get("content")) + leg_text  # still the same assistant message
    else:
        msgs.append({"role": "assistant", "content": leg_text})
    if passages:
        msgs.append({"role": "user", "content": "Retrieved while answering:\n" + _context(passages)
                     + "\nContinue your previous answer from where it stopped."})
    else:
        # NOTE: vLLM extension: keep writing the same assistant message.
        body["continue_final_message"], body["add_generation_prompt"] = True, False
    body["messages"] = msgs
    return body
