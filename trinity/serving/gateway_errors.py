"""Errors the gateway answers itself, as OpenAI-style error bodies (``llm_wire.error_body``)."""

from __future__ import annotations

__all__ = ["DeadlineExceeded", "GatewayError"]


class GatewayError(Exception):
    """An error answered to the client with ``status`` (OpenAI error body)."""

    etype: str | None = None

    def __init__(self, status: int, message: str, param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.retry_after = status, param, retry_after


class DeadlineExceeded(GatewayError):
    """A request passed its SLO-derived deadline in ``leg`` (queue, prefill, decode, continuation).

    ``param`` names the SLO that set the deadline: ``x-slo-ttft-ms`` before the first
    token, ``x-slo-tpot-ms`` after it.
    """

    etype = "GatewayTimeoutError"

    def __init__(self, leg: str, message: str, param: str) -> None:
        super().__init__(504, message, param)
        self.leg = leg
