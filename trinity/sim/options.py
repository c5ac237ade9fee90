"""Build a :class:`SimConfig` from command-line options and dotted ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from trinity.sim.config import ClusterConfig, SimConfig, SloConfig, WorkloadConfig, default_mix


def _convert(old: Any, text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if isinstance(old, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(old, int):
        return int(float(text))
    if isinstance(old, float):
        return float(text)
    return text


def override(obj: Any, path: list[str], text: str) -> Any:
    """``obj`` with the field at ``path`` (nested dataclasses) set from ``text``."""
    name = path[0]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        known = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else "-"
        raise ValueError(f"--set: unknown key {name!r} (known here: {known})")
    old = getattr(obj, name)
    new = override(old, path[1:], text) if len(path) > 1 else _convert(old, text)
    return dataclasses.replace(obj, **{name: new})


def build_config(rate: float = 10.0, duration: float = 60.0, prefill: int = 1, decode: int = 1, vector: int = 1,
                 placement: str = "dedicated", policy: str = "stage", model: str = "llama-3-8b-h100",
                 search: str = "search-h100", ttft_slo: float = 1000.0, tpot_slo: float = 100.0,
                 trace: str | None = None, seed: int = 0, sets: list[str] | None = None) -> SimConfig:
    cfg = SimConfig(WorkloadConfig(rate=rate, duration_s=duration, trace=trace, retrieval=default_mix()),
                    ClusterConfig(num_prefill=prefill, num_decode=decode, num_vector=vector, placement=placement,
                                  policy=policy, model=model, search=search),
                    SloConfig(ttft_ms=ttft_slo, tpot_ms=tpot_slo), seed=seed)
    for item in sets or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. workload.retrieval.decode_share=0.5")
        cfg = override(cfg, key.strip().split("."), value.strip())
    return cfg
