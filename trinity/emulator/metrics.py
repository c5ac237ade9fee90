"""Prometheus metrics of one emulated engine, under vLLM's names, labels and buckets.

The ``vllm:*`` series are those of ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``):
labels ``model_name`` and ``engine``, the same histogram buckets; llm-d-inference-sim exports
the same set, so vLLM's Grafana dashboard and llm-d's router read an emulator as they read
vLLM. What vLLM has no series for (the PD handshake, injected faults, step times) is
``trinity_emulator_*`` with the same labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["EmulatorMetrics", "TPOT_BUCKETS", "TTFT_BUCKETS"]

# NOTE: the *_created series only add noise to scrapes of short-lived test servers.
disable_created_metrics()

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
FINISH_REASONS = ("stop", "length", "abort")


def _build_1_2_5(max_value: int) -> list[int]:
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            if m * 10 ** exp > max_value:
                return out
            out.append(m * 10 ** exp)
        exp += 1


class EmulatorMetrics:
    """Series exported at ``/metrics``, pre-bound to ``model_name`` and ``engine="0"``."""

    def __init__(self, role: str, model_name: str = "trinity-emulated", max_model_len: int = 8192) -> None:
        self.registry, self.role = CollectorRegistry(), role
        r, names, values = self.registry, ["model_name", "engine"], (model_name, "0")

        def counter(name: str, doc: str):
            return Counter(name, doc, names, registry=r).labels(*values)

        def gauge(name: str, doc: str):
            return Gauge(name, doc, names, registry=r).labels(*values)

        def hist(name: str, doc: str, buckets):
            return Histogram(name, doc, names, buckets=buckets, registry=r).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in queried tokens.")
        self.prefix_hit_tokens = counter("vllm:prefix_cache_hits", "Prefix cache hits, in cached tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          [*names, "finished_reason"], registry=r)
        self.success = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}
        sizes = _build_1_2_5(max_model_len)
        self.req_prompt_tokens = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", sizes)
        self.req_gen_tokens = hist("vllm:request_generation_tokens", "Number of generation tokens processed.", sizes)
        self.req_max_tokens = hist("vllm:request_params_max_tokens", "The max_tokens request parameter.", sizes)
        self.req_n = hist("vllm:request_params_n", "Histogram of the n request parameter.", (1, 2, 5, 10, 20))
        self.ttft = hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                         TTFT_BUCKETS)
        self.tpot = hist("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.",
                         TPOT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                        TPOT_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                        REQUEST_LATENCY_BUCKETS)
        self.queue = hist("vllm:request_queue_time_seconds", "Time spent in WAITING phase for request.",
                          REQUEST_LATENCY_BUCKETS)
        self.prefill_time = hist("vllm:request_prefill_time_seconds", "Time spent in PREFILL phase for request.",
                                 REQUEST_LATENCY_BUCKETS)
        self.decode_time = hist("vllm:request_decode_time_seconds", "Time spent in DECODE phase for request.",
                                REQUEST_LATENCY_BUCKETS)
        self.prefill_tokens = counter("trinity_emulator_prefill_computed_tokens",
                                      "Prompt tokens prefilled locally (not from the prefix cache or a KV transfer)")
        self.kv_received = counter("trinity_emulator_kv_transfers_received",
                                   "Requests whose KV came from a prefill instance")
        self.kv_sent = counter("trinity_emulator_kv_transfers_sent",
                               "Prefill-only requests that handed their KV to a decode instance")
        self.no_kv = counter("trinity_emulator_requests_without_kv_transfer",
                             "Requests a decode-role instance had to prefill itself (no KV transfer)")
        self.rejected = Counter("trinity_emulator_rejected_requests", "Requests refused with a 4xx, by field",
                                [*names, "param"], registry=r)
        self.injected = Counter("trinity_emulator_injected_faults", "Faults injected", [*names, "kind"], registry=r)
        self.step = Histogram("trinity_emulator_step_seconds", "Engine step duration", [*names, "kind"],
                              buckets=_STEP_BUCKETS, registry=r)
        self._values = values

    def injected_fault(self, kind: str) -> None:
        self.injected.labels(*self._values, kind).inc()

    def rejected_request(self, param: str | None) -> None:
        self.rejected.labels(*self._values, param or "").inc()

    def step_observe(self, kind: str, seconds: float) -> None:
        self.step.labels(*self._values, kind).observe(seconds)
