from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest
import zstandard

from moeswarm.store.chunks import ChunkStore, chunk_id, validate_chunk_id
from moeswarm.store.errors import ChunkCorrupt, ChunkMissing, ChunkTooLarge, InvalidChunkId
from tests.store.fsync_counter import count_fsyncs


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "chunks")


def test_put_get_round_trip_and_id_is_blake3_of_uncompressed_bytes(store: ChunkStore) -> None:
    data = os.urandom(10_000) + b"\x00" * 50_000
    cid = store.put(data)
    assert cid == blake3.blake3(data).hexdigest()
    assert store.has(cid)
    assert store.get(cid) == data
    # stored compressed, under the fan-out directory named by the first two hex digits
    path = store.root / cid[:2] / cid
    assert path.is_file()
    assert path.stat().st_size < len(data)
    assert zstandard.ZstdDecompressor().decompress(path.read_bytes()) == data


def test_empty_chunk_round_trips(store: ChunkStore) -> None:
    assert store.get(store.put(b"")) == b""


def test_same_content_is_stored_once(store: ChunkStore) -> None:
    first = store.store(b"hello swarm")
    inode = store.path_of(first.chunk_id).stat().st_ino
    second = store.store(bytearray(b"hello swarm"))
    assert (first.written, second.written) == (True, False)
    assert first.chunk_id == second.chunk_id
    assert store.path_of(first.chunk_id).stat().st_ino == inode  # not written again (a write renames)
    assert (store.chunks_written, store.chunks_reused) == (1, 1)
    assert store.stats().chunks == 1


def test_put_with_expected_id_rejects_mismatched_content(store: ChunkStore) -> None:
    wrong = chunk_id(b"something else")
    with pytest.raises(ChunkCorrupt):
        store.put(b"payload", expect=wrong)
    assert not store.has(wrong)
    assert store.stats().chunks == 0
    assert store.put(b"payload", expect=chunk_id(b"payload")) == chunk_id(b"payload")


def test_flipped_byte_on_disk_is_detected(store: ChunkStore) -> None:
    cid = store.put(os.urandom(4096))
    path = store.path_of(cid)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChunkCorrupt):
        store.get(cid)
    with pytest.raises(ChunkCorrupt):
        b"".join(store.iter_bytes(cid))


def test_valid_frame_under_the_wrong_name_is_detected(store: ChunkStore) -> None:
    cid = store.put(b"original content")
    other = zstandard.ZstdCompressor().compress(b"substituted content")
    store.path_of(cid).write_bytes(other)
    with pytest.raises(ChunkCorrupt, match="hashes to"):
        store.get(cid)


def test_garbage_file_is_corrupt_not_a_crash(store: ChunkStore) -> None:
    cid = chunk_id(b"x")
    store.path_of(cid).parent.mkdir(parents=True)
    store.path_of(cid).write_bytes(b"not zstd at all")
    with pytest.raises(ChunkCorrupt):
        store.get(cid)


def test_frame_declaring_more_than_the_bound_is_refused_before_inflating(tmp_path: Path) -> None:
    big = ChunkStore(tmp_path / "big")
    cid = big.put(b"\x00" * 5000)
    small = ChunkStore(tmp_path / "big", chunk_bytes_max=1000)
    with pytest.raises(ChunkCorrupt, match="declares 5000 bytes"):
        small.get(cid)
    with pytest.raises(ChunkTooLarge):
        small.put(b"\x00" * 1001)


def test_missing_chunk(store: ChunkStore) -> None:
    cid = chunk_id(b"never stored")
    assert not store.has(cid)
    with pytest.raises(ChunkMissing):
        store.get(cid)
    with pytest.raises(ChunkMissing):
        store.size_of(cid)
    with pytest.raises(ChunkMissing):
        list(store.iter_bytes(cid))


@pytest.mark.parametrize(
    "bad",
    [
        "../" + "a" * 61,
        "/etc/passwd",
        "..",
        "",
        "A" * 64,
        "g" * 64,
        "a" * 63,
        "a" * 65,
        "aa/" + "b" * 61,
        "a" * 63 + "\n",
        "a" * 62 + "\x00a",
        None,
        b"a" * 64,
    ],
)
def test_malformed_ids_are_rejected_before_touching_files(store: ChunkStore, bad: object) -> None:
    with pytest.raises(InvalidChunkId):
        validate_chunk_id(bad)
    for call in (store.get, store.has, store.delete, store.size_of, store.path_of):
        with pytest.raises(InvalidChunkId):
            call(bad)  # type: ignore[arg-type]


def test_iter_bytes_streams_in_bounded_pieces(store: ChunkStore) -> None:
    data = os.urandom(300_000)
    cid = store.put(data)
    pieces = list(store.iter_bytes(cid, piece_bytes=65_536))
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= 65_536
    assert store.size_of(cid) == len(data)
    with store.open_compressed(cid) as handle:
        assert zstandard.ZstdDecompressor().decompress(handle.read()) == data


def test_collect_keeps_only_referenced_chunks(store: ChunkStore) -> None:
    keep = {store.put(b"kept one"), store.put(b"kept two")}
    dropped = [store.put(f"dropped {i}".encode()) for i in range(5)]
    result = store.collect(keep)
    assert (result.removed, result.kept) == (5, 2)
    assert result.freed_bytes > 0
    assert set(store.ids()) == keep
    assert not any(store.has(cid) for cid in dropped)
    assert store.delete(next(iter(keep))) is True
    assert store.delete(dropped[0]) is False


def test_stats_count_compressed_bytes_on_disk(store: ChunkStore) -> None:
    ids = [store.put(os.urandom(1000)) for _ in range(3)]
    stats = store.stats()
    assert stats.chunks == 3
    assert stats.stored_bytes == sum(store.path_of(cid).stat().st_size for cid in ids)
    assert store.bytes_written == stats.stored_bytes


def test_writes_are_fsynced_and_leave_no_temp_files(store: ChunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = count_fsyncs(monkeypatch)
    cid = store.put(b"durable")
    assert len(synced) >= 2  # the file, then the directory that names it
    before = len(synced)
    store.put(b"durable")  # already there: nothing written, nothing synced
    assert len(synced) == before
    assert [p.name for p in store.path_of(cid).parent.iterdir()] == [cid]


def test_temp_files_of_an_interrupted_write_are_removed_by_the_owner(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "chunks")
    cid = store.put(b"whole")
    leftover = store.path_of(cid).parent / f".{cid}.abc123.tmp"
    leftover.write_bytes(b"half a fra")
    reader = ChunkStore(tmp_path / "chunks")  # opening alone never deletes (a writer may be live)
    assert leftover.exists()
    assert list(reader.ids()) == [cid]
    assert reader.remove_stale_temps() == 1
    assert not leftover.exists()
    assert reader.get(cid) == b"whole"
