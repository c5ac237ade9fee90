"""What a generation request asks for, validated as vLLM's OpenAI server validates it.

Unknown model: 404 ``NotFoundError`` (``The model `x` does not exist.``); a sampling
parameter out of vLLM's ``SamplingParams`` range, a malformed ``stop``, ``tools``,
``tool_choice``, ``logprobs`` or ``response_format``: 400 naming the field. Supported, not
just accepted: ``n``, ``stop`` (cut before the string, ``finish_reason: "stop"``), tool
calls (``tools``: a deterministic call of the chosen function), ``logprobs`` /
``top_logprobs``, ``response_format`` ``json_object`` / ``json_schema`` (a JSON object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trinity.emulator.text import render_chat, tokenize
from trinity.errors import BadRequest, NotFound

__all__ = ["GenParams", "MAX_LOGPROBS", "parse_request"]

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
_RANGES: dict[str, tuple[float, float, bool]] = {  # field: (low, high, low inclusive)
    "temperature": (0.0, float("inf"), True), "top_p": (0.0, 1.0, False), "min_p": (0.0, 1.0, True),
    "presence_penalty": (-2.0, 2.0, True), "frequency_penalty": (-2.0, 2.0, True),
    "repetition_penalty": (0.0, float("inf"), False),
}


@dataclass(frozen=True)
class GenParams:
    prompt: list[str]
    max_tokens: int
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    tool: str | None = None  # the function to call
    logprobs: int | None = None  # top-k alternatives per token (0: the chosen token only)
    json_output: bool = False
    stream: bool = False
    include_usage: bool = False


def _num(body: dict[str, Any], key: str) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"{key}: expected a number, got {type(v).__name__}", key)
    return float(v)


def _check_sampling(body: dict[str, Any]) -> None:
    for key, (lo, hi, lo_incl) in _RANGES.items():
        v = _num(body, key)
        if v is not None and not ((v >= lo if lo_incl else v > lo) and v <= hi):
            rng = f"{'[' if lo_incl else '('}{lo}, {hi}]"
            raise BadRequest(f"{key} must be in {rng}, got {v}", key)
    top_k = body.get("top_k")
    bad_int = not isinstance(top_k, int) or isinstance(top_k, bool)
    if top_k is not None and (bad_int or (top_k < 1 and top_k not in (0, -1))):
        raise BadRequest(f"top_k must be 0, -1 (disable), or at least 1, got {top_k}", "top_k")


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop: expected a non-empty string or a list of them", "stop")
    return tuple(stop)


def _tool(body: dict[str, Any], auto_tool_choice: bool) -> str | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none"):
            raise BadRequest("tool_choice: given without tools", "tool_choice")
        return None
    if not isinstance(tools, list) or not tools:
        raise BadRequest("tools: expected a non-empty list of tool objects", "tools")
    names = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise BadRequest(f"tools[{i}]: expected {{'type': 'function', 'function': {{'name': ...}}}}",
                             f"tools[{i}]")
        names.append(fn["name"])
    if choice is None or choice in ("auto", "required"):
        if choice != "required" and not auto_tool_choice:
            raise BadRequest('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                             "tool_choice")
        return names[0]
    if choice == "none":
        return None
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if name not in names:
        raise BadRequest(f"tool_choice: {choice!r} names no function in tools", "tool_choice")
    return name


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    if chat:
        lp, top = body.get("logprobs"), body.get("top_logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise BadRequest("logprobs: expected a boolean", "logprobs")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_LOGPROBS):
            raise BadRequest(f"top_logprobs: expected an integer in [0, {MAX_LOGPROBS}]", "top_logprobs")
        if top and not lp:
            raise BadRequest("top_logprobs: requires logprobs to be true", "top_logprobs")
        return (top or 0) if lp else None
    lp = body.get("logprobs")
    if lp is not None and (not isinstance(lp, int) or isinstance(lp, bool) or not 0 <= lp <= MAX_LOGPROBS):
        raise BadRequest(f"logprobs: expected an integer in [0, {MAX_LOGPROBS}]", "logprobs")
    return lp


def _json_output(body: dict[str, Any]) -> bool:
    rf = body.get("response_format")
    if rf is None:
        return False
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise BadRequest("response_format: expected {'type': 'text' | 'json_object' | 'json_schema'}",
                         "response_format")
    if kind == "json_schema" and not isinstance(rf.get("json_schema"), dict):
        raise BadRequest("response_format.json_schema: expected an object", "response_format")
    return kind != "text"


def _prompt(body: dict[str, Any], chat: bool) -> list[str]:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise BadRequest("messages: expected a non-empty list of message objects", "messages")
        cont = bool(body.get("continue_final_message"))
        return tokenize(render_chat(msgs, add_generation_prompt=not cont and body.get("add_generation_prompt", True)))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return tokenize(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [str(t) for t in prompt]
    raise BadRequest("prompt: expected a string, a list of token ids, or a batch of exactly one", "prompt")


def _max_tokens(body: dict[str, Any], chat: bool, default: int, max_model_len: int, n_prompt: int) -> int:
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        value = max(1, min(default, max_model_len - n_prompt))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{key}: expected an integer >= 1", key)
    if n_prompt + value > max_model_len:
        raise BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{n_prompt + value} tokens ({n_prompt} in the prompt, {value} in the completion).", key)
    return value


def parse_request(body: dict[str, Any], chat: bool, served: tuple[str, ...], default_max_tokens: int,
                  max_model_len: int, auto_tool_choice: bool = True) -> GenParams:
    """Validate ``body``; raises :class:`BadRequest` (400) or :class:`NotFound` (404)."""
    model = body.get("model")
    if model is not None and model not in served:
        raise NotFound(f"The model `{model}` does not exist.", "model")
    _check_sampling(body)
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BadRequest(f"n must be at least 1, got {n}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream: expected a boolean", "stream")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadRequest("seed: expected an integer", "seed")
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not stream):
        raise BadRequest("stream_options: only allowed (as an object) when stream is true", "stream_options")
    prompt = _prompt(body, chat)
    max_tokens = _max_tokens(body, chat, default_max_tokens, max_model_len, len(prompt))
    return GenParams(prompt, max_tokens, n, _stop(body), seed, _tool(body, auto_tool_choice) if chat else None,
                     _logprobs(body, chat), _json_output(body), stream, bool((opts or {}).get("include_usage")))
