"""``trinity sim measure``: measured runs of the ``make demo`` stack for ``trinity sim validate``.

One run = a fresh demo stack (pool with a flat collection of the stdlib corpus, one emulated
prefill and decode engine, the gateway with local MiniLM embedding and the answer cache) and
``trinity bench serve``'s load driver with the demo's mix.  Beside the bench JSON it keeps
what the simulator needs: every request's class, arrival offset, TTFT, latency and gateway
trace (``timings_ms``, retrieval parts), and the CPU seconds of each stack process and of
the whole host (1 s samples: ``other`` = busy CPU not used by the stack or the driver).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

DEMO_MIX = "rag:0.45,rag_decode:0.2,repeat:0.25,plain:0.1"


def _busy(t: Any) -> float:
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _running(pids: list[int]) -> tuple[int, int]:
    """(runnable threads on the host, runnable threads of ``pids``) right now."""
    with open("/proc/stat") as f:
        host = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
    ours = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    ours += f.read().rpartition(")")[2].split()[0] == "R"
        except OSError:
            pass
    return host, ours


class CpuSampler:
    """Every ``period_s``: busy CPU seconds of the host (``steal`` apart) and of each named
    process; every ``fast_s``: runnable threads on the host and in those processes."""

    def __init__(self, procs: dict[str, int], period_s: float = 1.0, fast_s: float = 0.05) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.period_s, self.fast_s, self.samples, self.runnable = period_s, fast_s, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, float]:
        host = psutil.cpu_times()
        row = {"t": time.perf_counter(), "host": _busy(host), "steal": getattr(host, "steal", 0.0)}
        for name, p in self.procs.items():
            try:
                row[name] = _busy(p.cpu_times())
            except psutil.Error:
                row[name] = float("nan")
        return row

    def _run(self) -> None:
        pids = [p.pid for p in self.procs.values()]
        next_slow = time.perf_counter() + self.period_s
        while not self._stop.wait(self.fast_s):
            host, ours = _running(pids)
            self.runnable.append((round(time.perf_counter(), 4), host, ours))  # NOTE: both count this sampler
            if time.perf_counter() >= next_slow:
                self.samples.append(self.sample())
                next_slow += self.period_s

    def __enter__(self) -> CpuSampler:
        self.samples.append(self.sample())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.sample())

    def totals(self) -> dict[str, float]:
        first, last = self.samples[0], self.samples[-1]
        out = {k: last[k] - first[k] for k in first if k != "t"}
        out["wall"] = last["t"] - first["t"]
        out["other"] = max(out["host"] - sum(v for k, v in out.items() if k in self.procs), 0.0)
        return out


def _request_rows(outcomes: list[Any], t0: float) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        tr = o.trinity or {}
        rows.append({"cls": o.cls, "start": o.start - t0, "ttft": o.ttft, "latency": o.latency, "ok": o.success,
                     "prompt_tokens": o.prompt_len, "output_tokens": o.output_tokens,
                     "cache": tr.get("cache"), "timings_ms": tr.get("timings_ms", {}),
                     "retrieval": {k: (tr.get("retrieval") or {}).get(k) for k in ("search_ms", "network_ms")},
                     "decode_retrievals": tr.get("decode_retrievals", [])})
    return rows


def measure_run(rate: float, num_prompts: int, out: Path, passages: int = 4000, seed: int = 0,
                mix: str = DEMO_MIX) -> dict[str, Any]:
    """One measured run of the demo stack at ``rate``; writes and returns the JSON."""
    from trinity.bench import serve_load
    from trinity.bench.serve_bench import ServeBenchConfig, _payload, compute_metrics, parse_goodput, parse_mix
    from trinity.bench.report import write_json
    from trinity.stack.corpus import load_corpus, warm_pool
    from trinity.stack.launcher import Stack, StackConfig

    log_dir = Path(tempfile.mkdtemp(prefix="trinity-measure-"))
    cfg = StackConfig(pool_port=0, gateway_port=0, prefill_ports=(0,), decode_ports=(0,), log_dir=log_dir)
    with Stack(cfg) as stack:
        load_corpus(stack.pool_url, "docs", passages, progress=False)
        warm_pool(stack.pool_url, "docs")
        bench = ServeBenchConfig(base_url=stack.gateway_url, num_prompts=num_prompts, rate=rate, output_len=48,
                                 goodput=parse_goodput(["ttft:1000 tpot:100"]), mix=parse_mix(mix), collection="docs",
                                 k=4, retrieval_interval=16, seed=seed, progress=False, plot=False, out=out)
        procs = {p.name: p.popen.pid for p in stack.processes if p.popen is not None}
        procs["driver"] = os.getpid()
        with CpuSampler(procs) as cpu:
            t0 = time.perf_counter()
            outcomes, duration, model = asyncio.run(serve_load.drive(bench))
        res = compute_metrics(outcomes, duration, bench.goodput, bench.percentile_metrics, bench.metric_percentiles)
    payload = {**_payload(bench, model, res), "seed": seed, "passages": passages, "cpu": cpu.totals(),
               "cpu_samples": cpu.samples,
               "runnable": {"t0": t0, "samples": cpu.runnable}, "requests": _request_rows(outcomes, t0)}
    for key in ("itls", "generated_texts"):
        payload.pop(key, None)
    write_json(out, payload)
    return payload


def measure_plan(rates: list[float], repeats: int, num_prompts: dict[float, int], out_dir: Path,
                 lock: str | None = "/tmp/trinity-measure.lock") -> list[Path]:
    """Repeats interleaved across rates (r1 s1, r2 s1, ..., r1 s2, ...), each run under ``lock``."""
    import fcntl

    paths = []
    for rep in range(repeats):
        for rate in rates:
            path = out_dir / f"demo-rate{rate:g}-rep{rep}.json"
            if path.exists():
                paths.append(path)
                continue
            with open(lock or os.devnull, "a") as fh:
                if lock:
                    fcntl.flock(fh, fcntl.LOCK_EX)
                d = measure_run(rate, num_prompts[rate], path, seed=rep)
            paths.append(path)
            print(f"rate {rate:g} rep {rep}: p50 TTFT {d['median_ttft_ms']:.1f} ms, p99 {d['p99_ttft_ms']:.1f} ms, "
                  f"TPOT {d['mean_tpot_ms']:.2f} ms, other CPU {d['cpu']['other'] / d['cpu']['wall']:.2f} cores "
                  f"-> {path}", flush=True)
    return paths
