"""A node's durable state: content-addressed chunks, checkpoints, the consensus log, and export.

Layout of a data dir (DESIGN §7, default `./.moeswarm/<node>`): `key` (written by `identity`, not
here), `chunks/`, `checkpoints/`, `log/`, `metrics/`, all 0700, plus `lock`, which one node process
holds while it runs so that two daemons never write the same log.

Importing this package does not import torch: the consensus log and the chunk store serve
processes and commands that never touch tensors; `checkpoints` is imported on first use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Collection
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from moeswarm.store.chunks import CHUNK_BYTES_MAX_DEFAULT, ChunkStore, GcResult, chunk_id, validate_chunk_id
from moeswarm.store.errors import (
    CheckpointCorrupt,
    CheckpointMissing,
    ChunkCorrupt,
    ChunkMissing,
    ChunkTooLarge,
    InvalidChunkId,
    RecordTooLarge,
    StoreError,
)
from moeswarm.store.log import RECORD_BYTES_MAX_DEFAULT, ConsensusLog

if TYPE_CHECKING:
    from moeswarm.store.checkpoints import CheckpointStore

__all__ = [
    "CheckpointCorrupt",
    "CheckpointMissing",
    "ChunkCorrupt",
    "ChunkMissing",
    "ChunkStore",
    "ChunkTooLarge",
    "ConsensusLog",
    "DataDirLocked",
    "GcResult",
    "InvalidChunkId",
    "NodeStore",
    "RecordTooLarge",
    "StoreError",
    "chunk_id",
    "validate_chunk_id",
]

log = logging.getLogger(__name__)

DIR_MODE = 0o700
SUBDIRS = ("chunks", "checkpoints", "log", "metrics")
LOCK_FILE = "lock"


class DataDirLocked(StoreError):
    """Another live process holds this data dir."""


class NodeStore:
    """Everything a node keeps on disk, behind one object the daemon opens at start-up.

    Holding the store means holding the data dir's lock; `close()` (or the end of a `with` block,
    or the process dying, even by kill -9) releases it.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        chunk_bytes_max: int = CHUNK_BYTES_MAX_DEFAULT,
        record_bytes_max: int = RECORD_BYTES_MAX_DEFAULT,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._make_layout()
        self._lock_fd = self._acquire_lock()
        self._record_bytes_max = record_bytes_max
        self.chunks = ChunkStore(self.data_dir / "chunks", chunk_bytes_max=chunk_bytes_max)
        self.chunks.remove_stale_temps()
        self._checkpoints: CheckpointStore | None = None
        self._log: ConsensusLog | None = None

    @property
    def key_path(self) -> Path:
        """Where `identity` keeps the node's Ed25519 seed (this package never writes it)."""
        return self.data_dir / "key"

    @property
    def metrics_dir(self) -> Path:
        return self.data_dir / "metrics"

    @property
    def checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            from moeswarm.store.checkpoints import CheckpointStore

            self._checkpoints = CheckpointStore(self.data_dir / "checkpoints", self.chunks)
            self._checkpoints.remove_stale_temps()
        return self._checkpoints

    @property
    def log(self) -> ConsensusLog:
        """The consensus log, opened (and its torn tail repaired) on first use."""
        if self._log is None:
            self._log = ConsensusLog(self.data_dir / "log", record_bytes_max=self._record_bytes_max)
            recovery = self._log.recovery
            log.info(
                "consensus log %s: %d records in %d segments, %d torn bytes dropped",
                self._log.root, recovery.records, recovery.segments, recovery.dropped_bytes,
            )
        return self._log

    def collect_garbage(self, *, keep_checkpoints: int, pinned: Collection[str] = (),
                        margin_s: float | None = None) -> GcResult:
        """Keep the newest `keep_checkpoints` checkpoints and delete chunks nothing refers to.

        `pinned` are the ids still live outside checkpoints (delta blobs of rounds not yet
        committed or still being served); they are kept whatever the checkpoints say. With
        `margin_s`, a chunk stored later than `margin_s` before the oldest kept checkpoint is kept
        too: the delta blobs of the rounds after that checkpoint (a restart replays them from the
        log) are not named by any checkpoint, and a restarted node no longer knows their ids.
        """
        self.checkpoints.keep_last(keep_checkpoints)
        keep = self.checkpoints.referenced_chunks() | set(pinned)
        written_before = None
        if margin_s is not None:
            kept = self.checkpoints.rounds()
            written_before = (self.checkpoints.saved_at(kept[0]) if kept else time.time()) - margin_s
        return self.chunks.collect(keep, written_before=written_before)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _make_layout(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        if self.data_dir.stat().st_mode & 0o077:
            # A directory the user chose may be shared on purpose, so it is not changed; but the
            # node key will live in it.
            log.warning("data dir %s is readable by other users; 0700 is recommended", self.data_dir)
        for sub in SUBDIRS:
            directory = self.data_dir / sub
            directory.mkdir(exist_ok=True, mode=DIR_MODE)
            os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask

    def _acquire_lock(self) -> int:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = (self.data_dir / LOCK_FILE).read_text(errors="replace").strip() or "unknown"
                raise DataDirLocked(f"data dir {self.data_dir} is in use by another process (pid {holder})") from exc
            raise
        with contextlib.suppress(OSError):  # the holder's pid, for the person reading the error
            os.ftruncate(fd, 0)
            os.write(fd, b"%d\n" % os.getpid())
        return fd


def __getattr__(name: str) -> Any:
    """`from moeswarm.store import CheckpointStore, Manifest` without importing torch up front."""
    if name in ("CheckpointStore", "Manifest", "TensorEntry"):
        from moeswarm.store import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'moeswarm.store' has no attribute {name!r}")
