"""Configuration and per-request outcome of ``trinity bench serve`` (shared by the report and the load driver)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CLASSES", "Outcome", "ServeBenchConfig", "parse_goodput", "parse_mix"]

CLASSES = ("plain", "rag", "rag_decode", "repeat")


def parse_goodput(items: list[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` (or ``"ttft:500 tpot:50"``) -> ``{"ttft": 500.0, "tpot": 50.0}``."""
    out: dict[str, float] = {}
    for item in (p for it in items for p in it.replace(",", " ").split()):
        key, sep, value = item.partition(":")
        if key not in ("ttft", "tpot", "e2el") or not sep:
            raise ValueError(f"--goodput {item!r}: expected ttft:MS, tpot:MS or e2el:MS")
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number of ms") from None
        if out[key] <= 0:
            raise ValueError(f"--goodput {item!r}: must be positive")
    return out


def parse_mix(text: str) -> dict[str, float]:
    """``"rag:0.5,repeat:0.2,plain:0.3"`` -> normalised weights."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, w = part.partition(":")
        if name not in CLASSES:
            raise ValueError(f"--mix: unknown class {name!r}; known: {', '.join(CLASSES)}")
        mix[name] = float(w or 1.0)
    total = sum(mix.values())
    if not mix or total <= 0 or min(mix.values()) < 0:
        raise ValueError("--mix: give non-negative weights with a positive sum")
    return {k: v / total for k, v in mix.items()}


@dataclass(frozen=True)
class ServeBenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = "completions"  # completions | chat
    model: str | None = None  # default: the first of /v1/models
    num_prompts: int = 200
    rate: float = float("inf")
    burstiness: float = 1.0
    max_concurrency: int | None = None
    output_len: int = 64
    goodput: dict[str, float] = field(default_factory=dict)
    mix: dict[str, float] = field(default_factory=lambda: {"plain": 1.0})
    collection: str | None = None
    k: int = 4
    retrieval_interval: int = 16
    slo_headers: bool = True  # send the goodput SLOs as x-slo-ttft-ms / x-slo-tpot-ms
    corpus_passages: int = 5000
    seed: int = 0
    timeout_s: float = 300.0
    out: Path | None = None
    progress: bool = True
    answer_cache: bool = True  # False: every request asks the gateway not to use its answer cache
    percentile_metrics: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")
    metric_percentiles: tuple[float, ...] = (99.0,)
    label: str | None = None
    plot: bool = True  # a PNG next to the JSON

    def validate(self) -> None:
        if self.endpoint not in ("completions", "chat"):
            raise ValueError("endpoint: expected completions or chat")
        if self.num_prompts < 1 or self.output_len < 1 or not self.rate > 0 or self.burstiness <= 0:
            raise ValueError("num_prompts, output_len, rate and burstiness must be positive")
        if {"rag", "rag_decode"} & set(self.mix) and not self.collection:
            raise ValueError("--mix with rag classes needs --collection")


@dataclass
class Outcome:
    """One request as the client saw it (times in seconds)."""

    cls: str
    success: bool = False
    error: str = ""
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start: float = 0.0
    text: str = ""
    trinity: dict[str, Any] = field(default_factory=dict)
