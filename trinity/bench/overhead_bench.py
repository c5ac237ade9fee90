"""``trinity bench overhead``: the engine's host (Python) cost per iteration, replayed on a
modelled clock.

The engine bench measures what users see, but on a shared 2-core VM its figures swing by
tens of percent from one minute to the next, and they mix three costs: the scan kernels,
the host work around them (planning, bookkeeping, resolving), and waiting for the GIL.
This bench isolates the host work.  It replays a seeded Poisson stream of the engine
bench's mix through the real engine (scheduler, runner, kernels) in one thread, on a
clock that advances by a *modelled* iteration duration (``fixed + pairs / scan rate +
reads / read rate + per item``) instead of the measured one.  Every plan is therefore a
pure function of the code and the seed: two versions that plan alike print the same plan
digest, and the host milliseconds per iteration -- schedule, runner host code, update,
the rest of the step -- compare like for like, kernels timed apart.  Resolving the finished
requests (futures, metrics) is timed apart too (``resolve``): the engine's resolver thread
does it off the loop thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from rich.console import Console

from trinity.bench.engine_bench import EngineBenchConfig
from trinity.bench.engine_systems import build_or_load_index, load_bench_data
from trinity.bench.report import (PhaseTimer, default_out_path, machine_info, make_console, print_table,
                                  set_threads, write_json)
from trinity.bench.workload import poisson_schedule


@dataclass(frozen=True)
class ClockModel:
    """Modelled iteration duration: ``fixed_s + pairs / pairs_per_s + reads / reads_per_s +
    items * per_item_s``.  The defaults approximate the 2-core VM at 1,500 req/s (loaded)."""

    fixed_s: float = 0.003
    pairs_per_s: float = 30e6
    reads_per_s: float = 200e6
    per_item_s: float = 20e-6


class _ModelledRunner:
    """Runs plans on the real runner; reports (and advances the clock by) the modelled duration."""

    def __init__(self, inner, model: ClockModel, clock: list[float], timer: PhaseTimer) -> None:
        self.inner, self.model, self.clock = inner, model, clock
        self.run_inner = timer.wrap(inner.run, "runner")
        self.digest = hashlib.sha256()
        self.digest_s = 0.0  # the bench's own bookkeeping, taken out of the host time

    def run(self, plan):
        t = time.perf_counter()
        # NOTE: canonical (sorted by request, units as ints): the digest names what each
        # request scans, not how the plan groups it, so a new plan layout can be checked.
        work = sorted((w.request_id, w.units, w.returns_result) for ride in plan.rides for _, w in ride.items())
        self.digest.update(repr((plan.is_head, tuple(r.request_id for r in plan.new_requests), tuple(work),
                                 tuple(e.request_id for e in plan.finish_partial))).encode())
        self.digest_s += time.perf_counter() - t
        out = self.run_inner(plan)
        m = self.model
        # NOTE: the fixed cost is the iteration's, charged once: not again for its head part.
        out.duration_s = (m.fixed_s * (not plan.is_head) + out.num_vectors_scanned / m.pairs_per_s
                          + out.vectors_read / m.reads_per_s + m.per_item_s * (plan.num_items + len(plan.new_requests)))
        self.clock[0] += out.duration_s
        return out

    def reset(self) -> None:
        self.inner.reset()


class BusyThread:
    """A thread that runs Python bytecode until stopped: the submitters, resolver and HTTP server
    that share the GIL and the 2 cores with the loop thread in a deployment."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="busy", daemon=True)

    def _spin(self) -> None:
        x = 0
        while not self._stop.is_set():
            for i in range(1000):
                x += i

    def __enter__(self) -> BusyThread:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def replay(ivf, queries: np.ndarray, cfg: EngineBenchConfig, rate: float, model: ClockModel,
           seed: int, contend: bool = False) -> dict[str, Any]:
    """One replay of a Poisson stream at ``rate``; host and kernel time per iteration.  With
    ``contend`` a :class:`BusyThread` competes for the GIL and the cores, as in a deployment."""
    from trinity.engine import Collections, GcPauses, SchedulerConfig, SearchEngine, SearchRunner, freeze_heap

    clock, timer = [0.0], PhaseTimer()
    collections = Collections()
    collections.add("bench", ivf)
    runner = _ModelledRunner(SearchRunner(collections), model, clock, timer)
    engine = SearchEngine(SchedulerConfig(target_iteration_ms=cfg.target_iteration_ms, **cfg.scheduler_kwargs),
                          collections=collections, runner=runner, clock=lambda: clock[0], start=False)
    sched = engine.scheduler
    sched.schedule = timer.wrap(sched.schedule, "schedule")
    sched.update_from_output = timer.wrap(sched.update_from_output, "update")
    # NOTE: instance attributes shadow the index's methods for this replay only.
    ivf.scan, ivf.assign_prepared = timer.wrap(ivf.scan, "kernel"), timer.wrap(ivf.assign_prepared, "assign")
    stream = poisson_schedule(rate, cfg.duration_s, cfg.classes, len(queries), seed=seed)
    status: Counter[str] = Counter()
    steps, step_s, resolve_s, i, durations = 0, 0.0, 0.0, 0, []
    freeze_heap()  # NOTE: as SearchEngine.start() does, with the switch interval
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(engine.config.switch_interval_ms / 1e3)
    try:
        with GcPauses() as pauses, BusyThread() if contend else contextlib.nullcontext():
            while i < len(stream.times) or sched.has_work:
                first = i
                while i < len(stream.times) and stream.times[i] <= clock[0]:
                    c = stream.classes[stream.cls[i]]
                    engine.submit("bench", queries[stream.query[i]], c.k, nprobe=c.nprobe, stage=c.stage,
                                  deadline_ms=c.deadline_ms, request_id=f"r{i}")
                    i += 1
                if i == first and not sched.has_work:
                    clock[0] = float(stream.times[i])  # idle: jump to the next arrival
                    continue
                finished: list = []
                t = time.perf_counter()
                engine._iterate(finished.extend)  # NOTE: the loop thread's part; results resolve apart
                t1 = time.perf_counter()
                status.update(engine._resolve(f).status.value for f in finished)
                resolve_s += time.perf_counter() - t1
                step_s, steps = step_s + t1 - t, steps + 1
                durations.append(t1 - t)
    finally:
        sys.setswitchinterval(switch_interval)
        del ivf.scan, ivf.assign_prepared
        engine.shutdown(drain=False)
    sec = timer.seconds
    step_s -= runner.digest_s  # NOTE: the digest is computed inside the timed step, before the runner
    host = step_s - sec["kernel"] - sec["assign"]
    per = 1e3 / max(steps, 1)
    return {"rate": rate, "iterations": steps, "requests": i, **{f"n_{k}": v for k, v in sorted(status.items())},
            "host_ms": host * per, "schedule_ms": sec["schedule"] * per,
            "runner_host_ms": (sec["runner"] - sec["kernel"]) * per, "update_ms": sec["update"] * per,
            "other_ms": (step_s - sec["schedule"] - sec["runner"] - sec["update"] - sec["assign"]) * per,
            "kernel_ms": (sec["kernel"] + sec["assign"]) * per, "host_share": host / max(step_s, 1e-12),
            "resolve_ms": resolve_s * per, "p50_step_ms": float(np.median(durations)) * 1e3,
            "p99_step_ms": float(np.percentile(durations, 99)) * 1e3, "max_step_ms": max(durations) * 1e3,
            "gc_max_ms": pauses.max_s * 1e3, "gc_full": pauses.count[2],
            "digest": runner.digest.hexdigest()[:16]}


