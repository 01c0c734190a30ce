"""Checkpoints: a committed round's tensors as chunks, plus one manifest that names them.

Every K rounds the node saves `W_r` (and the outer optimizer's momentum `M_r`). Each tensor becomes
one chunk of its raw little-endian bytes, so a tensor that did not change since the last checkpoint
(a frozen expert, an unchanged momentum) is the same chunk and costs no write. The manifest lists
round, state hash, epoch and, per tensor, name, group, dtype, shape and chunk id, plus free-form
`meta` (by convention `meta["model_config"]` holds the model's configuration as a dict or JSON).

Manifest file `<root>/<round, 12 digits>.manifest`: one line `moeswarm-checkpoint 1 <blake3 of
body>`, then the JSON body. It is written after its chunks are durable and is itself written
atomically; a manifest that fails its hash (a torn write, a flipped bit) is skipped by `latest()`,
which falls back to the previous checkpoint and says so in the log. Tensor names are opaque strings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import torch

from moeswarm.store.chunks import ChunkStore, validate_chunk_id
from moeswarm.store.errors import CheckpointCorrupt, CheckpointMissing, StoreError
from moeswarm.store.fsutil import atomic_write, remove_stale_temps

log = logging.getLogger(__name__)

WEIGHTS = "weights"
OPTIMIZER = "optimizer"
GROUPS = (WEIGHTS, OPTIMIZER)
MANIFEST_MAGIC = "moeswarm-checkpoint"
MANIFEST_VERSION = 1
MANIFEST_BYTES_MAX_DEFAULT = 64 << 20
_MANIFEST_RE = re.compile(r"(\d{12})\.manifest")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a checkpoint: where its bytes are and how to read them."""

    name: str
    group: str
    dtype: str
    shape: tuple[int, ...]
    chunk: str
    nbytes: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tensor name must be a non-empty string, got {self.name!r}")
        if self.group not in GROUPS:
            raise ValueError(f"{self.name}: group must be one of {GROUPS}, got {self.group!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: unsupported dtype {self.dtype!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in self.shape):
            raise ValueError(f"{self.name}: shape must be non-negative ints, got {self.shape!r}")
        validate_chunk_id(self.chunk)
        itemsize = torch.empty((), dtype=DTYPES[self.dtype]).element_size()
        if self.nbytes != math.prod(self.shape) * itemsize:
            raise ValueError(f"{self.name}: {self.nbytes} bytes do not fit shape {self.shape} of {self.dtype}")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A checkpoint's table of contents. `chunks_*`/`bytes_written` record what saving it cost."""

    round: int
    state_hash: bytes
    epoch: int
    tensors: tuple[TensorEntry, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)
    chunks_written: int = 0
    chunks_reused: int = 0
    bytes_written: int = 0

    def __post_init__(self) -> None:
        for label in ("round", "epoch", "chunks_written", "chunks_reused", "bytes_written"):
            value = getattr(self, label)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"manifest {label} must be a non-negative int, got {value!r}")
        if not isinstance(self.state_hash, bytes):
            raise ValueError("manifest state_hash must be bytes")
        if not isinstance(self.meta, Mapping):
            raise ValueError("manifest meta must be a mapping")
        keys = [(t.group, t.name) for t in self.tensors]
        if len(set(keys)) != len(keys):
            raise ValueError("manifest names a tensor twice")

    def entries(self, group: str = WEIGHTS) -> list[TensorEntry]:
        return [t for t in self.tensors if t.group == group]

    def chunk_ids(self) -> set[str]:
        return {t.chunk for t in self.tensors}

    def to_bytes(self) -> bytes:
        body = json.dumps(
            {
                "round": self.round,
                "state_hash": self.state_hash.hex(),
                "epoch": self.epoch,
                "tensors": [
                    {"name": t.name, "group": t.group, "dtype": t.dtype, "shape": list(t.shape),
                     "chunk": t.chunk, "nbytes": t.nbytes}
                    for t in self.tensors
                ],
                "meta": self.meta,
                "chunks_written": self.chunks_written,
                "chunks_reused": self.chunks_reused,
                "bytes_written": self.bytes_written,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode("utf-8")
        digest = blake3.blake3(body).hexdigest()
        return f"{MANIFEST_MAGIC} {MANIFEST_VERSION} {digest}\n".encode("ascii") + body

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse and verify a manifest file; any defect raises `CheckpointCorrupt`."""
        header, sep, body = raw.partition(b"\n")
        parts = header.split(b" ")
        if not sep or len(parts) != 3 or parts[0] != MANIFEST_MAGIC.encode() or parts[1] != b"%d" % MANIFEST_VERSION:
            raise CheckpointCorrupt("not a version-1 checkpoint manifest (bad header line)")
        if blake3.blake3(body).hexdigest().encode() != parts[2]:
            raise CheckpointCorrupt("manifest body does not match its hash (torn or damaged)")
        try:
            doc = json.loads(body)
            return cls(
                round=doc["round"],
                state_hash=bytes.fromhex(doc["state_hash"]),
                epoch=doc["epoch"],
                tensors=tuple(
                    TensorEntry(name=t["name"], group=t["group"], dtype=t["dtype"], shape=tuple(t["shape"]),
                                chunk=t["chunk"], nbytes=t["nbytes"])
                    for t in doc["tensors"]
                ),
                meta=doc["meta"],
                chunks_written=doc["chunks_written"],
                chunks_reused=doc["chunks_reused"],
                bytes_written=doc["bytes_written"],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointCorrupt(f"manifest body is malformed: {exc}") from exc


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements in C order as little-endian bytes (the chunk content)."""
    if tensor.dtype not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {tensor.dtype}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, entry: TensorEntry) -> torch.Tensor:
    """Rebuild a tensor from its chunk; the length must match what the manifest promises."""
    if len(data) != entry.nbytes:
        raise CheckpointCorrupt(f"{entry.name}: chunk holds {len(data)} bytes, manifest says {entry.nbytes}")
    dtype = DTYPES[entry.dtype]
    if not data:
        return torch.empty(entry.shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(entry.shape)


class CheckpointStore:
    """Saves and loads checkpoints; tensors go to the shared `ChunkStore`, manifests here."""

    def __init__(
        self, root: Path | str, chunks: ChunkStore, *, manifest_bytes_max: int = MANIFEST_BYTES_MAX_DEFAULT
    ) -> None:
        if sys.byteorder != "little":
            raise StoreError("checkpoints are stored little-endian; big-endian hosts are not supported")
        self.root = Path(root)
        self.chunks = chunks
        self.manifest_bytes_max = manifest_bytes_max
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def remove_stale_temps(self) -> int:
        """Delete temp files of manifest writes a crash interrupted (owning node, at start-up)."""
        return remove_stale_temps(self.root)

    def rounds(self) -> list[int]:
        """Rounds that have a manifest file, oldest first (not verified)."""
        found = (_MANIFEST_RE.fullmatch(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m is not None)

    def save(
        self,
        round: int,
        state: Mapping[str, torch.Tensor],
        *,
        state_hash: bytes,
        meta: Mapping[str, Any] | None = None,
        epoch: int = 0,
        optimizer: Mapping[str, torch.Tensor] | None = None,
    ) -> Manifest:
        """Write round `round`'s weights (and optimizer tensors) durably; returns the manifest.

        The manifest appears only after every chunk is on disk, so a crash mid-save leaves the
        previous checkpoint as the latest one.
        """
        meta_doc = dict(meta or {})
        try:
            json.dumps(meta_doc)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint meta must be JSON-serialisable: {exc}") from exc
        entries: list[TensorEntry] = []
        written = reused = stored = 0
        for group, tensors in ((WEIGHTS, state), (OPTIMIZER, optimizer or {})):
            for name, tensor in tensors.items():
                data = tensor_bytes(tensor)
                result = self.chunks.store(data)
                written += result.written
                reused += not result.written
                stored += result.stored_bytes if result.written else 0
                entries.append(
                    TensorEntry(name=name, group=group, dtype=_DTYPE_NAMES[tensor.dtype],
                                shape=tuple(tensor.shape), chunk=result.chunk_id, nbytes=len(data))
                )
        manifest = Manifest(
            round=round, state_hash=bytes(state_hash), epoch=epoch, tensors=tuple(entries), meta=meta_doc,
            chunks_written=written, chunks_reused=reused, bytes_written=stored,
        )
        atomic_write(self._path(round), [manifest.to_bytes()])
        log.info(
            "checkpoint round %d saved: %d tensors, %d chunks written (%d bytes), %d reused",
            round, len(entries), written, stored, reused,
        )
        return manifest

    def manifest(self, round: int) -> Manifest:
        """Read and verify one round's manifest (not its chunks)."""
        path = self._path(round)
        try:
            with path.open("rb") as handle:
                raw = handle.read(self.manifest_bytes_max + 1)
        except FileNotFoundError:
            raise CheckpointMissing(f"no checkpoint for round {round}") from None
        if len(raw) > self.manifest_bytes_max:
            raise CheckpointCorrupt(f"round {round}: manifest exceeds {self.manifest_bytes_max} bytes")
        try:
            manifest = Manifest.from_bytes(raw)
        except CheckpointCorrupt as exc:
            raise CheckpointCorrupt(f"round {round}: {exc}") from exc
        if manifest.round != round:
            raise CheckpointCorrupt(f"manifest file of round {round} describes round {manifest.round}")
        return manifest

    def load(self, round: int, *, group: str = WEIGHTS) -> tuple[dict[str, torch.Tensor], Manifest]:
        """One group of round `round`'s tensors, each chunk verified, plus the manifest."""
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        manifest = self.manifest(round)
        state = {entry.name: self._read_tensor(round, entry) for entry in manifest.entries(group)}
        return state, manifest

    def load_optimizer(self, round: int) -> dict[str, torch.Tensor]:
        return self.load(round, group=OPTIMIZER)[0]

    def verify(self, round: int) -> Manifest:
        """Check the manifest and every chunk it names; raises if anything is wrong."""
        manifest = self.manifest(round)
        for entry in manifest.tensors:
            self._read_tensor(round, entry)
        return manifest

    def latest(self, *, verify_chunks: bool = False) -> Manifest | None:
        """The newest checkpoint that verifies, falling back past damaged ones (logged).

        Always checks the manifest and that its chunks are present; `verify_chunks` also reads
        and hashes every chunk (what a restarting node does before trusting its state).
        """
        for round in reversed(self.rounds()):
            try:
                if verify_chunks:
                    return self.verify(round)
                manifest = self.manifest(round)
                missing = [t.name for t in manifest.tensors if not self.chunks.has(t.chunk)]
                if missing:
                    raise CheckpointCorrupt(f"round {round}: {len(missing)} chunks missing, e.g. {missing[0]}")
                return manifest
            except CheckpointCorrupt as exc:
                log.warning("checkpoint round %d is unusable (%s); falling back to an older one", round, exc)
        return None

    def keep_last(self, n: int) -> list[int]:
        """Remove every manifest except the newest `n` that verify; returns the removed rounds.

        Chunks are not touched here: they are shared with live delta blobs, so their collection
        is `NodeStore.collect_garbage`'s job, which knows both.
        """
        if n < 1:
            raise ValueError(f"keep_last needs n >= 1, got {n}")
        kept: list[int] = []
        removed: list[int] = []
        for round in reversed(self.rounds()):
            if len(kept) < n and self._usable(round):
                kept.append(round)
                continue
            with contextlib.suppress(FileNotFoundError):
                self._path(round).unlink()
                removed.append(round)
        if removed:
            log.info("checkpoints: kept rounds %s, removed %s", sorted(kept), sorted(removed))
        return sorted(removed)

    def referenced_chunks(self) -> set[str]:
        """Chunk ids named by any manifest that verifies (what garbage collection must keep)."""
        ids: set[str] = set()
        for manifest in self._valid_manifests():
            ids |= manifest.chunk_ids()
        return ids

    def _valid_manifests(self) -> Iterator[Manifest]:
        for round in self.rounds():
            try:
                yield self.manifest(round)
            except CheckpointCorrupt as exc:
                log.warning("checkpoint round %d: %s", round, exc)

    def saved_at(self, round: int) -> float:
        """When the manifest of `round` was last written (`time.time()` scale)."""
        try:
            return self._path(round).stat().st_mtime
        except FileNotFoundError:
            raise CheckpointMissing(f"no checkpoint for round {round}") from None

    def _usable(self, round: int) -> bool:
        try:
            self.manifest(round)
        except CheckpointCorrupt as exc:
            log.warning("checkpoint round %d removed as unusable: %s", round, exc)
            return False
        return True

    def _read_tensor(self, round: int, entry: TensorEntry) -> torch.Tensor:
        try:
            data = self.chunks.get(entry.chunk)
        except StoreError as exc:
            raise CheckpointCorrupt(f"round {round}, tensor {entry.name}: {exc}") from exc
        return tensor_from_bytes(data, entry)

    def _path(self, round: int) -> Path:
        if not isinstance(round, int) or isinstance(round, bool) or not 0 <= round < 10**12:
            raise ValueError(f"round must be an int in 0..10**12-1, got {round!r}")
        return self.root / f"{round:012d}.manifest"
