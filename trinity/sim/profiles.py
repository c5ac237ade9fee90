"""Profiles: LLM instance costs (the emulator's latency model) and vector-search cost models.

Profiles are JSON files (no pickle) under ``trinity/sim/profiles/``, each citing its
sources; a name resolves there, a path is read as is.  ``trinity bench calibrate`` writes
search profiles fitted on this machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trinity.emulator.latency import DecodeLatency, KVTransferLatency, PrefillLatency

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class Colocation:
    """A co-located search's GPU time: the share of it the LLM engine loses, and how much
    longer the search runs while the engine works (roofline contention)."""

    llm_loss: float = 1.0
    search_stretch: float = 2.0


@dataclass(frozen=True)
class ModelProfile:
    name: str
    gpus_per_instance: int
    prefill: PrefillLatency
    decode: DecodeLatency
    kv_transfer: KVTransferLatency
    hbm_gb: float
    weights_gb: float
    kv_bytes_per_token: int
    colocation: dict[str, Colocation] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def kv_capacity_tokens(self, reserved_gb: float = 0.0) -> int:
        """KV-cache tokens per instance: 90% of its HBM minus weights and ``reserved_gb``."""
        free = 0.9 * self.hbm_gb * self.gpus_per_instance - self.weights_gb - reserved_gb
        return max(int(free * 1e9 / self.kv_bytes_per_token), 0)


@dataclass(frozen=True)
class SearchCost:
    """One vector-engine iteration: ``fixed + pairs / pairs_per_s + reads / reads_per_s +
    items * per_item`` seconds (the engine's own cost-model terms)."""

    fixed_s: float
    pairs_per_s: float
    reads_per_s: float
    per_item_s: float

    def seconds(self, pairs: float, reads: float, items: int) -> float:
        return self.fixed_s + pairs / self.pairs_per_s + reads / self.reads_per_s + items * self.per_item_s

    def device_seconds(self, pairs: float, reads: float) -> float:
        """The part that occupies the device (what co-location contends for)."""
        return pairs / self.pairs_per_s + reads / self.reads_per_s

    def scaled(self, factor: float) -> SearchCost:
        """Scan rates times ``factor`` (more cores); host costs unchanged."""
        return SearchCost(self.fixed_s, self.pairs_per_s * factor, self.reads_per_s * factor, self.per_item_s)


@dataclass(frozen=True)
class SearchProfile:
    name: str
    device: str  # gpu | cpu
    cost: SearchCost
    dim: int
    bytes_per_vector: int
    cores: int = 1  # cpu: cores the rates were measured on
    sources: tuple[str, ...] = ()

    def node_cost(self, cores: int | None = None, efficiency: float = 0.7) -> SearchCost:
        """A CPU node with ``cores`` cores: rates scale with cores at ``efficiency``."""
        if self.device != "cpu" or not cores or cores == self.cores:
            return self.cost
        return self.cost.scaled(max(1.0, efficiency * cores / self.cores))


def _read(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.json")))
        raise ValueError(f"profile {name_or_path!r}: no such file; shipped: {known}")
    return json.loads(path.read_text())


def load_model(name_or_path: str) -> ModelProfile:
    d = _read(name_or_path)
    if d.get("kind") != "model":
        raise ValueError(f"profile {name_or_path!r} is not a model profile")
    return ModelProfile(d["name"], int(d["gpus_per_instance"]), PrefillLatency(**d["prefill"]),
                        DecodeLatency(**d["decode"]), KVTransferLatency(**d["kv_transfer"]), float(d["hbm_gb"]),
                        float(d["weights_gb"]), int(d["kv_bytes_per_token"]),
                        {k: Colocation(**v) for k, v in d.get("colocation", {}).items()}, tuple(d.get("sources", ())))


def load_search(name_or_path: str) -> SearchProfile:
    d = _read(name_or_path)
    if d.get("kind") != "search":
        raise ValueError(f"profile {name_or_path!r} is not a search profile")
    cost = SearchCost(d["fixed_ms"] / 1e3, float(d["pairs_per_s"]), float(d["reads_per_s"]), d["per_item_us"] / 1e6)
    return SearchProfile(d["name"], d["device"], cost, int(d["dim"]), int(d["bytes_per_vector"]),
                         int(d.get("cores", 1)), tuple(d.get("sources", ())))


def write_search(path: Path, name: str, device: str, cost: SearchCost, dim: int, bytes_per_vector: int,
                 cores: int, sources: list[str], extra: dict[str, Any] | None = None) -> Path:
    payload = {"name": name, "kind": "search", "device": device, "fixed_ms": cost.fixed_s * 1e3,
               "pairs_per_s": cost.pairs_per_s, "reads_per_s": cost.reads_per_s, "per_item_us": cost.per_item_s * 1e6,
               "dim": dim, "bytes_per_vector": bytes_per_vector, "cores": cores, "sources": sources, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
