"""Choices of an emulated answer in vLLM's shapes: text or JSON content, tool calls, logprobs.

One :class:`ChoiceWriter` per choice turns the engine's token stream into the pieces of a
non-streamed ``choices[i]`` or of streamed deltas. Everything is deterministic in the
request (prompt, seed, choice index), so tests can compare runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from trinity.emulator.request import GenParams

__all__ = ["ChoiceWriter"]

_ALTERNATIVES = (" the", " and", " of", " a", " to", " in", " is", " for", " on", " it", " with", " as", " at",
                 " by", " an", " be", " or", " from", " this", " that")


def _logprob(token: str, rank: int = 0) -> float:
    h = int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "little")
    return round(-0.05 - (h % 1000) / 2000 - 1.5 * rank, 4)


@dataclass
class ChoiceWriter:
    """Accumulates one choice; ``piece`` / ``finish`` give what to send."""

    params: GenParams
    chat: bool
    index: int
    rid: str
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    started: bool = False

    @property
    def tool_mode(self) -> bool:
        return self.params.tool is not None

    def _content(self, token: str, last: bool = False) -> str:
        out = ""
        if self.params.json_output and not self.started:
            out += '{"answer": "'
        self.started = True
        out += token
        if self.params.json_output and last:
            out += '"}'
        return out

    def _lp_entry(self, token: str) -> dict[str, Any]:
        top = [{"token": t, "logprob": _logprob(t, r + 1), "bytes": list(t.encode())}
               for r, t in enumerate(_ALTERNATIVES[: self.params.logprobs or 0])]
        return {"token": token, "logprob": _logprob(token), "bytes": list(token.encode()), "top_logprobs": top}

    def logprobs(self, tokens: list[str], offset: int = 0) -> dict[str, Any] | None:
        if self.params.logprobs is None or not tokens:
            return None
        if self.chat:
            return {"content": [self._lp_entry(t) for t in tokens]}
        k = self.params.logprobs
        offsets, pos = [], offset
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return {"tokens": tokens, "token_logprobs": [_logprob(t) for t in tokens],
                "top_logprobs": [{t: _logprob(t)} | {a: _logprob(a, r + 1) for r, a in enumerate(_ALTERNATIVES[:k])}
                                 for t in tokens] if k else None,
                "text_offset": offsets}

    def tool_calls(self, streaming: bool) -> list[dict[str, Any]]:
        call_id = "chatcmpl-tool-" + hashlib.sha256(f"{self.rid}:{self.index}".encode()).hexdigest()[:24]
        call: dict[str, Any] = {"id": call_id, "type": "function",
                                "function": {"name": self.params.tool,
                                             "arguments": json.dumps({"query": self.text.strip()})}}
        return [{"index": 0, **call}] if streaming else [call]

    def piece(self, token: str) -> dict[str, Any] | None:
        """The streamed choice for one token (``None``: nothing to send yet, as for tool calls)."""
        offset = len(self.text)
        self.text += token
        self.tokens.append(token)
        if self.tool_mode or not token:
            return None
        content = self._content(token)
        lp = self.logprobs([token], offset)
        if self.chat:
            return {"index": self.index, "delta": {"content": content}, "logprobs": lp, "finish_reason": None}
        return {"index": self.index, "text": content, "logprobs": lp, "finish_reason": None}

    def finish_pieces(self, reason: str, stop_reason: str | None) -> list[dict[str, Any]]:
        """The streamed choices that end this choice."""
        reason = "tool_calls" if self.tool_mode and reason != "abort" else reason
        out: list[dict[str, Any]] = []
        tail = '"}' if self.params.json_output and not self.tool_mode else ""
        if self.params.json_output and not self.started and not self.tool_mode:
            tail = '{"answer": ""}'
        if self.chat:
            delta: dict[str, Any] = {}
            if self.tool_mode:
                delta = {"tool_calls": self.tool_calls(streaming=True)}
            elif tail:
                delta = {"content": tail}
            if delta:
                out.append({"index": self.index, "delta": delta, "logprobs": None, "finish_reason": None})
            out.append({"index": self.index, "delta": {}, "logprobs": None, "finish_reason": reason,
                        "stop_reason": stop_reason})
        else:
            out.append({"index": self.index, "text": tail, "logprobs": None, "finish_reason": reason,
                        "stop_reason": stop_reason})
        return out

    def whole(self, reason: str, stop_reason: str | None) -> dict[str, Any]:
        """The non-streamed choice."""
        content = "".join(self.tokens)
        if self.params.json_output:
            content = json.dumps({"answer": content})
        lp = self.logprobs(self.tokens)
        if not self.chat:
            return {"index": self.index, "text": content, "logprobs": lp, "finish_reason": reason,
                    "stop_reason": stop_reason}
        msg: dict[str, Any] = {"role": "assistant", "content": content, "tool_calls": []}
        if self.tool_mode:
            reason = "tool_calls"
            msg = {"role": "assistant", "content": None, "tool_calls": self.tool_calls(streaming=False)}
        return {"index": self.index, "message": msg, "logprobs": lp, "finish_reason": reason,
                "stop_reason": stop_reason}
