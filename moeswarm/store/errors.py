"""The store's exception types.

Each failure a caller can act on has its own type: a missing chunk is fetched again from a peer, a
corrupt one is deleted and fetched again, a corrupt checkpoint falls back to an older one. All of them
derive from `StoreError`, so the edges (HTTP handlers, the CLI) can turn any of them into a clear error.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by `moeswarm.store`."""


class InvalidChunkId(StoreError, ValueError):
    """A chunk id that is not 64 lowercase hex digits: rejected before it can name a file."""


class ChunkMissing(StoreError, KeyError):
    """No chunk with this id is stored."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else "chunk missing"


class ChunkCorrupt(StoreError):
    """A stored chunk does not decompress, is too large, or does not hash to its id."""


class ChunkTooLarge(StoreError, ValueError):
    """A chunk bigger than the store's `chunk_bytes_max` was offered."""


class CheckpointMissing(StoreError, KeyError):
    """No checkpoint manifest exists for the requested round."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "checkpoint missing"


class CheckpointCorrupt(StoreError):
    """A checkpoint's manifest or one of its tensors fails verification."""


class RecordTooLarge(StoreError, ValueError):
    """A log record bigger than the log's `record_bytes_max` was offered."""
