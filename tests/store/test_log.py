from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeswarm.store.errors import RecordTooLarge
from moeswarm.store.log import RECORD_HEADER, SEGMENT_MAGIC, ConsensusLog
from tests.store.fsync_counter import count_fsyncs

REPO_ROOT = Path(__file__).resolve().parents[2]


def replayed(root: Path) -> list[bytes]:
    with ConsensusLog(root) as reopened:
        return list(reopened.replay())


def test_records_round_trip_across_reopen(tmp_path: Path) -> None:
    records = [b"", b"prepare 1", b"\x00" * 1000, b"commit 1"]
    with ConsensusLog(tmp_path) as log:
        log.append(records[0])
        log.append_many(records[1:])
        log.sync()
    assert replayed(tmp_path) == records
    with ConsensusLog(tmp_path) as log:  # appends after a reopen go after the old records
        log.append(b"view-change 2")
    assert replayed(tmp_path) == [*records, b"view-change 2"]


def test_sync_calls_fsync_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = ConsensusLog(tmp_path)
    calls = count_fsyncs(monkeypatch)
    log.append(b"vote")
    assert calls == []  # appending alone promises nothing
    log.sync()
    assert len(calls) == 1
    log.sync()  # nothing new: no extra disk flush
    assert len(calls) == 1
    log.append(b"vote 2")
    log.start_segment(5)  # rotation makes the old segment durable first
    assert len(calls) >= 2
    log.close()


