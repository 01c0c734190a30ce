"""The durable consensus log: append-only segment files of checksummed, length-prefixed records.

PBFT's safety rests on a replica never contradicting a vote it sent, even after a crash; so the
node appends what it is about to vote and calls `sync()` before the vote leaves the node. After
kill -9 or a power cut the tail of the last segment may be torn; opening the log finds the last
complete record, truncates what follows and logs how many bytes went, so a crash never makes the
log unreadable and replay always yields a prefix of what was appended.

Segment file `<root>/<label, 20 digits>.seg`: an 8-byte magic, then records, each
`length: u32 LE | crc32(length bytes + payload): u32 LE | payload`. Labels are chosen by the caller
(a checkpoint's sequence number): `start_segment(n)` at a stable checkpoint, then
`drop_segments_before(n)` garbage-collects everything the checkpoint made redundant.
Records are opaque bytes; the consensus layer encodes them. Methods block on disk I/O.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from moeswarm.store.errors import RecordTooLarge
from moeswarm.store.fsutil import atomic_write, fsync_dir, remove_stale_temps

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"MSWLOG\x00\x01"
RECORD_HEADER = struct.Struct("<II")
RECORD_BYTES_MAX_DEFAULT = 4 << 20  # far above any PBFT message; bounds what one append can hold
FORMAT_RECORD_BYTES_MAX = 1 << 30  # the most a reader ever accepts, whatever the writer's setting
_SEGMENT_RE = re.compile(r"(\d{20})\.seg")
QUARANTINE_SUFFIX = ".corrupt"


def frame_record(payload: bytes | bytearray | memoryview) -> bytes:
    """One record as it lies on disk."""
    length = len(payload)
    crc = zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "little")))
    return RECORD_HEADER.pack(length, crc) + bytes(payload)


def _read_record(handle: BinaryIO, remaining: int) -> tuple[bytes | None, str]:
    """Read one record from `handle`, which has `remaining` bytes left in the valid region.

    Returns (payload, "") for a whole record, (None, reason) for a torn or corrupt one, and
    (None, "") at a clean end. Never allocates more than the bytes actually left.
    """
    if remaining == 0:
        return None, ""
    if remaining < RECORD_HEADER.size:
        return None, "torn record header"
    length, crc = RECORD_HEADER.unpack(handle.read(RECORD_HEADER.size))
    if length > FORMAT_RECORD_BYTES_MAX:
        return None, f"record length {length} over the format bound"
    if length > remaining - RECORD_HEADER.size:
        return None, "torn record payload"
    payload = handle.read(length)
    if zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "little"))) != crc:
        return None, "record checksum mismatch"
    return payload, ""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the log found and repaired."""

    segments: int
    records: int
    dropped_bytes: int  # torn or corrupt bytes cut from the end
    quarantined: tuple[str, ...]  # segments after a corrupt one, renamed aside, not deleted


@dataclass(frozen=True, slots=True)
class _Scan:
    valid_bytes: int  # header + whole records
    records: int
    reason: str  # why the scan stopped before the end of the file, or ""


def _scan_segment(path: Path) -> _Scan:
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(len(SEGMENT_MAGIC)) != SEGMENT_MAGIC:
            return _Scan(valid_bytes=0, records=0, reason="bad or torn segment header")
        offset, records = len(SEGMENT_MAGIC), 0
        while True:
            payload, reason = _read_record(handle, size - offset)
            if payload is None:
                return _Scan(valid_bytes=offset, records=records, reason=reason)
            offset += RECORD_HEADER.size + len(payload)
            records += 1


