"""Durable file writes: the one place that knows the temp + fsync + rename + fsync-directory dance.

A file written this way is either absent or complete after a crash at any instant: the data reaches
the disk before the rename makes it visible, and the directory is synced so the rename itself
survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, pieces: Iterable[bytes], *, mode: int = 0o600) -> int:
    """Write `pieces` to `path` so that readers see either the old file or the whole new one.

    The temp file lives in the same directory, so the rename stays within one file system.
    Returns the number of bytes written.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    tmp = Path(tmp_name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
                written += len(piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return written


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a crashed writer left behind; returns how many were removed."""
    removed = 0
    for tmp in directory.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed
