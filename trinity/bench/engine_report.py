"""Per-run rows, the run summary and plots for ``trinity bench engine``.

:func:`summarize_run` turns one replayed stream into a table/JSON row (throughput,
per-class p50/p99 latency and miss rates, agreement with faiss, system counters);
:func:`summarize` and :func:`_summary_lines` compute the benchmark's two targets (Trinity's
decode p99 at static's crossing rate, and the sustained-rate ratio) from those rows; and
:func:`plot_results` / :func:`plot_from_json` draw p99 and miss rate against the offered
rate.  Nothing here runs a system: the run loop lives in
:mod:`trinity.bench.engine_bench`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trinity.bench.engine_config import EngineBenchConfig
from trinity.bench.report import verdict
from trinity.bench.workload import RequestClass, RunRecord, Status

_INF_MS = 1e12  # stands in for "never answered" inside percentiles


def _pct(values: np.ndarray, p: float) -> float:
    if values.size == 0:
        return math.nan
    v = float(np.percentile(values, p))
    return math.inf if v >= _INF_MS / 10 else v


def summarize_run(rec: RunRecord, system: str, refs: dict[str, np.ndarray] | None = None,
                  before: dict[str, float] | None = None, after: dict[str, float] | None = None,
                  miss_target: float = 0.01) -> dict[str, Any]:
    """One table/JSON row: throughput, per-class p50/p99 and miss rates, quality."""
    sched = rec.schedule
    n = len(sched)
    lat = rec.latency_ms()
    status = rec.status
    answered = status != Status.UNFINISHED
    # NOTE: percentiles are over answers (complete or partial); a rejected, failed or
    # unanswered request has no answer and counts as infinitely late.
    has_answer = (status == Status.COMPLETE) | (status == Status.PARTIAL)
    lat_all = np.where(has_answer & np.isfinite(lat), lat, _INF_MS)
    deadline = np.array([c.deadline_ms for c in sched.classes])[sched.cls]
    complete = status == Status.COMPLETE
    late = complete & (lat_all > deadline)
    miss = ~complete | late
    t_end = np.nanmax(rec.t_done[answered]) if answered.any() else rec.t0
    span = max(t_end - rec.t0, sched.duration_s)
    row: dict[str, Any] = {
        "rate": sched.rate, "system": system, "requests": n,
        "offered_rps": n / sched.duration_s,
        "throughput_rps": complete.sum() / span,
        "goodput_rps": (complete & ~late).sum() / sched.duration_s,
        "miss_pct": 100.0 * miss.mean() if n else math.nan,
        "late_pct": 100.0 * late.mean() if n else math.nan,
        "partial_pct": 100.0 * (status == Status.PARTIAL).mean() if n else math.nan,
        "rejected_pct": 100.0 * (status == Status.REJECTED).mean() if n else math.nan,
        "unfinished_pct": 100.0 * (status == Status.UNFINISHED).mean() if n else math.nan,
        "error_pct": 100.0 * (status == Status.ERROR).mean() if n else math.nan,
        "submit_lag_p99_ms": _pct(rec.submit_lag_ms()[np.isfinite(rec.t_submit)], 99),
        "drain_s": max(0.0, t_end - (rec.t0 + sched.duration_s)),
    }
    for ci, c in enumerate(sched.classes):
        m = sched.cls == ci
        row[f"{c.name}_n"] = int(m.sum())
        row[f"{c.name}_p50_ms"] = _pct(lat_all[m], 50)
        row[f"{c.name}_p99_ms"] = _pct(lat_all[m], 99)  # NaN for a class without requests
        row[f"{c.name}_miss_pct"] = 100.0 * miss[m].mean() if m.any() else math.nan
    _set_verdict_flags(row, sched.classes, miss_target)
    if refs is not None:
        agree, recall_partial = [], []
        for i in np.nonzero((status == Status.COMPLETE) | (status == Status.PARTIAL))[0]:
            ids = rec.results[i]
            if ids is None:
                continue
            c = sched.classes[sched.cls[i]]
            ref = refs[c.name][sched.query[i]]
            ref_set = set(ref[ref >= 0].tolist())
            got = set(np.asarray(ids)[np.asarray(ids) >= 0].tolist())
            frac = len(got & ref_set) / max(len(ref_set), 1)
            (agree if status[i] == Status.COMPLETE else recall_partial).append(frac)
        row["agree_with_peer"] = float(np.mean(agree)) if agree else math.nan
        row["partial_recall"] = float(np.mean(recall_partial)) if recall_partial else math.nan
    if before is not None and after is not None:
        d = {k: after[k] - before.get(k, 0.0) for k in after}
        row.update((f"max_{k.removeprefix('longest_')}", v) for k, v in after.items() if k.startswith("longest_"))
        if "batches" in d:
            row["mean_batch"] = d["batched_requests"] / d["batches"] if d["batches"] else math.nan
            row["busy_pct"] = 100.0 * d["busy_s"] / span
        if "iterations" in d:
            row["iterations"] = int(d["iterations"])
            row["mean_iter_ms"] = 1e3 * d["runner_busy_s"] / d["iterations"] if d["iterations"] else math.nan
            row["busy_pct"] = 100.0 * d["runner_busy_s"] / span
            row["vectors_per_iter"] = d["vectors_scanned"] / d["iterations"] if d["iterations"] else math.nan
            # scans per distinct vector read: how many riders one read of a list served
            row["scans_per_read"] = d["vectors_scanned"] / d["vectors_read"] if d.get("vectors_read") else math.nan
            row["preemptions"] = int(d["preemptions"])
            row["budget_vectors"] = int(after["budget_vectors"])
            row["iteration_est_ms_at_start"] = before["iteration_est_ms"]
            if d.get("step_s") and d["iterations"]:
                per_iter = 1e3 / d["iterations"]
                row.update({key[:-2] + "_ms": d[key] * per_iter for key in d if key.endswith("_s") and
                            key not in ("busy_s", "runner_busy_s")}, runner_ms=d["runner_busy_s"] * per_iter)
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}


def _set_verdict_flags(row: dict[str, Any], classes: Sequence[RequestClass], miss_target: float) -> None:
    """``p99_within_deadlines`` (every class's p99 within its deadline; a NaN p99 -- no
    requests -- is not) and ``sustained`` (that, and misses within ``miss_target``)."""
    within = all(row[f"{c.name}_p99_ms"] <= c.deadline_ms for c in classes)
    row["p99_within_deadlines"] = bool(within)
    row["sustained"] = bool(within and row["miss_pct"] <= 100.0 * miss_target)


def merge_repeats(rows: Sequence[dict[str, Any]], cfg: EngineBenchConfig) -> list[dict[str, Any]]:
    """One row per (rate, system): the median of each number over the repeated runs.

    NOTE: on a noisy shared VM one run near a system's cliff can land on either side of
    it; the median of interleaved repeats is what the verdicts use.  The deadline and
    sustained flags are recomputed from the median p99s and miss rate, and each row keeps
    the spread of the decode p99 (``<decode>_p99_ms_min`` / ``_max``).
    """
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["rate"], r["system"]), []).append(r)
    decode = next((c for c in cfg.classes if c.stage == "decode"), cfg.classes[0])
    out = []
    for (rate, system), runs in groups.items():
        row: dict[str, Any] = {"rate": rate, "system": system, "repeats": len(runs)}
        for key, value in runs[0].items():
            if key in row or key == "repeat":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                vals = [float(r[key]) for r in runs if isinstance(r.get(key), (int, float))]
                row[key] = float((max if key.startswith("max_") else np.median)(vals)) if vals else math.nan
        key = f"{decode.name}_p99_ms"
        row[f"{key}_min"], row[f"{key}_max"] = min(r[key] for r in runs), max(r[key] for r in runs)
        _set_verdict_flags(row, cfg.classes, cfg.miss_target)
        out.append(row)
    return out


# --------------------------------------------------------------------------- summary
def summarize(rows: Sequence[dict[str, Any]], cfg: EngineBenchConfig) -> dict[str, Any]:
    """The issue's two targets, computed from the rows."""
    decode = next((c for c in cfg.classes if c.stage == "decode"), cfg.classes[0])
    by = {(r["system"], r["rate"]): r for r in rows}
    rates = sorted({r["rate"] for r in rows})
    out: dict[str, Any] = {"decode_class": decode.name, "decode_deadline_ms": decode.deadline_ms}
    key = f"{decode.name}_p99_ms"
    crossing = next((r for r in rates if ("static", r) in by and by[("static", r)][key] > decode.deadline_ms), None)
    out["static_crossing_rate"] = crossing
    # NOTE: static already past its deadline at the lowest tested rate: it crossed somewhere
    # below the grid, and the ratio at a rate far up its cliff says little (a false PASS).
    out["crossing_below_grid"] = crossing is not None and crossing == min(
        (r for r in rates if ("static", r) in by), default=None)
    if crossing is not None:
        s = by[("static", crossing)]
        out["static_decode_p99_ms_at_crossing"] = s[key]
        for name in ("trinity", "trinity-fifo"):
            t = by.get((name, crossing))
            if t is None:
                continue
            if math.isinf(s[key]):  # static never answered 1% of them
                ratio = 0.0 if math.isfinite(t[key]) else math.nan
            else:
                ratio = t[key] / s[key] if s[key] > 0 else math.nan
            out[name] = {"decode_p99_ms_at_crossing": t[key], "decode_p99_ratio": ratio,
                         "miss_pct_at_crossing": t["miss_pct"], "decode_miss_pct_at_crossing": t[f"{decode.name}_miss_pct"],
                         "meets_latency_target": None if out["crossing_below_grid"] else
                         bool(ratio <= 1 / 3 and t["miss_pct"] <= 100 * cfg.miss_target)}
    out["interpolated"] = _interpolated_crossing(by, rates, key, decode.deadline_ms)
    sustained = {}
    for system in cfg.systems:
        ok = [r for r in rates if (system, r) in by and by[(system, r)]["sustained"]]
        sustained[system] = max(ok) if ok else 0.0
    out["sustained_rate"] = sustained
    s0 = sustained.get("static", 0.0)
    for name in ("trinity", "trinity-fifo"):
        if name in sustained:
            t = out.setdefault(name, {})
            if s0:
                t["sustained_ratio_vs_static"] = ratio = sustained[name] / s0
                t["meets_throughput_target"] = bool(ratio >= 1.5)
            else:
                # NOTE: static sustained none of the tested rates, so its sustained rate is
                # below the lowest: the ratio is only bounded from below, and that bound
                # decides the target only when it reaches it.
                bound = sustained[name] / min(rates)
                t["sustained_ratio_vs_static"] = None
                t["sustained_ratio_lower_bound"] = bound
                t["meets_throughput_target"] = True if bound >= 1.5 else None
    out["rates_capped"] = bool(sustained and max(sustained.values()) >= max(rates))
    mine = sorted((r for r in rows if r["system"] == "trinity"), key=lambda r: r["rate"])
    if mine:
        out.setdefault("trinity", {}).update(_stability(mine, sustained.get("trinity", 0.0), decode, cfg))
    return out


