"""The default corpus, user data, the train / held-out split and node shards."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from moeswarm.model import data as data_mod
from moeswarm.model.data import (
    Corpus,
    DataError,
    is_heldout,
    load_paths,
    load_stdlib,
    stdlib_files,
    stdlib_root,
)


def _text_tree(root: Path, n_files: int, seed: int = 0) -> dict[str, bytes]:
    """Files whose every line is unique, so each line tells which file it came from."""
    rng = random.Random(seed)
    files = {}
    for i in range(n_files):
        rel = f"pkg{i % 7}/mod_{i:03d}.py"
        body = "".join(f"value_{i}_{j} = {rng.randrange(10**9)}\n" for j in range(rng.randrange(20, 60)))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        files[rel] = body.encode()
    return files


def _corpus(train: bytes, heldout: bytes = b"x" * 300) -> Corpus:
    as_tensor = data_mod._to_tensor
    return Corpus(as_tensor(train), as_tensor(heldout), "test", 1, 1)


def test_split_rule_is_pinned_to_relative_paths() -> None:
    assert is_heldout("asyncio/queues.py")
    assert is_heldout("_weakrefset.py")
    assert not is_heldout("os.py")
    assert not is_heldout("typing.py")
    assert is_heldout("asyncio\\queues.py".replace("\\", "/"))


def test_stdlib_corpus_split_is_disjoint_and_about_six_percent() -> None:
    root = stdlib_root()
    files = stdlib_files(root)
    rels = [p.relative_to(root).as_posix() for p in files]
    assert not any("site-packages" in r or "dist-packages" in r for r in rels)
    held = {r for r in rels if is_heldout(r)}
    corpus = load_stdlib()
    assert corpus.heldout_files == len(held)
    assert corpus.train_files == len(rels) - len(held)
    assert 0.03 < len(held) / len(rels) < 0.10
    sizes = {r: p.stat().st_size for r, p in zip(rels, files, strict=True)}
    assert corpus.heldout.numel() == sum(sizes[r] for r in held)
    assert corpus.train.numel() == sum(sizes.values()) - corpus.heldout.numel()
    again = load_stdlib()
    assert torch.equal(again.train, corpus.train)
    assert torch.equal(again.heldout, corpus.heldout)


def test_stdlib_disk_cache_gives_identical_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOESWARM_CACHE_DIR", str(tmp_path))
    reference = load_stdlib()
    data_mod._stdlib_corpus.cache_clear()
    fresh = load_stdlib()  # no cache file yet: reads every file and writes one
    assert len(list(tmp_path.glob("stdlib-*.bin"))) == 1
    data_mod._stdlib_corpus.cache_clear()
    cached = load_stdlib()  # from the cache file
    data_mod._stdlib_corpus.cache_clear()
    for corpus in (fresh, cached):
        assert torch.equal(corpus.train, reference.train)
        assert torch.equal(corpus.heldout, reference.heldout)
        assert (corpus.train_files, corpus.heldout_files) == (reference.train_files, reference.heldout_files)


def test_user_directory_split_is_disjoint_and_independent_of_location(tmp_path: Path) -> None:
    files = _text_tree(tmp_path / "a", 150)
    _text_tree(tmp_path / "b" / "deeper", 150)
    (tmp_path / "a" / "blob.bin").write_bytes(b"\0\1\2" * 100)  # looks binary: skipped
    (tmp_path / "a" / ".hidden").write_text("secret = 1\n")  # hidden: skipped
    first = load_paths([str(tmp_path / "a")])
    second = load_paths([str(tmp_path / "b" / "deeper")])
    assert torch.equal(first.train, second.train)
    assert torch.equal(first.heldout, second.heldout)
    assert first.train_files + first.heldout_files == 150
    train, held = bytes(first.train.numpy()), bytes(first.heldout.numpy())
    for rel, body in files.items():
        side = held if is_heldout(rel) else train
        other = train if is_heldout(rel) else held
        assert body in side, rel
        assert body.splitlines()[0] not in other, rel
    assert b"secret" not in train + held
    assert b"\0" not in train + held


def test_globs_and_single_files(tmp_path: Path) -> None:
    _text_tree(tmp_path, 30)
    via_glob = load_paths([str(tmp_path / "pkg*" / "*.py")])
    assert via_glob.train_files + via_glob.heldout_files == 30
    single = tmp_path / "one.txt"
    single.write_bytes(bytes(range(32, 127)) * 100)
    corpus = load_paths([str(single)])  # one file cannot be split by file: its tail is held out
    assert corpus.train.numel() + corpus.heldout.numel() == single.stat().st_size
    assert 0.05 < corpus.heldout.numel() / single.stat().st_size < 0.07
    assert bytes(corpus.heldout.numpy()) == single.read_bytes()[-corpus.heldout.numel() :]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file or directory"),
        ("empty file", "empty"),
        ("glob without match", "no files match"),
        ("directory of binaries", "no text files found"),
    ],
)
def test_bad_data_is_a_data_error(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "input"
    if kind == "empty file":
        path.write_text("")
    elif kind == "glob without match":
        path = tmp_path / "nothing-*.txt"
    elif kind == "directory of binaries":
        path.mkdir()
        (path / "a.bin").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match=message):
        load_paths([str(path)])


def test_shards_own_disjoint_bytes_and_sample_only_their_windows() -> None:
    rng = random.Random(3)
    raw = bytes(rng.randrange(256) for _ in range(5000))
    corpus = _corpus(raw)
    context, block = 16, 256
    whole = corpus.shard(0, 1, context, block_bytes=block)
    covered: list[set[int]] = []
    for i in range(3):
        shard = corpus.shard(i, 3, context, block_bytes=block)
        starts = shard.window_starts()
        assert shard.windows == starts.numel()
        covered.append({int(s) + j for s in starts for j in range(context + 1)})
        assert set(starts.tolist()) <= set(whole.window_starts().tolist())
        windows = corpus.train.unfold(0, context + 1, 1).long()  # every window of the stream
        sampled = shard.sample(40, torch.Generator().manual_seed(i))
        assert sampled.shape == (40, context + 1)
        for row in sampled:
            hits = (windows == row).all(dim=1).nonzero().flatten().tolist()
            assert hits, "sampled window is not in the stream"
            assert set(hits) <= set(starts.tolist())
    assert not covered[0] & covered[1]
    assert not covered[0] & covered[2]
    assert not covered[1] & covered[2]
    assert (
        sum(s.numel() for s in (corpus.shard(i, 3, context, block).window_starts() for i in range(3)))
        == whole.windows
    )


def test_sampling_is_reproducible_from_the_generator() -> None:
    corpus = load_stdlib()
    shard = corpus.shard(1, 4, 128)
    a = shard.sample(8, torch.Generator().manual_seed(11))
    b = shard.sample(8, torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    assert a.dtype == torch.int64
    assert int(a.max()) < 256
    held_a = corpus.heldout_batches(2, 4, 128, seed=0)
    held_b = corpus.heldout_batches(2, 4, 128, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(held_a, held_b, strict=True))


def test_too_small_for_a_shard_is_a_data_error() -> None:
    corpus = _corpus(b"a" * 300)
    corpus.shard(0, 1, 128)
    with pytest.raises(DataError, match="shard 1 of 2"):
        corpus.shard(1, 2, 128)
    with pytest.raises(DataError, match="held-out"):
        _corpus(b"a" * 300, heldout=b"b" * 10).heldout_batches(1, 1, 128)
