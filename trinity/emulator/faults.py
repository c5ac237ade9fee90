"""Fault injection and request recording for tests (``/debug/faults``, ``/debug/requests``)."""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["FaultConfig", "Faults", "RequestLog"]


@dataclass(frozen=True)
class FaultConfig:
    """What to break. All off by default; set at start (``--fail-rate``...) or at runtime.

    Attributes:
        fail_next: answer the next N generation requests with ``fail_status``.
        fail_rate: probability of answering a request with ``fail_status`` (seeded RNG).
        fail_status: HTTP status of injected failures.
        extra_delay_ms: sleep before handling each generation request.
        hang: accept requests but never answer (until the client gives up).
        fail_after_tokens: cut streams (and fail non-streamed requests) after N tokens.
        drop_kv_transfer_params: a prefill answers without ``kv_transfer_params``
            (the most common PD misconfiguration, for gateway tests).
    """

    fail_next: int = 0
    fail_rate: float = 0.0
    fail_status: int = 500
    extra_delay_ms: float = 0.0
    hang: bool = False
    fail_after_tokens: int | None = None
    drop_kv_transfer_params: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be in [0, 1]")
        if not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be a 4xx/5xx code")
        if self.fail_next < 0 or self.extra_delay_ms < 0:
            raise ValueError("fail_next and extra_delay_ms must be >= 0")


class Faults:
    """Holds the current :class:`FaultConfig`; ``take_failure`` consumes ``fail_next``."""

    def __init__(self, config: FaultConfig | None = None, seed: int = 0) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(seed)

    def update(self, changes: dict[str, Any]) -> FaultConfig:
        """Apply a partial update (unknown keys raise ``ValueError``)."""
        known = {f.name for f in fields(FaultConfig)}
        if unknown := set(changes) - known:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        self.config = replace(self.config, **changes)
        return self.config

    def reset(self) -> FaultConfig:
        self.config = FaultConfig()
        return self.config

    def take_failure(self) -> int | None:
        """Status code to fail this request with, or ``None`` to serve it."""
        c = self.config
        if c.fail_next > 0:
            self.config = replace(c, fail_next=c.fail_next - 1)
            return c.fail_status
        if c.fail_rate and self._rng.random() < c.fail_rate:
            return c.fail_status
        return None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.config)


class RequestLog:
    """Bounded log of received generation requests, newest last."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def record(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """Append an entry; the caller updates its ``outcome`` when the request ends."""
        entry = {
            "time": time.time(), "path": path, "request_id": headers.get("x-request-id"),
            "body": body, "outcome": "in_progress", "completion_tokens": 0,
        }
        self._entries.append(entry)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
