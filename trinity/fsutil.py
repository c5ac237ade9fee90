"""Durable file-system primitives shared by index snapshots, the WAL and the catalog.

Fault injection (tests and ``trinity bench faults``): with ``TRINITY_FAULT_FSYNC`` set to
``eio:<substring>`` (or ``enospc:<substring>``) every fsync made here of a path that
contains ``<substring>`` fails with that errno instead.  ``TRINITY_FAULT_FSYNC=@<file>``
reads the same spec from ``<file>`` at each fsync (missing or empty: no fault), so a
running server's fault can be switched on and off.  Unset, it costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

FAULT_FSYNC_ENV = "TRINITY_FAULT_FSYNC"
_FAULTS = {"eio": errno.EIO, "enospc": errno.ENOSPC}


def is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def _injected_fault(path: str | os.PathLike) -> None:
    spec = os.environ.get(FAULT_FSYNC_ENV)
    if not spec:
        return
    if spec.startswith("@"):
        try:
            spec = Path(spec[1:]).read_text().strip()
        except OSError:
            return
    kind, _, where = spec.partition(":")
    if kind in _FAULTS and where in str(path):
        code = _FAULTS[kind]
        raise OSError(code, f"{os.strerror(code)} (injected by {FAULT_FSYNC_ENV})", str(path))


def fdatasync(fd: int, path: str | os.PathLike) -> None:
    """``os.fdatasync`` of an open file (``path`` names it for fault injection)."""
    _injected_fault(path)
    os.fdatasync(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage."""
    with open(path, "rb") as f:
        _injected_fault(path)
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a create, rename or delete inside it) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _injected_fault(path)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file; on an
    error nothing is left behind (no partial temporary file holding disk space)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            _injected_fault(path)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