def _stability(rows: list[dict[str, Any]], sustained: float, decode: RequestClass,
               cfg: EngineBenchConfig) -> dict[str, Any]:
    """Overload falls on prefill/background work (decode at 2x the sustained rate), no
    stalls (the longest iteration), no collapse (misses non-decreasing in the rate)."""
    out: dict[str, Any] = {"miss_pct_by_rate": {r["rate"]: r["miss_pct"] for r in rows}}
    misses = [r["miss_pct"] for r in rows]
    out["miss_non_decreasing"] = all(b >= a for a, b in zip(misses, misses[1:]))
    steps = [r["max_step_ms"] for r in rows if math.isfinite(r.get("max_step_ms", math.nan))]
    if steps:
        out["max_step_ms"] = max(steps)
        out["max_step_over_target"] = max(steps) / cfg.target_iteration_ms
    over = [r for r in rows if sustained and r["rate"] >= 2 * sustained]
    if over:
        r = over[0]
        out["overload"] = {"rate": r["rate"], "times_sustained": r["rate"] / sustained,
                           "decode_p99_ms": r[f"{decode.name}_p99_ms"], "decode_miss_pct": r[f"{decode.name}_miss_pct"],
                           "miss_pct": r["miss_pct"]}
    return out


def target_verdicts(summary: dict[str, Any], cfg: EngineBenchConfig) -> list[dict[str, Any]]:
    """The issue's targets as PASS / FAIL / N/A verdicts (:func:`trinity.bench.report.verdict`).

    NOTE: what the grid cannot decide is N/A, not a PASS: a crossing at the lowest tested
    rate, or a throughput ratio only bounded from below and short of the target there.
    """
    t = summary.get("trinity", {})
    below = summary["crossing_below_grid"]
    sustained = t.get("sustained_ratio_vs_static")
    if sustained is None and t.get("meets_throughput_target"):
        sustained = t["sustained_ratio_lower_bound"]  # a lower bound that already meets the target
    return [
        verdict("Trinity/static decode p99 at static's crossing rate", None if below else t.get("decode_p99_ratio"),
                "<=", round(1 / 3, 3)),
        verdict("Trinity miss % at static's crossing rate", None if below else t.get("miss_pct_at_crossing"),
                "<=", 100 * cfg.miss_target),
        verdict("Trinity/static sustained rate", sustained, ">=", 1.5),
        verdict("Trinity decode p99 (ms) at 2x its sustained rate", t.get("overload", {}).get("decode_p99_ms"), "<=",
                next((c.deadline_ms for c in cfg.classes if c.stage == "decode"), cfg.classes[0].deadline_ms)),
        verdict("Trinity decode miss % at 2x its sustained rate", t.get("overload", {}).get("decode_miss_pct"), "<=",
                100 * cfg.miss_target),
        verdict("Trinity longest iteration / target iteration", t.get("max_step_over_target"), "<=", 3.0),
        verdict("Trinity misses non-decreasing in the rate (1 = yes)", float(t["miss_non_decreasing"])
                if "miss_non_decreasing" in t else None, ">=", 1.0),
    ]


