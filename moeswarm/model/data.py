"""Byte-level training data: the embedded default corpus, user text, the train / held-out split, shards.

Default corpus: the `.py` files of the running interpreter's standard library (about 30 MB on CPython
3.11, present on every machine), excluding anything under site-packages or dist-packages.

Split: a file is held out when the first 8 bytes of blake3(its path relative to the root, UTF-8, `/`
separators), read as a little-endian integer, fall below `HELDOUT_FRACTION` of 2**64. The split
depends only on relative paths, so it is the same on every machine and stable when files change.
When that leaves either side with less than `MIN_SIDE_FRACTION` of the bytes (a single file, a handful
of files), the concatenated text is split by position instead: its last `HELDOUT_FRACTION` is held out.

Shards: the training bytes are cut into blocks of `SHARD_BLOCK_BYTES`; block b belongs to shard
b mod n, and a training window (context + 1 bytes) always lies inside one block. So shards own
disjoint bytes, every shard sees text from all over the corpus, and shard(0, 1) is the whole stream.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
import struct
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import blake3
import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

HELDOUT_FRACTION = 0.06
MIN_SIDE_FRACTION = 0.02
SHARD_BLOCK_BYTES = 64 * 1024
BINARY_SNIFF_BYTES = 8192  # a file found by walking a directory is skipped if these hold a NUL byte
_CACHE_FORMAT = b"moeswarm-corpus-v1\n"


class DataError(Exception):
    """Training data that cannot be used: missing, unreadable, empty, or too small for the context."""


def is_heldout(relative_path: str, fraction: float = HELDOUT_FRACTION) -> bool:
    digest = blake3.blake3(relative_path.replace(os.sep, "/").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") < fraction * 2**64


@dataclasses.dataclass(frozen=True)
class Shard:
    """Node `index` of `count`: the training windows whose bytes lie in its blocks."""

    data: Tensor  # uint8, the whole training stream
    index: int
    count: int
    context: int
    starts_lo: Tensor  # int64 (nb,): first valid window start of each owned block
    starts_n: Tensor  # int64 (nb,): number of valid window starts in each owned block
    starts_cum: Tensor  # int64 (nb,): inclusive cumulative sum of starts_n

    @property
    def windows(self) -> int:
        """Number of distinct training windows (start positions) this shard can draw."""
        return int(self.starts_cum[-1])

    @property
    def bytes(self) -> int:
        return int((self.starts_n + self.context).sum())

    def window_starts(self) -> Tensor:
        """Every start position this shard may draw (for tests and accounting; memory ~8 B per byte)."""
        return torch.cat(
            [
                lo + torch.arange(n)
                for lo, n in zip(self.starts_lo.tolist(), self.starts_n.tolist(), strict=True)
            ]
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """`batch_size` windows drawn uniformly with replacement: int64 (B, context + 1) byte values.

        Uses only `generator`, so the same generator state gives the same batch on every machine.
        """
        u_B = torch.randint(0, self.windows, (batch_size,), generator=generator)
        block_B = torch.searchsorted(self.starts_cum, u_B, right=True)
        before_B = self.starts_cum[block_B] - self.starts_n[block_B]
        start_B = self.starts_lo[block_B] + (u_B - before_B)
        offsets = torch.arange(self.context + 1)
        return self.data[start_B.unsqueeze(1) + offsets].long()


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Training and held-out byte streams (uint8 tensors) and where they came from."""

    train: Tensor
    heldout: Tensor
    source: str
    train_files: int
    heldout_files: int

    def shard(self, index: int, count: int, context: int, block_bytes: int = SHARD_BLOCK_BYTES) -> Shard:
        """Node `index`'s disjoint share of training windows (see the module docstring)."""
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} out of range for {count} shards")
        if block_bytes <= context:
            raise ValueError(f"block_bytes={block_bytes} must exceed context={context}")
        total = self.train.numel()
        first = index * block_bytes
        lo = torch.arange(first, max(first, total), count * block_bytes, dtype=torch.long)
        hi = torch.clamp(lo + block_bytes, max=total)
        n = hi - lo - context  # starts s with s + context + 1 <= hi
        keep = n > 0
        lo, n = lo[keep], n[keep]
        if lo.numel() == 0:
            raise DataError(
                f"{self.source}: {total} training bytes leave no window of {context + 1} bytes for shard "
                f"{index} of {count}; use more data, fewer nodes or a shorter context"
            )
        return Shard(self.train, index, count, context, lo, n, torch.cumsum(n, 0))

    def heldout_batches(self, n_batches: int, batch_size: int, context: int, seed: int = 0) -> list[Tensor]:
        """Fixed held-out windows (int64 (B, context + 1)) drawn from `seed` alone, so every node that
        evaluates the same weights reports the same number."""
        windows = self.heldout.numel() - context
        if windows <= 0:
            raise DataError(
                f"{self.source}: held-out text ({self.heldout.numel()} bytes) is shorter than one window"
            )
        gen = torch.Generator().manual_seed(seed)
        offsets = torch.arange(context + 1)
        batches = []
        for _ in range(n_batches):
            start_B = torch.randint(0, windows, (batch_size,), generator=gen)
            batches.append(self.heldout[start_B.unsqueeze(1) + offsets].long())
        return batches


