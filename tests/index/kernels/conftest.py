"""Kernel tests run under the Triton interpreter on CPU tensors (CI has no GPU).

``TRITON_INTERPRET=1`` must be set before any kernel module is imported (``triton.jit``
reads it when a kernel is decorated), so it is set here, at collection.  With
``TRINITY_TRITON_COMPILED=1`` on a CUDA machine the same tests run the compiled kernels
on the GPU instead.  Tests that need triton skip cleanly when it is not importable.
"""

from __future__ import annotations

import os

import pytest
import torch

COMPILED = os.environ.get("TRINITY_TRITON_COMPILED") == "1"
if COMPILED:
    if not torch.cuda.is_available():
        raise pytest.UsageError("TRINITY_TRITON_COMPILED=1 needs a CUDA device")
else:
    os.environ["TRITON_INTERPRET"] = "1"

#: Device the kernel tests put their tensors on.
DEVICE = torch.device("cuda", torch.cuda.current_device()) if COMPILED else torch.device("cpu")
