"""What one request carries through the gateway: its :class:`Trace` (returned to the client as
the ``trinity`` object) and, once caches and retrieval ran, its :class:`Prepared` body."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trinity.gateway.deadline import Deadline
from trinity.gateway.options import RequestOptions
from trinity.gateway.request import ClientRequest
from trinity.gateway.retrieval import Passage

__all__ = ["Prepared", "Trace"]


@dataclass
class Trace:
    """What happened to one request; returned to the client as the ``trinity`` object."""

    request_id: str
    upstream_id: str = ""  # X-Request-Id of every leg (unique even if clients reuse ids)
    kv_request_id: str | None = None  # p2p-nccl: the id of the prefill and first decode leg
    arrival: float = field(default_factory=time.perf_counter)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cache: str = "off"
    prompt_cache: str = "off"
    degraded_reasons: list[str] = field(default_factory=list)
    retrieval: dict[str, Any] | None = None
    decode_retrievals: list[dict[str, Any]] = field(default_factory=list)
    legs: Counter = field(default_factory=Counter)
    kv_transfer: bool | None = None
    instances: dict[str, str] = field(default_factory=dict)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    first_token_at: float | None = None
    deadline: Deadline | None = None

    def __post_init__(self) -> None:
        # NOTE: vLLM pairs a request's legs by this id, so it must be unique (the client's id is its prefix).
        self.upstream_id = self.upstream_id or f"{self.request_id}-{uuid.uuid4().hex[:8]}"

    def add(self, phase: str, ms: float) -> None:
        self.timings_ms[phase] = round(self.timings_ms.get(phase, 0.0) + ms, 3)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.arrival) * 1e3

    def to_json(self) -> dict[str, Any]:
        out = {
            "request_id": self.request_id, "upstream_request_id": self.upstream_id, "cache": self.cache,
            "prompt_cache": self.prompt_cache,
            "degraded": bool(self.degraded_reasons), "degraded_reasons": self.degraded_reasons,
            "retrieval": self.retrieval, "decode_retrievals": self.decode_retrievals, "legs": dict(self.legs),
            "kv_transfer": self.kv_transfer, "instances": self.instances,
            **({"kv_request_id": self.kv_request_id} if self.kv_request_id else {}),
            "timings_ms": {**self.timings_ms, "total": round(self.elapsed_ms(), 3)},
        }
        if self.first_token_at is not None:
            out["timings_ms"]["ttft"] = round((self.first_token_at - self.arrival) * 1e3, 3)
        if self.deadline is not None:
            out["deadline_ms"] = {"first_token": round((self.deadline.first_token - self.arrival) * 1e3, 3),
                                  "end": round((self.deadline.end - self.arrival) * 1e3, 3)}
        return out


@dataclass
class Prepared:
    """Result of steps 1-3: a cached answer, or the (augmented) body to generate from."""

    request: ClientRequest
    opts: RequestOptions
    body: dict[str, Any]
    vector: list[float] | None = None
    cached: dict[str, Any] | None = None
    passages: list[Passage] = field(default_factory=list)
