"""Compile the Triton kernels ahead of time for a CUDA architecture -- no GPU needed.

This runs the real compiler (Triton frontend, TTIR/TTGIR/LLVM lowering, ``ptxas``) on a
machine without a GPU, which the interpreter does not exercise: it catches compile-only
errors and reports register use and shared memory.  It needs triton's NVIDIA backend
(bundled with the standard triton wheel) and must run in a process where
``TRITON_INTERPRET`` is not set (the kernels are decorated when first imported)::

    python -m trinity.index.kernels.compile_check            # default shapes, sm_90
    python -m trinity.index.kernels.compile_check --all      # the shape/dtype matrix
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

_SCAN_ARGS = {"Q": None, "stride_q": "i64", "V": None, "AUX": "*fp32", "SID": "*i64", "BT": "*i32",
              "stride_bt": "i64", "LLEN": "*i64", "META": "*i64", "TOP_S": "*fp32", "TOP_I": "*i64",
              "TOP_K": "*i32", "stride_top": "i64", "CK": "*i32", "CI": "*i64", "SEG_BLOCKS": "i64"}


def _lg(n: int) -> int:
    return n.bit_length() - 1


def _resources(cubin: bytes) -> dict:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        txt = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
    finally:
        os.unlink(f.name)
    out = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"{key}:(\d+)", txt)
        if m:
            out[key.lower()] = int(m.group(1))
    return out


def compile_scan(*, arch: int = 90, dtype: str = "fp16", dim: int = 768, block_size: int = 32,
                 qm: int = 16, tile_n: int = 64, block_d: int = 64, kp: int = 16, fast_m: int = 4,
                 has_aux: bool = False, use_thresh: bool = True, num_warps: int = 4, num_stages: int = 2) -> dict:
    """Compile ``_scan_kernel`` for ``sm_<arch>``; returns resource use and compile time."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trinity.index.kernels import triton_scan as ts

    sig = {k: (f"*{dtype}" if v is None else v) for k, v in _SCAN_ARGS.items()}
    cons = dict(D=dim, BS=block_size, QM=qm, TN=tile_n, BD=block_d, KP=kp, LOG_QM=_lg(qm),
                LOG_TN=_lg(tile_n), LOG_KP=_lg(kp), FAST_M=fast_m, HAS_AUX=has_aux, IEEE=dtype == "fp32",
                UPCAST=False, USE_THRESH=use_thresh)
    sig.update({k: "constexpr" for k in cons})
    names = list(sig)
    src = ASTSource(ts._scan_kernel, sig, constexprs={(names.index(k),): v for k, v in cons.items()})
    t0 = time.perf_counter()
    options = {"num_warps": num_warps, "num_stages": num_stages}
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return {"kernel": "scan", "arch": arch, "compile_s": time.perf_counter() - t0, "shared_bytes": k.metadata.shared,
            **_resources(k.asm["cubin"])}


def compile_merge(*, arch: int = 90, kp: int = 16, num_warps: int = 1) -> dict:
    """Compile ``_merge_kernel`` for ``sm_<arch>``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trinity.index.kernels import triton_scan as ts

    sig = {"TOP_S": "*fp32", "TOP_I": "*i64", "TOP_K": "*i32", "stride_top": "i64", "max_k": "i32", "META": "*i64",
           "CK": "*i32", "CI": "*i64", "KP": "constexpr", "LOG_KP": "constexpr"}
    src = ASTSource(ts._merge_kernel, sig, constexprs={(8,): kp, (9,): _lg(kp)})
    t0 = time.perf_counter()
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    return {"kernel": "merge", "arch": arch, "kp": kp, "compile_s": time.perf_counter() - t0,
            **_resources(k.asm["cubin"])}


MATRIX = [
    {}, {"dtype": "bf16"}, {"dtype": "fp32"}, {"has_aux": True}, {"fast_m": 0}, {"use_thresh": False},
    {"kp": 32, "tile_n": 32}, {"kp": 64, "tile_n": 64}, {"kp": 128, "tile_n": 128, "num_warps": 8},
    {"kp": 256, "tile_n": 256, "num_warps": 8}, {"qm": 32}, {"qm": 64, "num_warps": 8},
    {"qm": 64, "tile_n": 128, "num_warps": 8}, {"qm": 128, "tile_n": 128, "num_warps": 8},
    {"dim": 100, "block_d": 32, "block_size": 7}, {"num_stages": 3}, {"arch": 80},
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="compile the whole shape/dtype matrix")
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (the interpreter does not compile)", file=sys.stderr)
        return 2
    failures = 0
    for case in (MATRIX if args.all else [{}]):
        case = {"arch": args.arch, **case}
        try:
            print("scan", case, compile_scan(**case), flush=True)
        except Exception as e:  # noqa: BLE001 - report every case
            failures += 1
            print("scan", case, "FAILED", f"{type(e).__name__}: {e}", flush=True)
    for kp in ((16, 32, 64, 128, 256) if args.all else (16,)):
        try:
            print("merge", compile_merge(arch=args.arch, kp=kp), flush=True)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print("merge", kp, "FAILED", f"{type(e).__name__}: {e}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
