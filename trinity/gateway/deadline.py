"""Per-request deadlines derived from the SLOs, enforced on every leg.

``first_token = arrival + ttft_ms * deadline_factor`` bounds the admission queue, the
retrieval (its share of it), the prefill leg and the decode leg up to the first token;
``end = first_token + tpot_ms * deadline_factor * (max_tokens - 1)`` bounds the rest.
Both are capped at ``arrival + max_request_s``. A leg with less than ``min_leg_ms`` left
is refused before it starts; one still running at its deadline is
cancelled: its upstream request or stream is closed, so the engine sees the client leave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from trinity.errors import ErrorCode, TrinityError
from trinity.gateway.config import SLOConfig

__all__ = ["Deadline", "DeadlineExceeded"]

T = TypeVar("T")


class DeadlineExceeded(TrinityError):
    """A request passed its SLO-derived deadline in ``leg`` (queue, prefill, decode, continuation);
    ``field`` names the SLO that set it (``x-slo-ttft-ms`` before the first token, else ``x-slo-tpot-ms``)."""

    code = ErrorCode.DEADLINE_EXCEEDED
    etype = "GatewayTimeoutError"

    def __init__(self, leg: str, message: str, param: str) -> None:
        super().__init__(message, param)
        self.leg = leg


@dataclass(frozen=True)
class Deadline:
    """Absolute ``time.perf_counter()`` times by which a request needs its first token and its end."""

    arrival: float
    first_token: float
    end: float
    ttft_ms: float
    tpot_ms: float
    factor: float
    min_leg_s: float = 0.0

    @classmethod
    def of(cls, slo: SLOConfig, ttft_ms: float, tpot_ms: float, max_tokens: int | None, arrival: float) -> Deadline:
        cap = arrival + slo.max_request_s
        first = min(arrival + ttft_ms * slo.deadline_factor / 1e3, cap)
        end = cap if max_tokens is None else min(first + tpot_ms * slo.deadline_factor * (max_tokens - 1) / 1e3, cap)
        return cls(arrival, first, end, ttft_ms, tpot_ms, slo.deadline_factor, slo.min_leg_ms / 1e3)

    def at(self, started: bool) -> float:
        """The deadline of the next step: the end once the first token is out, else the first token's."""
        return self.end if started else self.first_token

    def left_ms(self, started: bool) -> float:
        return (self.at(started) - time.perf_counter()) * 1e3

    def exceeded(self, leg: str, started: bool) -> DeadlineExceeded:
        f = f" x deadline_factor {self.factor:g}" if self.factor != 1 else ""
        if started:
            what = f"answer not finished {(self.end - self.arrival) * 1e3:.0f} ms after arrival (TTFT " \
                   f"{self.ttft_ms:g} ms + TPOT {self.tpot_ms:g} ms per further token{f})"
        else:
            what = f"no first token {(self.first_token - self.arrival) * 1e3:.0f} ms after arrival (TTFT SLO " \
                   f"{self.ttft_ms:g} ms{f})"
        tail = "" if leg == "queue" else "; the upstream request was cancelled"
        return DeadlineExceeded(leg, f"deadline exceeded in the {leg} leg: {what}{tail}",
                                "x-slo-tpot-ms" if started else "x-slo-ttft-ms")

    async def within(self, aw: Awaitable[T], leg: str, started: bool = False) -> T:
        """Await ``aw`` until the deadline; past it, cancel ``aw`` and raise :class:`DeadlineExceeded`."""
        left = self.at(started) - time.perf_counter()
        if left <= self.min_leg_s:
            close = getattr(aw, "close", None)
            if close is not None:
                close()  # NOTE: never start upstream work that is already late
            raise self.exceeded(leg, started)
        timeout = asyncio.timeout(left)
        try:
            async with timeout:
                return await aw
        except TimeoutError:
            if timeout.expired():
                raise self.exceeded(leg, started) from None
            raise
