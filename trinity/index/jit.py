"""Helpers for the index's numba kernels."""

from __future__ import annotations

import types

import numba


def serial_twin(kernel, **options):
    """``kernel``'s Python function compiled again without ``parallel``, under its own name:
    numba's disk cache keys machine code by name and signature, not by options, so a twin
    sharing the name would load (or overwrite) the parallel code."""
    f = kernel.py_func
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    return numba.njit(cache=True, **options)(twin)
