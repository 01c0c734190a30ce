"""Content-addressed chunk store: immutable byte strings named by the blake3 hash of their content.

Checkpoint tensors and gossiped delta blobs live here. Naming by content gives three properties the
swarm relies on: a chunk that did not change between checkpoints is stored once; anything fetched
from a peer is checked against the id it was asked for; and a chunk on disk is checked against its
name every time it is read, so bit rot or a tampered file is caught rather than trained on.

Layout: `<root>/<first two hex digits>/<64-hex id>`, each file one zstd frame of the uncompressed
bytes (the id hashes the uncompressed bytes, so it does not depend on the compression level).
Every write is temp + fsync + rename + fsync of the directory: after a crash a chunk is either
absent or whole. All methods block on disk I/O; asyncio callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3
import zstandard

from moeswarm.store.errors import ChunkCorrupt, ChunkMissing, ChunkTooLarge, InvalidChunkId
from moeswarm.store.fsutil import atomic_write, fsync_dir, remove_stale_temps

log = logging.getLogger(__name__)

CHUNK_ID_HEX_LEN = 64
CHUNK_BYTES_MAX_DEFAULT = 1 << 30  # one tensor of a GPU preset fits; a peer cannot make us inflate more
PIECE_BYTES_DEFAULT = 1 << 20
_CHUNK_ID_RE = re.compile(r"[0-9a-f]{64}")
_FANOUT_RE = re.compile(r"[0-9a-f]{2}")
_FRAME_HEADER_BYTES_MAX = 18  # the longest zstd frame header


def chunk_id(data: bytes | bytearray | memoryview) -> str:
    """The id a chunk with this content has: blake3 of the uncompressed bytes, lowercase hex."""
    return blake3.blake3(data).hexdigest()


def validate_chunk_id(value: object) -> str:
    """Return `value` if it is a well-formed id, else raise `InvalidChunkId`.

    Ids come from the network (`GET /blobs/{id}`, manifests), so nothing that could name another
    file (`..`, `/`, upper case that aliases on case-insensitive disks) gets near the file system.
    """
    if not isinstance(value, str) or _CHUNK_ID_RE.fullmatch(value) is None:
        shown = repr(value)[:80]
        raise InvalidChunkId(f"chunk id must be {CHUNK_ID_HEX_LEN} lowercase hex digits, got {shown}")
    return value


@dataclass(frozen=True, slots=True)
class PutResult:
    """What `ChunkStore.store` did: the id, and whether new bytes reached the disk."""

    chunk_id: str
    written: bool
    stored_bytes: int  # compressed size on disk


@dataclass(frozen=True, slots=True)
class ChunkStats:
    """Disk use of the store, from a scan of its directory."""

    chunks: int
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class GcResult:
    """What a garbage collection removed."""

    removed: int
    freed_bytes: int
    kept: int
    kept_bytes: int = 0  # what the store holds afterwards (compressed, on disk)


class ChunkStore:
    """Immutable blobs on disk, addressed by blake3 id, zstd-compressed, verified on every read."""

    def __init__(
        self,
        root: Path | str,
        *,
        chunk_bytes_max: int = CHUNK_BYTES_MAX_DEFAULT,
        compression_level: int = 3,
    ) -> None:
        if chunk_bytes_max <= 0:
            raise ValueError(f"chunk_bytes_max must be positive, got {chunk_bytes_max}")
        self.root = Path(root)
        self.chunk_bytes_max = chunk_bytes_max
        self._level = compression_level
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.chunks_written = 0
        self.chunks_reused = 0
        self._reuse_lock = threading.Lock()
        self.bytes_written = 0

    def remove_stale_temps(self) -> int:
        """Delete temp files of writes a crash interrupted. Only the owning node calls this, at
        start-up: a reader process (export) must not delete a live writer's temp files."""
        removed = sum(remove_stale_temps(sub) for sub in self._fanout_dirs())
        if removed:
            log.info("chunk store %s: removed %d temp files left by an interrupted write", self.root, removed)
        return removed

    def path_of(self, cid: str) -> Path:
        """The file that holds chunk `cid` (which need not exist). Validates the id first."""
        validate_chunk_id(cid)
        return self.root / cid[:2] / cid

    def has(self, cid: str) -> bool:
        return self.path_of(cid).is_file()

    def put(self, data: bytes | bytearray | memoryview, *, expect: str | None = None) -> str:
        """Store `data` and return its id; a chunk already present is not written again.

        `expect` is the id the caller was promised (a blob pulled from a peer): a mismatch raises
        `ChunkCorrupt` and stores nothing.
        """
        return self.store(data, expect=expect).chunk_id

    def store(self, data: bytes | bytearray | memoryview, *, expect: str | None = None) -> PutResult:
        """Like `put`, and also says whether the chunk was new (for dedup accounting)."""
        if expect is not None:
            validate_chunk_id(expect)
        if len(data) > self.chunk_bytes_max:
            raise ChunkTooLarge(f"chunk of {len(data)} bytes exceeds chunk_bytes_max={self.chunk_bytes_max}")
        cid = chunk_id(data)
        if expect is not None and cid != expect:
            raise ChunkCorrupt(f"content hashes to {cid}, expected {expect}")
        path = self.path_of(cid)
        try:
            # A chunk stored again is in use again: its time is what `collect(written_before=)` spares.
            # Under the lock, so a collection cannot delete it between this and the caller's use.
            with self._reuse_lock:
                os.utime(path)
                stored_bytes = path.stat().st_size
            self.chunks_reused += 1
            return PutResult(chunk_id=cid, written=False, stored_bytes=stored_bytes)
        except FileNotFoundError:
            pass
        self._ensure_fanout_dir(path.parent)
        frame = zstandard.ZstdCompressor(level=self._level, write_checksum=True).compress(data)
        atomic_write(path, [frame])
        self.chunks_written += 1
        self.bytes_written += len(frame)
        return PutResult(chunk_id=cid, written=True, stored_bytes=len(frame))

    def get(self, cid: str) -> bytes:
        """The chunk's uncompressed bytes, verified against its id."""
        path = self.path_of(cid)
        try:
            frame = path.read_bytes()
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {cid} is not stored") from None
        self._check_declared_size(cid, frame)
        try:
            data = zstandard.ZstdDecompressor().decompress(
                frame, max_output_size=self.chunk_bytes_max, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise ChunkCorrupt(f"chunk {cid} does not decompress: {exc}") from exc
        actual = chunk_id(data)
        if actual != cid:
            raise ChunkCorrupt(f"chunk {cid} hashes to {actual}")
        return data

    def size_of(self, cid: str) -> int:
        """Uncompressed size from the frame header, for a `Content-Length` before streaming."""
        path = self.path_of(cid)
        try:
            with path.open("rb") as handle:
                header = handle.read(_FRAME_HEADER_BYTES_MAX)
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {cid} is not stored") from None
        return self._check_declared_size(cid, header)

    def open_compressed(self, cid: str) -> BinaryIO:
        """The stored zstd frame as an open file, for serving with `Content-Encoding: zstd`.

        Not verified here: the receiver hashes what it decompresses, as it must for any peer.
        """
        try:
            return self.path_of(cid).open("rb")
        except FileNotFoundError:
            raise ChunkMissing(f"chunk {cid} is not stored") from None

    def iter_bytes(self, cid: str, *, piece_bytes: int = PIECE_BYTES_DEFAULT) -> Iterator[bytes]:
        """Yield the uncompressed bytes in pieces of at most `piece_bytes`, for HTTP streaming.

        Memory stays bounded by one piece. The hash is checked as the pieces go by; a mismatch
        raises `ChunkCorrupt` after the last piece, so a streaming response must be aborted (the
        receiver, which verifies the id, would reject it anyway).
        """
        expected = self.size_of(cid)
        hasher = blake3.blake3()
        total = 0
        with self.open_compressed(cid) as handle:
            reader = zstandard.ZstdDecompressor().stream_reader(handle, closefd=False)
            try:
                while True:
                    piece = reader.read(piece_bytes)
                    if not piece:
                        break
                    total += len(piece)
                    if total > expected:
                        raise ChunkCorrupt(f"chunk {cid} inflates beyond its declared {expected} bytes")
                    hasher.update(piece)
                    yield piece
            except zstandard.ZstdError as exc:
                raise ChunkCorrupt(f"chunk {cid} does not decompress: {exc}") from exc
        if hasher.hexdigest() != cid:
            raise ChunkCorrupt(f"chunk {cid} hashes to {hasher.hexdigest()}")

    def delete(self, cid: str) -> bool:
        """Remove one chunk (e.g. one found corrupt, before fetching it again). True if it existed."""
        try:
            self.path_of(cid).unlink()
        except FileNotFoundError:
            return False
        return True

    def ids(self) -> Iterator[str]:
        """Every stored chunk id (files that are not well-named chunks are ignored)."""
        for sub in self._fanout_dirs():
            for entry in sub.iterdir():
                name = entry.name
                if _CHUNK_ID_RE.fullmatch(name) and name.startswith(sub.name) and entry.is_file():
                    yield name

    def collect(self, keep: Collection[str], *, written_before: float | None = None) -> GcResult:
        """Delete every chunk whose id is not in `keep` (what the kept checkpoints and live blobs use).

        With `written_before` (a `time.time()` value), chunks stored at or after it are spared too:
        a running node cannot name every blob it may still need (one written while the collection
        runs, one a restart forgot), but it knows none older than its oldest checkpoint is needed.
        """
        removed = freed = kept = kept_bytes = 0
        touched: set[Path] = set()
        for cid in list(self.ids()):
            path = self.path_of(cid)
            with self._reuse_lock, contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if cid in keep or (written_before is not None and stat.st_mtime >= written_before):
                    kept += 1
                    kept_bytes += stat.st_size
                    continue
                size = stat.st_size
                path.unlink()
                removed += 1
                freed += size
                touched.add(path.parent)
        for directory in touched:
            fsync_dir(directory)
        if removed:
            log.info("chunk store %s: collected %d chunks, %d bytes freed, %d kept", self.root, removed, freed, kept)
        return GcResult(removed=removed, freed_bytes=freed, kept=kept, kept_bytes=kept_bytes)

    def stats(self) -> ChunkStats:
        """Number of chunks and their compressed bytes on disk."""
        count = stored = 0
        for cid in self.ids():
            with contextlib.suppress(FileNotFoundError):
                stored += self.path_of(cid).stat().st_size
                count += 1
        return ChunkStats(chunks=count, stored_bytes=stored)

    def _fanout_dirs(self) -> Iterator[Path]:
        for entry in sorted(self.root.iterdir()):
            if _FANOUT_RE.fullmatch(entry.name) and entry.is_dir():
                yield entry

    def _ensure_fanout_dir(self, directory: Path) -> None:
        if directory.is_dir():
            return
        with contextlib.suppress(FileExistsError):  # another thread made it first
            directory.mkdir(mode=0o700)
            fsync_dir(self.root)

    def _check_declared_size(self, cid: str, frame: bytes) -> int:
        """Refuse a frame whose header promises more than the bound, before inflating anything."""
        try:
            params = zstandard.get_frame_parameters(frame[:_FRAME_HEADER_BYTES_MAX])
        except zstandard.ZstdError as exc:
            raise ChunkCorrupt(f"chunk {cid} has no valid zstd frame header: {exc}") from exc
        size = params.content_size
        if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            raise ChunkCorrupt(f"chunk {cid} does not declare its size")
        if size > self.chunk_bytes_max:
            raise ChunkCorrupt(f"chunk {cid} declares {size} bytes, over chunk_bytes_max={self.chunk_bytes_max}")
        return int(size)