class ConsensusLog:
    """Append-only, crash-safe record log in labelled segments. Open it, `replay()`, then append."""

    def __init__(self, root: Path | str, *, record_bytes_max: int = RECORD_BYTES_MAX_DEFAULT) -> None:
        if not 0 < record_bytes_max <= FORMAT_RECORD_BYTES_MAX:
            raise ValueError(f"record_bytes_max must be in 1..{FORMAT_RECORD_BYTES_MAX}, got {record_bytes_max}")
        self.root = Path(root)
        self.record_bytes_max = record_bytes_max
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self.recovery = self._recover()
        labels = self.segments()
        if not labels:
            self._create_segment(0)
            labels = [0]
        self._label = labels[-1]
        self._fd = os.open(self._path(self._label), os.O_WRONLY | os.O_APPEND)
        self._unsynced = False

    @property
    def label(self) -> int:
        """The label of the segment appends go to."""
        return self._label

    def segments(self) -> list[int]:
        """Labels of the segment files, oldest first."""
        found = (_SEGMENT_RE.fullmatch(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m is not None)

    def size_bytes(self) -> int:
        return sum(self._path(label).stat().st_size for label in self.segments())

    def append(self, record: bytes | bytearray | memoryview) -> None:
        """Append one record (durable only after `sync()`)."""
        self.append_many([record])

    def append_many(self, records: Iterable[bytes | bytearray | memoryview]) -> None:
        """Append records in order with one write; all are checked before any is written."""
        frames = []
        for record in records:
            if not isinstance(record, bytes | bytearray | memoryview):
                raise TypeError(f"log records are bytes, got {type(record).__name__}")
            if len(record) > self.record_bytes_max:
                raise RecordTooLarge(f"record of {len(record)} bytes exceeds record_bytes_max={self.record_bytes_max}")
            frames.append(frame_record(record))
        data = memoryview(b"".join(frames))
        with self._lock:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            self._unsynced = True

    def sync(self) -> None:
        """Make every appended record durable. Call before a vote that depends on them leaves."""
        with self._lock:
            if self._unsynced:
                os.fsync(self._fd)
                self._unsynced = False

    def replay(self) -> Iterator[bytes]:
        """Yield every record, oldest first. Meant for start-up, before new appends."""
        for label in self.segments():
            path = self._path(label)
            size = path.stat().st_size
            with path.open("rb") as handle:
                if handle.read(len(SEGMENT_MAGIC)) != SEGMENT_MAGIC:
                    log.error("log segment %s lost its header after open; replay stops", path)
                    return
                offset = len(SEGMENT_MAGIC)
                while True:
                    payload, reason = _read_record(handle, size - offset)
                    if payload is None:
                        if reason:
                            log.error("log segment %s changed after open (%s at %d); replay stops", path, reason, offset)
                            return
                        break
                    offset += RECORD_HEADER.size + len(payload)
                    yield payload

    def start_segment(self, label: int) -> None:
        """Sync the current segment and send later appends to a new one labelled `label`."""
        with self._lock:
            if label <= self._label:
                raise ValueError(f"segment label {label} must exceed the current {self._label}")
            if self._unsynced:
                os.fsync(self._fd)
            os.close(self._fd)
            self._create_segment(label)
            self._label = label
            self._fd = os.open(self._path(label), os.O_WRONLY | os.O_APPEND)
            self._unsynced = False

    def drop_segments_before(self, label: int) -> int:
        """Delete segments labelled below `label` (never the current one); returns how many."""
        with self._lock:
            doomed = [old for old in self.segments() if old < label and old != self._label]
            for old in doomed:
                self._path(old).unlink()
            if doomed:
                fsync_dir(self.root)
        return len(doomed)

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            if self._unsynced:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ConsensusLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _path(self, label: int) -> Path:
        return self.root / f"{label:020d}.seg"

    def _create_segment(self, label: int) -> None:
        atomic_write(self._path(label), [SEGMENT_MAGIC])

    def _recover(self) -> Recovery:
        """Cut a torn tail; set aside segments that follow a corrupt one so replay stays a prefix."""
        if remove_stale_temps(self.root):
            log.info("log %s: removed the temp file of an interrupted segment creation", self.root)
        labels = self.segments()
        records = dropped = 0
        quarantined: list[str] = []
        for index, label in enumerate(labels):
            path = self._path(label)
            scan = _scan_segment(path)
            records += scan.records
            if not scan.reason:
                continue
            size = path.stat().st_size
            dropped += size - scan.valid_bytes
            self._truncate(path, scan.valid_bytes)
            later = labels[index + 1 :]
            log.warning(
                "log %s: %s at byte %d; dropped %d bytes%s",
                path, scan.reason, scan.valid_bytes, size - scan.valid_bytes,
                f" and set aside {len(later)} later segments" if later else "",
            )
            for newer in later:
                newer_path = self._path(newer)
                dropped += newer_path.stat().st_size
                aside = newer_path.with_name(newer_path.name + QUARANTINE_SUFFIX)
                os.replace(newer_path, aside)
                quarantined.append(aside.name)
            fsync_dir(self.root)
            break
        return Recovery(
            segments=len(self.segments()), records=records, dropped_bytes=dropped, quarantined=tuple(quarantined)
        )

    @staticmethod
    def _truncate(path: Path, valid_bytes: int) -> None:
        if valid_bytes == 0:  # the header itself is torn: start the segment afresh
            atomic_write(path, [SEGMENT_MAGIC])
            return
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, valid_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
