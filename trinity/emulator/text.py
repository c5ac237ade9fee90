"""Toy tokenizer, chat rendering and deterministic filler text of the emulated engines.

THIS IS NOT A REAL TOKENIZER. A token is a run of at most :data:`MAX_TOKEN_CHARS`
non-whitespace characters, i.e. ``re.findall(r"\\S{1,4}", text)`` -- the "about four
characters per token" rule of thumb for English BPE vocabularies. It is cheap,
deterministic and stable under concatenation at whitespace, which is what the
latency model and the prefix cache need.

Filler words are at most four characters long and emitted with a leading space, so
every emitted chunk is exactly one token and re-tokenising the output gives back the
same count.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["MAX_TOKEN_CHARS", "count_tokens", "filler_tokens", "render_chat", "tokenize"]

MAX_TOKEN_CHARS = 4
_TOKEN = re.compile(r"\S{1,%d}" % MAX_TOKEN_CHARS)

# NOTE: all words have <= 4 characters so each emitted " word" is one token.
_WORDS = (
    "the pool data fast vector query shard index cache token batch page load time slot "
    "lane node rank list scan core gpu kv ram disk key unit base mode plan path step "
    "work task loop call read sent done more less high low best fit gain cost"
).split()
_WORDS = tuple(w for w in _WORDS if len(w) <= MAX_TOKEN_CHARS)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into toy tokens (runs of <= 4 non-space characters)."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """Number of toy tokens in ``text``."""
    return sum(1 for _ in _TOKEN.finditer(text))


def _content_text(content: Any) -> str:
    """OpenAI message content: a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Render chat messages with a fixed toy template (``<|role|>`` headers).

    Rendering message by message keeps a conversation's rendering a prefix of its
    extension, so appended messages hit the emulated prefix cache like they would with
    a real chat template.
    """
    parts = [f"<|{m.get('role', 'user')}|>\n{_content_text(m.get('content'))}\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def _seed(prompt: str, seed: int | None) -> int:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def filler_tokens(prompt: str, seed: int | None = None) -> Iterator[str]:
    """Endless deterministic token stream (``" word"`` strings) for ``prompt`` and ``seed``."""
    rng = random.Random(_seed(prompt, seed))
    while True:
        yield " " + rng.choice(_WORDS)
