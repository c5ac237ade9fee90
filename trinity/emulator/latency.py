"""Latency model of the emulated engines.

The functional form follows the analytical latency model of DistServe (Zhong et al.,
"DistServe: Disaggregating Prefill and Decoding for Goodput-optimized LLM Serving",
OSDI 2024): prefill time grows linearly with the prompt tokens (GEMMs) plus a quadratic
attention term; a decode step is dominated by reading the weights once, plus a term
linear in the KV-cache tokens read and one linear in the batch size::

    prefill_ms(batch) = a + b * sum(tokens) + c * sum(tokens ** 2)
    decode_step_ms    = a + b * context_tokens + c * batch_size
    kv_transfer_ms    = a + bytes_per_token * tokens / bandwidth

DEFAULTS ARE ILLUSTRATIVE, NOT MEASURED. They are a roofline estimate for
Llama-3-8B (bf16) on one H100 SXM, derived from published numbers only:

* Llama-3-8B (``meta-llama/Meta-Llama-3-8B`` config.json): 8.03e9 parameters, 32 layers,
  d_model 4096, 8 KV heads x 128 dims -> 2*8.03e9 = 16.06 GFLOP per token, 16.06 GB of
  bf16 weights, KV cache 2*32*8*128*2 B = 131,072 B per token.
* NVIDIA H100 SXM5 datasheet: 989 TFLOPS dense bf16, 3.35 TB/s HBM3.
* Assumed utilisation (the only free choices): 50% MFU for prefill, 80% memory-bandwidth
  utilisation for decode, 3 ms fixed prefill-step overhead, 25 GB/s KV transfer
  (one 200 Gb/s RDMA NIC) with 1 ms setup.

Which gives: prefill b = 16.06e9 / (0.5*989e12) s = 0.0325 ms/token; prefill
c = 2*32*4096 causal attention FLOP/token^2 / (0.5*989e12) = 5.3e-7 ms/token^2; decode
a = 16.06e9 / (0.8*3.35e12) s = 5.99 ms; decode b = 131072 / (0.8*3.35e12) s =
4.9e-5 ms per KV token read; decode c = 0.0325 ms per sequence (its GEMM share).
Sanity: a 1,024-token prompt prefills in ~37 ms; a decode step at batch 64 x 1,000
context tokens takes ~11 ms. Fit a, b, c to your own ``vllm bench serve`` runs
(TTFT at concurrency 1 across input lengths; ITL across batch sizes) for real numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DecodeLatency", "KVTransferLatency", "LatencyModel", "PrefillLatency"]


@dataclass(frozen=True)
class PrefillLatency:
    """``a + b * sum(tokens) + c * sum(tokens**2)`` milliseconds for one prefill batch."""

    a_ms: float = 3.0
    b_ms_per_token: float = 0.0325
    c_ms_per_token2: float = 5.3e-7

    def ms(self, tokens: Sequence[int]) -> float:
        """Duration of one step prefilling ``tokens`` (uncached tokens per sequence)."""
        if not tokens:
            return 0.0
        return self.a_ms + self.b_ms_per_token * sum(tokens) + self.c_ms_per_token2 * sum(t * t for t in tokens)


@dataclass(frozen=True)
class DecodeLatency:
    """``a + b * context_tokens + c * batch_size`` milliseconds for one decode step."""

    a_ms: float = 5.99
    b_ms_per_context_token: float = 4.9e-5
    c_ms_per_seq: float = 0.0325

    def ms(self, batch_size: int, context_tokens: int) -> float:
        """Duration of one step generating a token for ``batch_size`` sequences."""
        if batch_size <= 0:
            return 0.0
        return self.a_ms + self.b_ms_per_context_token * context_tokens + self.c_ms_per_seq * batch_size


@dataclass(frozen=True)
class KVTransferLatency:
    """Time for a decode instance to pull a prompt's KV cache from the prefill instance."""

    a_ms: float = 1.0
    bytes_per_token: int = 131_072
    bandwidth_gb_s: float = 25.0

    def ms(self, tokens: int) -> float:
        return self.a_ms + self.bytes_per_token * tokens / (self.bandwidth_gb_s * 1e9) * 1e3


@dataclass(frozen=True)
class LatencyModel:
    """All latency knobs of one emulated engine; ``time_scale`` stretches every sleep."""

    prefill: PrefillLatency = field(default_factory=PrefillLatency)
    decode: DecodeLatency = field(default_factory=DecodeLatency)
    kv_transfer: KVTransferLatency = field(default_factory=KVTransferLatency)
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        for part in (self.prefill, self.decode, self.kv_transfer):
            if any(v < 0 for v in vars(part).values()):
                raise ValueError(f"{type(part).__name__}: coefficients must be >= 0")
        if self.kv_transfer.bandwidth_gb_s <= 0:
            raise ValueError("kv_transfer.bandwidth_gb_s must be > 0")

    @classmethod
    def from_overrides(cls, overrides: dict[str, float] | None = None, time_scale: float = 1.0) -> LatencyModel:
        """Build from flat ``{"prefill.a_ms": 2.0, "decode.c_ms_per_seq": 0.1}`` overrides."""
        parts: dict[str, dict[str, float]] = {"prefill": {}, "decode": {}, "kv_transfer": {}}
        for key, value in (overrides or {}).items():
            part, _, name = key.partition(".")
            if part not in parts or not name:
                raise ValueError(f"latency override {key!r}: expected prefill.X, decode.X or kv_transfer.X")
            parts[part][name] = float(value)
        try:
            return cls(
                prefill=PrefillLatency(**parts["prefill"]),
                decode=DecodeLatency(**parts["decode"]),
                kv_transfer=KVTransferLatency(**parts["kv_transfer"]),
                time_scale=time_scale,
            )
        except TypeError as exc:  # unknown coefficient name
            raise ValueError(f"latency override: {exc}") from None
