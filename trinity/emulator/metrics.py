"""Prometheus metrics of one emulated engine (own registry, so tests can host several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["EmulatorMetrics"]

# NOTE: the *_created series only add noise to scrapes of short-lived test servers.
disable_created_metrics()

_STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_LAT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class EmulatorMetrics:
    """Counters and histograms exported at ``/metrics``; names are ``emulator_*``."""

    def __init__(self, role: str) -> None:
        self.registry = CollectorRegistry()
        r, lbl = self.registry, ["role"]

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*lbl, *extra], registry=r)

        self.requests = counter("emulator_requests", "Finished requests by outcome", ("outcome",))
        self.prompt_tokens = counter("emulator_prompt_tokens", "Prompt tokens received")
        self.generation_tokens = counter("emulator_generation_tokens", "Tokens generated")
        self.prefill_tokens = counter("emulator_prefill_computed_tokens", "Prompt tokens prefilled locally")
        self.prefix_hit_tokens = counter("emulator_prefix_cache_hit_tokens", "Prompt tokens served by the prefix cache")
        self.kv_received = counter("emulator_kv_transfers_received", "Requests whose KV came from a prefill instance")
        self.kv_sent = counter("emulator_kv_transfers_sent", "Prefill-only requests that returned kv_transfer_params")
        self.no_kv = counter(
            "emulator_requests_without_kv_transfer",
            "Requests a decode-role instance had to prefill itself (no kv_transfer_params)",
        )
        self.injected_faults = counter("emulator_injected_faults", "Faults injected", ("kind",))
        self.running = Gauge("emulator_num_requests_running", "Sequences in the running batch", lbl, registry=r)
        self.waiting = Gauge("emulator_num_requests_waiting", "Sequences waiting for prefill", lbl, registry=r)
        self.step = Histogram("emulator_step_seconds", "Engine step duration", [*lbl, "kind"],
                              buckets=_STEP_BUCKETS, registry=r)
        self.ttft = Histogram("emulator_time_to_first_token_seconds", "Arrival to first token", lbl,
                              buckets=_LAT_BUCKETS, registry=r)
        self.queue = Histogram("emulator_request_queue_time_seconds", "Arrival to first scheduled step", lbl,
                               buckets=_LAT_BUCKETS, registry=r)
        self.role = role
