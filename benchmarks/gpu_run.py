#!/usr/bin/env python
"""Everything Trinity measures on a lent GPU, in one call: run it once, fetch the folder.

Sections run in order, each in its own process under its own time limit (a section that
fails or runs out of time is recorded and the next one starts):

1. ``tests``   -- the kernel tests on the device, compiled (``TRINITY_TRITON_COMPILED=1``);
2. ``kernels`` -- ``benchmarks/gpu_kernels.py``: copy bandwidth, correctness, IVF scan,
                  brute force, the engine's mix, per-call overhead;
3. ``engine``  -- ``trinity bench engine --device cuda``: the engine end to end against
                  static batching of the torch baseline, with GPU busy time and the engine's
                  host phases per run, at a 1 ms iteration target;
4. ``engine4``, ``sweep`` -- (only with time left) the engine at a 4 ms target, and the
                  kernels' tuning knobs.

Writes ``gpu-run.log`` (every section's output), ``gpu-run.json`` (per section: exit
code, seconds, timed out) and each section's JSON into ``--out`` (``$OUT`` on the device
machine).  ``--dry-run-cpu`` runs the same sections on CPU with tiny sizes (Triton
interpreter): it proves the script, not the GPU.  See ``docs/gpu.md``.

    python benchmarks/gpu_run.py --out "$OUT"
    python benchmarks/gpu_run.py --only engine --out "$OUT"      # rerun one section
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def sections(out: Path, dry: bool) -> list[tuple[str, list[str], dict[str, str], int]]:
    """``(name, argv, extra env, time limit in s)`` of every section."""
    xdist = [] if dry or importlib.util.find_spec("xdist") is None else ["-n", "8"]
    tests = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *xdist, "tests/index/kernels"]
    kernels = [PY, "benchmarks/gpu_kernels.py", "--sections", "copy,check,ivf,flat,mixed,overhead",
               "--out", str(out / "gpu-kernels.json")] + (["--dry-run-cpu"] if dry else [])
    def engine(target_ms: str) -> list[str]:
        argv = [PY, "-m", "trinity.cli", "bench", "engine", "--data", "synthetic", "--systems", "static,trinity",
                "--target-iteration-ms", target_ms, "--no-plot", "--out", str(out / f"engine-gpu-{target_ms}ms.json")]
        if dry:
            return argv + ["--device", "cpu", "--peer", "torch", "-n", "20000", "--nlist", "128", "--num-queries",
                           "200", "--rates", "300", "--duration", "0.5"]
        return argv + ["--device", "cuda", "--dtype", "float16", "-n", "1000000", "--nlist", "4096", "--num-queries",
                       "2000", "--rates", "500,1000,2000,4000", "--duration", "1.5", "--drain-cap", "3"]

    sweep = [PY, "benchmarks/gpu_kernels.py", "--sections", "", "--sweep", "--sweep-batches", "256,1024",
             "--sweep-configs", "10", "--out", str(out / "gpu-sweep.json")] + (["--dry-run-cpu"] if dry else [])
    compiled = {} if dry else {"TRINITY_TRITON_COMPILED": "1"}
    # NOTE: a fresh machine compiles numba's CPU kernels (~30-60 s, cached on disk by the
    # first section that needs them) and Triton's per shape: the engine needs ~2.5 min.
    return [("tests", tests, compiled, 150), ("kernels", kernels, {}, 200), ("engine", engine("1"), {}, 240),
            ("engine4", engine("4"), {}, 120), ("sweep", sweep, {}, 90)]


#: Sections that run only with time to spare (and when named in --only).
OPTIONAL = ("engine4", "sweep")


def run(name: str, argv: list[str], env: dict[str, str], limit: float, log) -> dict:
    log.write(f"\n===== {name}: {' '.join(argv)} (limit {limit:.0f} s)\n")
    log.flush()
    t = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc, timed_out = proc.wait(timeout=limit), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc, timed_out = proc.wait(), True
    seconds = time.time() - t
    log.write(f"===== {name}: rc {rc}{' (timed out)' if timed_out else ''} in {seconds:.0f} s\n")
    log.flush()
    return {"rc": rc, "seconds": round(seconds, 1), "timed_out": timed_out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-run")))
    ap.add_argument("--only", default="", help="comma list of sections to run (default: all)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run; a section that "
                    "would not fit in what is left is skipped (the sweep runs only with time to spare)")
    ap.add_argument("--dry-run-cpu", action="store_true", help="tiny sizes on CPU (Triton interpreter)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    start, report = time.time(), {"sections": {}}
    try:
        import torch

        report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        report["torch"] = torch.__version__
    except Exception as e:  # noqa: BLE001
        report["device"] = f"unknown ({e})"
    with open(args.out / "gpu-run.log", "a") as log:
        log.write(f"device: {report['device']}\n")
        log.flush()
        if not args.dry_run_cpu:
            subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total",
                            "--format=csv"], stdout=log, stderr=subprocess.STDOUT, timeout=30, check=False)
        for name, argv, env, limit in sections(args.out, args.dry_run_cpu):
            if only and name not in only:
                continue
            left = args.budget - (time.time() - start)
            if name in OPTIONAL and not only and left < limit + 30:
                report["sections"][name] = {"skipped": f"{left:.0f} s left"}
                continue
            report["sections"][name] = run(name, argv, env, max(10.0, min(limit, left)), log)
    report["seconds"] = round(time.time() - start, 1)
    (args.out / "gpu-run.json").write_text(json.dumps(report, indent=1) + "\n")
    print((args.out / "gpu-run.log").read_text()[-7000:])
    print(json.dumps(report, indent=1))
    return 0 if all(s.get("rc", 0) == 0 for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