def _interpolated_crossing(by: dict, rates: list[float], key: str, deadline_ms: float) -> dict[str, float] | None:
    """Where static's decode p99 reaches the deadline, linearly between the two tested
    rates around it, and Trinity's decode p99 interpolated at that rate.

    NOTE: the first tested rate past the crossing can sit far up static's cliff (its p99
    there varied 22-54 ms between runs of the same grid), which makes the ratio there a
    matter of grid and luck; this reading asks for the ratio where static *hits* its
    deadline.
    """
    pts = [(r, by[("static", r)][key], by[("trinity", r)][key]) for r in rates
           if ("static", r) in by and ("trinity", r) in by]
    for (r0, s0, t0), (r1, s1, t1) in zip(pts, pts[1:]):
        if s0 <= deadline_ms < s1 and math.isfinite(s1) and math.isfinite(t0) and math.isfinite(t1):
            w = (deadline_ms - s0) / (s1 - s0)
            trinity = t0 + w * (t1 - t0)
            return {"rate": r0 + w * (r1 - r0), "trinity_decode_p99_ms": trinity, "ratio": trinity / deadline_ms}
    return None


def _met(flag: bool | None) -> str:
    return {True: "MET", False: "NOT MET", None: "INCONCLUSIVE"}[flag]


def _summary_lines(summary: dict[str, Any], cfg: EngineBenchConfig) -> list[str]:
    lines = []
    dn, dd = summary["decode_class"], summary["decode_deadline_ms"]
    cr = summary["static_crossing_rate"]
    if cr is None:
        lines.append(f"(1) static's {dn} p99 never exceeded {dd:g} ms at the tested rates: no crossing rate; "
                     "raise --rates to find it.")
    else:
        t = summary.get("trinity", {})
        line = f"(1) static's {dn} p99 first exceeds {dd:g} ms at {cr:g} req/s ({summary['static_decode_p99_ms_at_crossing']:.1f} ms)"
        if "decode_p99_ms_at_crossing" in t:
            line += (f"; Trinity's {dn} p99 there: {t['decode_p99_ms_at_crossing']:.1f} ms = "
                     f"{t['decode_p99_ratio']:.2f}x static (target <= 0.33), misses {t['miss_pct_at_crossing']:.2f}% "
                     f"(target <= {100 * cfg.miss_target:g}%) -> {_met(t['meets_latency_target'])}")
        if summary["crossing_below_grid"]:
            line += " (the lowest tested rate: static crossed below the grid; lower --rates to find it)"
        lines.append(line)
    ip = summary.get("interpolated")
    if ip is not None:
        lines.append(f"(1b) interpolated: static's {dn} p99 reaches {dd:g} ms near {ip['rate']:.0f} req/s; Trinity's "
                     f"{dn} p99 there ~{ip['trinity_decode_p99_ms']:.1f} ms = {ip['ratio']:.2f}x the deadline")
    sr = summary["sustained_rate"]
    line = "(2) sustained rate (every class p99 <= deadline and misses <= " f"{100 * cfg.miss_target:g}%): " + ", ".join(
        f"{k} {v:g}" for k, v in sr.items())
    t = summary.get("trinity", {})
    if t.get("sustained_ratio_vs_static") is not None:
        line += (f"; trinity/static = {t['sustained_ratio_vs_static']:.2f}x (target >= 1.5) -> "
                 f"{_met(t['meets_throughput_target'])}")
    elif "sustained_ratio_lower_bound" in t:
        line += (f"; static sustained no tested rate, so trinity/static > {t['sustained_ratio_lower_bound']:.2f}x "
                 f"(target >= 1.5) -> {_met(t['meets_throughput_target'])}; lower --rates to measure it")
    if summary.get("rates_capped"):
        line += " (a system passed the highest tested rate: its sustained rate is a lower bound)"
    lines.append(line)
    o = t.get("overload")
    lines.append(f"(3) at {o['rate']:g} req/s ({o['times_sustained']:.1f}x Trinity's sustained rate) Trinity's {dn} p99 "
                 f"is {o['decode_p99_ms']:.1f} ms, {dn} misses {o['decode_miss_pct']:.2f}%, all misses "
                 f"{o['miss_pct']:.2f}%" if o else "(3) no tested rate reaches 2x Trinity's sustained rate")
    if "max_step_ms" in t:
        lines.append(f"(4) Trinity's longest iteration: {t['max_step_ms']:.1f} ms = {t['max_step_over_target']:.1f}x the "
                     f"target (<= 3x); misses by rate: " + ", ".join(
                         f"{r:g}: {m:.2f}%" for r, m in t["miss_pct_by_rate"].items())
                     + (" (non-decreasing)" if t["miss_non_decreasing"] else " (NOT non-decreasing)"))
    return lines