def test_torn_tail_is_cut_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = [f"record {i}".encode() * (i + 1) for i in range(6)]
    with ConsensusLog(tmp_path) as log:
        log.append_many(records)
    segment = tmp_path / f"{0:020d}.seg"
    whole = segment.stat().st_size
    last = RECORD_HEADER.size + len(records[-1])
    with segment.open("r+b") as handle:  # a write cut halfway through the last record ...
        handle.truncate(whole - last // 2)
    with segment.open("ab") as handle:  # ... followed by garbage from a reused disk block
        handle.write(b"\xde\xad\xbe\xef" * 7)
    torn_size = segment.stat().st_size
    with caplog.at_level(logging.WARNING, logger="moeswarm.store.log"):
        log = ConsensusLog(tmp_path)
    assert list(log.replay()) == records[:-1]
    assert log.recovery.dropped_bytes == torn_size - (whole - last)
    assert f"dropped {torn_size - (whole - last)} bytes" in caplog.text
    assert segment.stat().st_size == whole - last
    log.append(b"after the crash")
    log.close()
    assert replayed(tmp_path) == [*records[:-1], b"after the crash"]


def test_flipped_byte_in_the_middle_keeps_the_prefix_before_it(tmp_path: Path) -> None:
    with ConsensusLog(tmp_path) as log:
        log.append_many([b"a" * 10, b"b" * 10, b"c" * 10])
    segment = tmp_path / f"{0:020d}.seg"
    raw = bytearray(segment.read_bytes())
    raw[len(SEGMENT_MAGIC) + RECORD_HEADER.size + 10 + RECORD_HEADER.size + 3] ^= 0x01  # inside record b
    segment.write_bytes(bytes(raw))
    assert replayed(tmp_path) == [b"a" * 10]


def test_segments_rotate_and_old_ones_are_dropped(tmp_path: Path) -> None:
    with ConsensusLog(tmp_path) as log:
        log.append(b"round 1")
        log.start_segment(10)
        log.append(b"round 11")
        log.start_segment(20)
        log.append(b"round 21")
        with pytest.raises(ValueError, match="must exceed"):
            log.start_segment(20)
        assert log.segments() == [0, 10, 20]
        assert log.drop_segments_before(20) == 2
        assert log.drop_segments_before(99) == 0  # never the segment being written
        assert log.label == 20
    assert replayed(tmp_path) == [b"round 21"]


def test_corrupt_middle_segment_sets_later_segments_aside(tmp_path: Path) -> None:
    with ConsensusLog(tmp_path) as log:
        log.append_many([b"one", b"two"])
        log.start_segment(1)
        log.append(b"three")
    first = tmp_path / f"{0:020d}.seg"
    first.write_bytes(first.read_bytes()[:-1])
    log = ConsensusLog(tmp_path)
    assert list(log.replay()) == [b"one"]  # a prefix, never a log with a hole in it
    assert log.recovery.quarantined == (f"{1:020d}.seg.corrupt",)
    assert (tmp_path / f"{1:020d}.seg.corrupt").is_file()
    log.close()


def test_record_size_is_bounded(tmp_path: Path) -> None:
    with ConsensusLog(tmp_path, record_bytes_max=100) as log:
        log.append(b"x" * 100)
        with pytest.raises(RecordTooLarge):
            log.append_many([b"ok", b"x" * 101])
        with pytest.raises(TypeError):
            log.append("text")  # type: ignore[arg-type]
    assert replayed(tmp_path) == [b"x" * 100]  # the rejected batch wrote nothing


records_strategy = st.lists(st.binary(max_size=300), max_size=25)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(records_strategy, min_size=1, max_size=4))
def test_random_records_round_trip_through_segments(batches: list[list[bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with ConsensusLog(root) as log:
            for label, batch in enumerate(batches):
                if label:
                    log.start_segment(label)
                log.append_many(batch)
        assert replayed(root) == [record for batch in batches for record in batch]


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=20),
    cut=st.floats(min_value=0, max_value=1),
    flips=st.lists(st.tuples(st.floats(min_value=0, max_value=1), st.integers(1, 255)), max_size=3),
    garbage=st.binary(max_size=64),
)
def test_any_damage_yields_a_prefix_and_never_raises(
    records: list[bytes], cut: float, flips: list[tuple[float, int]], garbage: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with ConsensusLog(root) as log:
            log.append_many(records)
        segment = root / f"{0:020d}.seg"
        raw = bytearray(segment.read_bytes())
        raw = raw[: int(len(raw) * cut)]
        first_damage = len(raw)
        for where, mask in flips:
            if raw:
                index = min(int(len(raw) * where), len(raw) - 1)
                raw[index] ^= mask
                first_damage = min(first_damage, index)
        segment.write_bytes(bytes(raw) + garbage)

        survived = replayed(root)
        assert survived == records[: len(survived)]
        # every record lying wholly before the first damaged byte survives
        offset, intact = len(SEGMENT_MAGIC), 0
        for record in records:
            offset += RECORD_HEADER.size + len(record)
            if offset > first_damage:
                break
            intact += 1
        assert len(survived) >= intact
        with ConsensusLog(root) as log:  # and the repaired log takes appends again
            log.append(b"next")
        assert replayed(root) == [*survived, b"next"]


CHILD = textwrap.dedent(
    """
    import sys
    from moeswarm.store.log import ConsensusLog

    log = ConsensusLog(sys.argv[1])
    for i in range(5_000_000):
        if i and i % 1000 == 0:
            log.start_segment(i)
            log.drop_segments_before(i - 2000)
        log.append(b"%d:" % i * (1 + i % 40))
        if i % 7 == 0:
            log.sync()
        if i == 301:  # just synced
            print("ready", flush=True)
    """
)


def test_kill_9_while_appending_leaves_a_readable_prefix(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO_ROOT, env=env
    )
    try:
        assert child.stdout is not None
        readable, _, _ = select.select([child.stdout], [], [], 30)
        assert readable, "child never started appending"
        assert child.stdout.readline() == b"ready\n"
        time.sleep(0.4)  # let it append (and rotate) for a while, then kill it mid-stride
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    survived = replayed(tmp_path)
    indices = [int(record.split(b":", 1)[0]) for record in survived]
    assert indices, "nothing replayed"
    first = indices[0]
    assert first % 1000 == 0  # replay starts at a segment boundary (older segments were dropped)
    assert indices == list(range(first, first + len(indices)))  # no holes, no duplicates
    assert indices[-1] >= 301  # everything synced before "ready" is there
    for index, record in zip(indices, survived, strict=True):
        assert record == b"%d:" % index * (1 + index % 40)
