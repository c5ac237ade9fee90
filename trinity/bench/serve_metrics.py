"""``vllm bench serve``'s result schema computed from per-request outcomes (plus ``trinity_*``).

Keys as in ``vllm/benchmarks/serve.py``: ``duration``, ``completed``, ``failed``, token totals and
throughputs, ``request_goodput``, ``max_output_tokens_per_s`` and ``max_concurrent_requests``
(peaks over 1 s windows), the per-request arrays ``input_lens``, ``output_lens``, ``ttfts``,
``itls``, ``generated_texts``, ``errors`` (seconds, like vLLM's), and per selected metric
``mean_/median_/std_{m}_ms`` plus ``p{P}_{m}_ms`` for each ``--metric-percentiles`` value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trinity.bench.serve_config import CLASSES, Outcome

__all__ = ["METRICS", "RETRIEVAL_PARTS", "compute_metrics", "parse_percentiles", "percentile_key", "retrievals"]

METRICS = ("ttft", "tpot", "itl", "e2el")


def parse_percentiles(metrics: str, percentiles: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``"ttft,tpot"``, ``"50,90,99"`` -> validated tuples (``--percentile-metrics``, ``--metric-percentiles``)."""
    ms = tuple(m.strip() for m in metrics.split(",") if m.strip())
    bad = [m for m in ms if m not in METRICS]
    if not ms or bad:
        raise ValueError(f"--percentile-metrics: expected some of {','.join(METRICS)}, got {metrics!r}")
    try:
        ps = tuple(float(p) for p in percentiles.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"--metric-percentiles: expected numbers, got {percentiles!r}") from None
    if not ps or not all(0 < p <= 100 for p in ps):
        raise ValueError(f"--metric-percentiles: expected values in (0, 100], got {percentiles!r}")
    return ms, ps


def percentile_key(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def _stats(name: str, values_ms: Sequence[float], percentiles: Sequence[float], out: dict[str, Any]) -> None:
    import numpy as np

    arr = np.asarray(list(values_ms) or [0.0], dtype=np.float64)
    out[f"mean_{name}_ms"], out[f"median_{name}_ms"] = float(arr.mean()), float(np.median(arr))
    out[f"std_{name}_ms"] = float(arr.std())
    for p in percentiles:
        out[f"p{percentile_key(p)}_{name}_ms"] = float(np.percentile(arr, p))


def _tpot(o: Outcome) -> float | None:
    return (o.latency - o.ttft) / (o.output_tokens - 1) if o.output_tokens > 1 else None


def _peaks(ok: list[Outcome], t0: float) -> tuple[float, int]:
    """Most output tokens in any 1 s window, and most requests in flight in any 1 s window."""
    tokens: dict[int, int] = {}
    for o in ok:
        t = o.start + o.ttft
        for dt in [0.0, *o.itl]:
            t += dt
            tokens[int(t - t0)] = tokens.get(int(t - t0), 0) + 1
    active: dict[int, int] = {}
    for o in ok:
        for s in range(int(o.start - t0), int(o.start + o.latency - t0) + 1):
            active[s] = active.get(s, 0) + 1
    return float(max(tokens.values(), default=0)), max(active.values(), default=0)


RETRIEVAL_PARTS = ("embed", "cache", "search", "network")


def retrievals(trinity: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per stage, the retrievals that returned passages, each with ``ms`` (from its first step,
    embedding the query, to the passages in hand) and its parts ``{embed,cache,search,network}_ms``."""
    pre = [r for t in trinity if isinstance(r := t.get("retrieval"), dict) and "ms" in r]
    dec = [d for t in trinity for d in t.get("decode_retrievals", []) if "ms" in d and "error" not in d]
    return {"prefill": pre, "decode": dec}


def _trinity(outcomes: list[Outcome], ok: list[Outcome], res: dict[str, Any]) -> None:
    tr = [o.trinity for o in ok if o.trinity]
    for stage, rs in retrievals(tr).items():
        _stats(f"retrieval_{stage}", [r["ms"] for r in rs], (99,), res)
        for part in RETRIEVAL_PARTS:
            _stats(f"retrieval_{stage}_{part}", [float(r.get(f"{part}_ms", 0.0)) for r in rs], (99,), res)
    _stats("decode_stall", [d["stall_ms"] for t in tr for d in t.get("decode_retrievals", []) if "stall_ms" in d],
           (99,), res)
    lookups = [t for t in tr if t.get("cache") in ("hit", "miss")]
    res["trinity_cache_hit_rate"] = sum(t["cache"] == "hit" for t in lookups) / len(lookups) if lookups else None
    res["trinity_cache_hits"] = sum(t.get("cache") == "hit" for t in tr)
    res["trinity_degraded"] = sum(bool(t.get("degraded")) for t in tr)
    res["trinity_prefill_retrievals"] = sum("retrieval" in t["timings_ms"] for t in tr)
    res["trinity_decode_retrievals"] = sum(len(t.get("decode_retrievals", [])) for t in tr)
    res["trinity_continuation_legs"] = sum(t.get("legs", {}).get("continuation", 0) for t in tr)
    res["trinity_requests_by_class"] = {c: sum(o.cls == c for o in outcomes) for c in CLASSES}


def compute_metrics(outcomes: list[Outcome], duration_s: float, goodput: dict[str, float],
                    metrics: Sequence[str] = METRICS, percentiles: Sequence[float] = (99,)) -> dict[str, Any]:
    """vLLM's result fields (JSON names), plus ``trinity_*`` ones."""
    ok = [o for o in outcomes if o.success]
    good = 0
    for o in ok:
        limits = {"ttft": o.ttft, "tpot": _tpot(o) or 0.0, "e2el": o.latency}
        good += all(limits[k] * 1e3 <= v for k, v in goodput.items())
    total_in, total_out = sum(o.prompt_len for o in ok), sum(o.output_tokens for o in ok)
    t0 = min((o.start for o in outcomes), default=0.0)
    peak_tokens, peak_requests = _peaks(ok, t0)
    res: dict[str, Any] = {
        "duration": duration_s, "completed": len(ok), "failed": len(outcomes) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s, "request_goodput": good / duration_s if goodput else None,
        "output_throughput": total_out / duration_s, "total_token_throughput": (total_in + total_out) / duration_s,
        "max_output_tokens_per_s": peak_tokens, "max_concurrent_requests": peak_requests,
        "input_lens": [o.prompt_len for o in outcomes], "output_lens": [o.output_tokens for o in outcomes],
        "ttfts": [o.ttft for o in outcomes], "itls": [list(o.itl) for o in outcomes],
        "generated_texts": [o.text for o in outcomes], "errors": [o.error for o in outcomes],
    }
    values = {"ttft": [o.ttft * 1e3 for o in ok], "tpot": [t * 1e3 for o in ok if (t := _tpot(o)) is not None],
              "itl": [x * 1e3 for o in ok for x in o.itl], "e2el": [o.latency * 1e3 for o in ok]}
    for m in metrics:
        _stats(m, values[m], percentiles, res)
    _trinity(outcomes, ok, res)
    res["error_summary"] = sorted({o.error for o in outcomes if not o.success})[:10]
    return res