# --------------------------------------------------------------------------- plot
def plot_results(rows: Sequence[dict[str, Any]], cfg: EngineBenchConfig, path: Path, title: str = "",
                 crossing: float | None = None) -> Path:
    """p99 per class vs offered rate per system (deadline dashed, static's crossing rate
    dotted) and the miss rate vs rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    classes = list(cfg.classes)
    panels = len(classes) + 1
    cols = 2
    nrows = math.ceil(panels / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    colors = {"static": "tab:red", "trinity-fifo": "tab:orange", "trinity": "tab:blue"}
    systems = [s for s in cfg.systems if any(r["system"] == s for r in rows)]
    for ax, c in zip(axes.flat, classes):
        key = f"{c.name}_p99_ms"
        finite = [r[key] for r in rows if math.isfinite(r[key])]
        ceiling = 2 * max(finite + [c.deadline_ms])  # where "no answer for >= 1%" is drawn
        marked = False
        for s in systems:
            rs = sorted((r for r in rows if r["system"] == s), key=lambda r: r["rate"])
            xs = [r["rate"] for r in rs]
            ax.plot(xs, [r[key] if math.isfinite(r[key]) else math.nan for r in rs], "o-", color=colors.get(s), label=s)
            inf_x = [r["rate"] for r in rs if not math.isfinite(r[key])]
            if inf_x:
                ax.plot(inf_x, [ceiling] * len(inf_x), "^", color=colors.get(s), ms=9,
                        label=None if marked else "p99 = inf (>= 1% without an answer)")
                marked = True
        ax.axhline(c.deadline_ms, color="k", ls="--", lw=1, label=f"deadline {c.deadline_ms:g} ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        if crossing is not None:
            ax.axvline(crossing, color="grey", ls=":", lw=1)
        ax.set_title(f"{c.name} ({c.stage}, k={c.k}, nprobe={c.nprobe}): p99")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("p99 latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[len(classes)]
    for s in systems:
        rs = sorted((r for r in rows if r["system"] == s), key=lambda r: r["rate"])
        ax.plot([r["rate"] for r in rs], [r["miss_pct"] for r in rs], "o-", color=colors.get(s), label=s)
    ax.axhline(100 * cfg.miss_target, color="k", ls="--", lw=1, label=f"{100 * cfg.miss_target:g}% target")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(0, 100)
    ax.set_title("deadline misses (late, partial, rejected or unanswered)")
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("miss rate (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    for extra in list(axes.flat)[panels:]:
        extra.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_from_json(path: str | Path, png: str | Path | None = None) -> Path:
    """Redraw the PNG of a saved result file (e.g. after changing the plot)."""
    payload = json.loads(Path(path).read_text())
    p = payload["params"]
    cfg = EngineBenchConfig(classes=tuple(RequestClass(**c) for c in p["classes"]), systems=tuple(p["systems"]),
                            rates=tuple(p["rates"]), miss_target=p["miss_target"])
    d = payload["data"]
    title = (f"trinity bench engine: {d['num_vectors']:,} vectors, IVF{p['nlist']}, "
             f"{payload['machine']['cpu_usable']} cores")
    return plot_results(payload["runs"], cfg, Path(png) if png else Path(path).with_suffix(".png"), title=title,
                        crossing=payload["summary"].get("static_crossing_rate"))