def run_overhead_bench(cfg: EngineBenchConfig, model: ClockModel = ClockModel(),
                       console: Console | None = None, contend: bool = False) -> dict[str, Any]:
    """Replay every rate ``cfg.repeats`` times (medians of the timings); print; write JSON."""
    console = console or make_console()
    data = load_bench_data(cfg, console)
    set_threads(cfg.threads)
    ivf, index_info = build_or_load_index(data, cfg, console)
    from trinity.engine.runner import compile_runner
    from trinity.engine.scheduler import compile_kernels

    compile_kernels()  # NOTE: as SearchEngine.start() does: nothing compiles inside a timed step
    compile_runner()
    for c in cfg.classes:
        ivf.search(data.queries[:8], c.k, nprobe=c.nprobe)
    rows = []
    for rate in cfg.rates:
        runs = [replay(ivf, data.queries, cfg, rate, model, cfg.seed, contend) for _ in range(cfg.repeats)]
        row = dict(runs[0])
        for key in ("host_ms", "schedule_ms", "runner_host_ms", "update_ms", "other_ms", "kernel_ms", "host_share",
                    "resolve_ms", "p50_step_ms", "p99_step_ms", "max_step_ms", "gc_max_ms"):
            row[key] = float(np.median([r[key] for r in runs]))
        row["deterministic"] = len({r["digest"] for r in runs}) == 1
        rows.append(row)
        console.print(f"  {rate:6g} req/s  host {row['host_ms']:.3f} ms/iteration  kernel {row['kernel_ms']:.3f}  "
                      f"digest {row['digest']}")
    print_table("Engine host overhead per iteration (modelled clock; kernels timed apart)", rows, [
        ("rate", "rate", "g"), ("iterations", "iters"), ("requests", "reqs"), ("n_complete", "done"),
        ("n_partial", "partial"), ("host_ms", "host ms", ".3f"), ("schedule_ms", "sched", ".3f"),
        ("runner_host_ms", "runner", ".3f"), ("update_ms", "update", ".3f"), ("other_ms", "rest", ".3f"),
        ("kernel_ms", "kernels ms", ".3f"), ("host_share", "host", ".0%"), ("resolve_ms", "resolve", ".3f"),
        ("p50_step_ms", "step p50", ".2f"), ("p99_step_ms", "p99", ".2f"), ("max_step_ms", "max", ".2f"),
        ("gc_max_ms", "gc max", ".2f"), ("digest", "plan digest"),
        ("deterministic", "same")], console)
    payload = {"bench": "overhead", "config": cfg.to_dict(), "clock_model": asdict(model), "contend": contend,
               "index": index_info, "data": data.info, "machine": machine_info(), "rows": rows}
    path = write_json(cfg.out or default_out_path("overhead"), payload)
    console.print(f"wrote {path}")
    return payload
