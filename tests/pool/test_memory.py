"""Process-memory hygiene of the pool server (``trinity.pool.memory``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch


def _run(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env}, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a CUDA device the pool keeps triton")
def test_cpu_server_keeps_triton_out_and_torch_dynamo_still_imports():
    # NOTE: a subprocess: blocking an import is process-wide and must not leak into the test run.
    out = _run("""
        from trinity.pool.memory import skip_unused_triton
        print(skip_unused_triton())
        import torch._dynamo  # what the embedding model's loader imports; must take its no-triton path
        from torch.utils._triton import has_triton_package
        print(has_triton_package())
        try:
            import triton
        except ImportError:
            print("blocked")
    """, TRITON_INTERPRET="0")
    assert out.splitlines() == ["True", "False", "blocked"]


def test_triton_is_kept_where_it_may_run():
    assert _run("""
        from trinity.pool.memory import skip_unused_triton
        print(skip_unused_triton())
        import triton
        print(triton.__name__)
    """, TRITON_INTERPRET="1").splitlines() == ["False", "triton"]
