"""Atomic file writes: a killed run never leaves a half-written file behind.

The same holds on a full disk: the temporary file is removed, the previous version of the file
stays as it was, and the error is a :class:`~sissi_d2.utils.disk.DiskFullError` that names the
folder and what can be deleted there (``--resume`` continues once space is freed).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

__all__ = ["atomic_open", "atomic_write_json", "atomic_write_bytes", "fsync_directory"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """Open a temporary file next to ``path``; on success fsync and rename it over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
        try:
            f = os.fdopen(fd, mode, **kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        from .disk import DiskFullError, disk_full_message, is_disk_full

        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(disk_full_message(path), folder=directory) from e
        raise


def fsync_directory(directory: str) -> None:
    """Make the renames in ``directory`` durable (before deleting what they replace)."""
    with contextlib.suppress(OSError):  # not every file system opens folders for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: str, data, indent: int | None = 1) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
