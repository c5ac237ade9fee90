"""A real, small file system for full-disk checks: a size-capped tmpfs (Linux, root only)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


class MountError(OSError):
    """The tmpfs could not be mounted (not root, no ``mount``, a container without the capability)."""


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a ``size_bytes`` tmpfs at ``path`` for the duration; raise :class:`MountError` if impossible."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        raise MountError("mounting a tmpfs needs root and the mount command")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise MountError(r.stderr.strip() or f"mount exited with {r.returncode}")
    try:
        yield path
    finally:
        # NOTE: lazy: a child process that is still dying may hold a file open.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, chunk_bytes: int = 64 << 10) -> list[Path]:
    """Write filler files into ``directory`` until the file system is full; delete them to free space."""
    files, chunk = [], b"\0" * chunk_bytes
    while True:
        path = directory / f"filler-{len(files):05d}"
        files.append(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            return files
        finally:
            os.close(fd)


def free(files: list[Path], num_bytes: int | None = None) -> None:
    """Delete filler files: all of them, or the last ones until about ``num_bytes`` are free."""
    freed = 0
    while files and (num_bytes is None or freed < num_bytes):
        path = files.pop()
        freed += path.stat().st_size
        path.unlink()
