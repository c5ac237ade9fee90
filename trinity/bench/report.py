"""Helpers shared by all benchmarks: rich tables, atomic JSON, machine info, percentiles,
recall@k, thread setup, phase timers and a device-copy bandwidth baseline."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

#: A column is a row key, ``(key, header)`` or ``(key, header, format_spec)``.
ColumnSpec = str | tuple[str, str] | tuple[str, str, str]

RESULTS_DIR = Path("benchmarks") / "results"
#: Environment variables that change threading behaviour; recorded with every result.
_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "CUDA_VISIBLE_DEVICES")


def make_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output is redirected."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def _fmt(value: Any, spec: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if spec:
        try:
            return format(value, spec)
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "nan"
        a = abs(float(value))
        return f"{value:.3g}" if a < 1 else f"{value:.1f}" if a < 1000 else f"{value:,.0f}"
    return str(value)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[ColumnSpec],
                console: Console | None = None) -> Table:
    """Print ``rows`` (dicts) as a rich table with the given columns; return the table.

    Missing keys print as ``-``; numeric columns are right-aligned.
    """
    specs = [(c, c, None) if isinstance(c, str) else (c[0], c[1], c[2] if len(c) > 2 else None)
             for c in columns]
    table = Table(title=title, title_justify="left")
    for key, header, _ in specs:
        numeric = any(isinstance(r.get(key), (int, float, np.number)) and not isinstance(r.get(key), bool)
                      for r in rows)
        table.add_column(header, justify="right" if numeric else "left", no_wrap=True)
    for r in rows:
        table.add_row(*(_fmt(r.get(key), spec) for key, _, spec in specs))
    (console or make_console()).print(table)
    return table


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, _dt.datetime, _dt.date)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (temp file + rename); create parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=_json_default, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def default_out_path(bench: str, now: _dt.datetime | None = None) -> Path:
    """``benchmarks/results/<bench>-<host>-<YYYYmmdd-HHMMSS>.json`` (relative to the cwd)."""
    now = now or _dt.datetime.now()
    host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in socket.gethostname()) or "host"
    return RESULTS_DIR / f"{bench}-{host}-{now:%Y%m%d-%H%M%S}.json"


def percentiles(values: Iterable[float], ps: Sequence[float] = (50, 99)) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` of ``values`` (linear interpolation); NaN when empty."""
    arr = np.asarray(list(values), dtype=np.float64)
    return {f"p{p:g}": float(np.percentile(arr, p)) if arr.size else math.nan for p in ps}


def latency_summary_ms(seconds: Iterable[float]) -> dict[str, float]:
    """p50/p99/mean of latencies given in seconds, in milliseconds."""
    arr = np.asarray(list(seconds), dtype=np.float64) * 1e3
    out = {f"{k}_ms": v for k, v in percentiles(arr).items()}
    out["mean_ms"] = float(arr.mean()) if arr.size else math.nan
    return out


def time_interleaved(systems: dict[str, Callable[[Any], Any]], inputs: Sequence[Any], budget_s: float = math.inf,
                     min_calls: int = 3, warmup: bool = True) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Call every system on ``inputs`` in turn, round-robin: ``(latencies_s, outputs)`` per system.

    NOTE: interleaving input by input means background load on a shared machine hits all
    systems alike, which keeps their ratios meaningful.  A system leaves the rotation once
    it has used ``budget_s`` (after ``min_calls`` calls), which bounds slow baselines while
    fast systems still see every input.  ``warmup`` first calls each system once on
    ``inputs[0]``, untimed (JIT compilation, caches, page faults).
    """
    lat: dict[str, list[float]] = {s: [] for s in systems}
    outs: dict[str, list[Any]] = {s: [] for s in systems}
    if warmup and len(inputs):
        for fn in systems.values():
            fn(inputs[0])
    active = list(systems)
    for i, x in enumerate(inputs):
        for s in list(active):
            t0 = time.perf_counter()
            outs[s].append(systems[s](x))
            lat[s].append(time.perf_counter() - t0)
            if sum(lat[s]) > budget_s and i + 1 >= min_calls:
                active.remove(s)
        if not active:
            break
    return lat, outs


class PhaseTimer:
    """Wall seconds spent in wrapped callables, by phase (a wrapped phase starts at 0)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.longest: Counter[str] = Counter()  # the longest single call per phase (pop to restart)

    def wrap(self, fn: Callable, phase: str) -> Callable:
        self.seconds[phase] += 0.0

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                t = time.perf_counter() - t
                self.seconds[phase] += t
                if t > self.longest[phase]:
                    self.longest[phase] = t

        return timed


def verdict(name: str, value: float | None, op: str, target: float) -> dict[str, Any]:
    """A target check: ``pass`` is None when ``value`` was not measured; ``op`` is ``>=`` or ``<=``."""
    ok = None if value is None else (value >= target if op == ">=" else value <= target)
    return {"name": name, "value": value, "target": f"{op} {target}", "pass": ok}


def print_verdicts(verdicts: Sequence[dict[str, Any]], console: Console | None = None) -> None:
    """One ``PASS``/``FAIL``/``N/A`` line per :func:`verdict`."""
    console = console or make_console()
    for v in verdicts:
        tag = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[yellow]N/A[/]"}[v["pass"]]
        val = "not measured" if v["value"] is None else f"{v['value']:.3f}"
        console.print(f"{tag} {v['name']}: {val} (target {v['target']})")


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ids, ``-1`` = none) found in the same row of ``found``."""
    found, truth = np.asarray(found), np.asarray(truth)
    hits = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return float(hits.any(axis=1).sum() / max(1, int((truth >= 0).sum())))


def set_threads(threads: int | None = None) -> int:
    """Give torch, numba and FAISS (OpenMP) the same thread count (default: usable cores)."""
    import numba
    import torch

    n = max(1, threads or len(os.sched_getaffinity(0)))
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        import faiss
    except ImportError:
        return n
    faiss.omp_set_num_threads(n)
    return n


def cuda_copy_gbps(nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s, counting read + write bytes (needs CUDA)."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * 4 * reps / (start.elapsed_time(end) / 1e3) / 1e9


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - optional dependency, any import failure means "absent"
        return None
    return str(getattr(mod, "__version__", "unknown"))


def stream_bandwidth_gbs(num_bytes: int = 256 << 20, repeats: int = 3) -> float:
    """Best-of-``repeats`` read bandwidth, GB/s, of a (multi-threaded) sum over ``num_bytes``.

    NOTE: a phase probe.  On the shared 2-core VM this moved between 29 and 54 GB/s from
    one minute to the next (2026-12-03), and with it every IVF scan -- both systems'
    sustained rates moved by up to 1.7x between runs of the same command; a result file
    that records it can be read against its phase.
    """
    import torch

    x = torch.ones(max(num_bytes // 4, 1), dtype=torch.float32)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        float(x.sum())
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / max(best, 1e-9) / 1e9


def machine_info() -> dict[str, Any]:
    """Host, CPU, memory, library versions and the date -- enough to compare result files."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_bytes": mem,
        "versions": {m: _version(m) for m in ("torch", "numpy", "numba", "faiss")},
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        "numba_threading_layer": None,
    }
    try:
        import numba

        info["numba_threading_layer"] = numba.threading_layer()
    except (ImportError, ValueError):  # ValueError: no parallel region has run yet
        pass
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        info["cuda"] = None
    return info