def _to_tensor(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _split(files: Sequence[tuple[str, bytes]], source: str, fraction: float) -> Corpus:
    total = sum(len(b) for _, b in files)
    if total == 0:
        raise DataError(f"{source}: no text to train on (all input is empty)")
    train = [b for rel, b in files if not is_heldout(rel, fraction)]
    held = [b for rel, b in files if is_heldout(rel, fraction)]
    held_bytes = sum(len(b) for b in held)
    if min(held_bytes, total - held_bytes) < MIN_SIDE_FRACTION * total:
        joined = b"".join(b for _, b in files)
        cut = total - max(1, int(total * fraction))
        return Corpus(_to_tensor(joined[:cut]), _to_tensor(joined[cut:]), source, len(files), 0)
    return Corpus(_to_tensor(b"".join(train)), _to_tensor(b"".join(held)), source, len(train), len(held))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's `.py` files, sorted by relative path, without third-party packages."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]  # never descend into installed packages
        found.extend(Path(dirpath) / name for name in filenames if name.endswith(".py"))
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def cache_dir() -> Path:
    if "MOESWARM_CACHE_DIR" in os.environ:
        return Path(os.environ["MOESWARM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moeswarm"


def _stdlib_key(root: Path, files: Sequence[Path], fraction: float) -> str:
    """Changes whenever the interpreter, the file list, any file's size or mtime, or the split changes."""
    h = blake3.blake3(f"{sys.version}\n{root}\n{fraction!r}\n".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _read_cache(path: Path) -> Corpus | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    head = len(_CACHE_FORMAT) + 16
    if not raw.startswith(_CACHE_FORMAT) or len(raw) < head:
        return None
    n_train, train_files, heldout_files = struct.unpack("<QII", raw[len(_CACHE_FORMAT) : head])
    if n_train > len(raw) - head:
        return None
    body = raw[head:]
    return Corpus(
        _to_tensor(body[:n_train]), _to_tensor(body[n_train:]), "stdlib", train_files, heldout_files
    )


def _write_cache(path: Path, corpus: Corpus) -> None:
    """Best effort: a read-only home directory only costs the next run a second of reading."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        head = struct.pack("<QII", corpus.train.numel(), corpus.train_files, corpus.heldout_files)
        tmp.write_bytes(
            _CACHE_FORMAT + head + corpus.train.numpy().tobytes() + corpus.heldout.numpy().tobytes()
        )
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("corpus cache not written to %s: %s", path, exc)


@functools.lru_cache(maxsize=2)
def _stdlib_corpus(key: str, root: Path, fraction: float) -> Corpus:
    cached = cache_dir() / f"stdlib-{key}.bin"
    corpus = _read_cache(cached)
    if corpus is not None:
        return corpus
    files = [(p.relative_to(root).as_posix(), _read(p)) for p in stdlib_files(root)]
    corpus = _split(files, "stdlib", fraction)
    _write_cache(cached, corpus)
    return corpus


def load_stdlib(fraction: float = HELDOUT_FRACTION) -> Corpus:
    """The default corpus; cached in memory and on disk (keyed by interpreter, file list and mtimes)."""
    root = stdlib_root()
    files = stdlib_files(root)
    if not files:
        raise DataError(f"no .py files under the standard library at {root}")
    return _stdlib_corpus(_stdlib_key(root, files, fraction), root, fraction)


def _looks_binary(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return b"\0" in f.read(BINARY_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _walk(root: Path) -> list[tuple[str, Path]]:
    """Text files under a directory, sorted, skipping hidden entries and files that look binary."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and path.is_file() and not _looks_binary(path):
                out.append((path.relative_to(root).as_posix(), path))
    return out


def _expand(spec: str) -> list[tuple[str, Path]]:
    """(relative name used for the split, path) for one `--data` argument: file, directory or glob."""
    if glob.has_magic(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise DataError(f"{spec}: no files match this pattern")
        out = []
        for match in matches:
            out.extend(_expand(glob.escape(match)) if Path(match).is_dir() else [(match, Path(match))])
        return out
    path = Path(spec)
    if path.is_dir():
        return _walk(path)
    if path.is_file():
        return [(path.name, path)]
    if path.exists():
        raise DataError(f"{spec}: not a regular file or directory")
    raise DataError(f"{spec}: no such file or directory")


def load_paths(specs: Sequence[str], fraction: float = HELDOUT_FRACTION) -> Corpus:
    """User text from files, directories (recursively) and globs, in the order given."""
    if not specs:
        raise DataError("no data paths given")
    entries: list[tuple[str, Path]] = []
    for spec in specs:
        found = _expand(spec)
        if not found:
            raise DataError(f"{spec}: no text files found")
        entries.extend(found)
    files = [(rel, _read(path)) for rel, path in entries]
    if not any(files_bytes for _, files_bytes in files):
        raise DataError(f"{', '.join(specs)}: input is empty (0 bytes of text)")
    return _split(files, ", ".join(specs), fraction)


def load_corpus(paths: Sequence[str] | None = None) -> Corpus:
    """`paths` given: those files (see `load_paths`); otherwise the standard library corpus."""
    return load_paths(paths) if paths else load_stdlib()
