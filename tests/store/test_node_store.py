from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moeswarm.store import DataDirLocked, NodeStore

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_layout_and_permissions(tmp_path: Path) -> None:
    data_dir = tmp_path / ".moeswarm" / "node-a"
    with NodeStore(data_dir) as store:
        for sub in ("chunks", "checkpoints", "log", "metrics"):
            assert stat.S_IMODE((data_dir / sub).stat().st_mode) == 0o700, sub
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert not store.key_path.exists()  # the identity module writes the key, not the store
        assert store.metrics_dir == data_dir / "metrics"


def test_a_second_process_cannot_open_a_held_data_dir(tmp_path: Path) -> None:
    probe = "import sys\nfrom moeswarm.store import NodeStore\nNodeStore(sys.argv[1])\n"
    with NodeStore(tmp_path):
        other = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=60, check=False,
        )
        assert other.returncode != 0
        assert "DataDirLocked" in other.stderr
        assert "in use by another process" in other.stderr
    with NodeStore(tmp_path):  # released on close
        pass


def test_locked_in_process_too(tmp_path: Path) -> None:
    with NodeStore(tmp_path), pytest.raises(DataDirLocked):
        NodeStore(tmp_path)


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, moeswarm.store, moeswarm.store.log, moeswarm.store.chunks; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_restart_finds_checkpoint_and_log(tmp_path: Path) -> None:
    state = {"w": torch.arange(4, dtype=torch.float32)}
    with NodeStore(tmp_path) as store:
        store.checkpoints.save(3, state, state_hash=b"\x01" * 32)
        store.log.append(b"commit 4")
        store.log.sync()
    with NodeStore(tmp_path) as store:
        latest = store.checkpoints.latest(verify_chunks=True)
        assert latest is not None
        assert latest.round == 3
        assert torch.equal(store.checkpoints.load(3)[0]["w"], state["w"])
        assert list(store.log.replay()) == [b"commit 4"]


def test_collect_garbage_keeps_checkpoints_and_pinned_blobs(tmp_path: Path) -> None:
    with NodeStore(tmp_path) as store:
        for round in (1, 2, 3):
            store.checkpoints.save(round, {"w": torch.full((8,), float(round))}, state_hash=bytes(32))
        live_blob = store.chunks.put(b"delta of round 4, not yet committed")
        dead_blob = store.chunks.put(b"delta of round 1, long committed")
        result = store.collect_garbage(keep_checkpoints=2, pinned={live_blob})
        assert store.checkpoints.rounds() == [2, 3]
        assert store.chunks.has(live_blob)
        assert not store.chunks.has(dead_blob)
        assert result.removed == 2  # round 1's tensor and the dead blob
        assert torch.equal(store.checkpoints.load(2)[0]["w"], torch.full((8,), 2.0))


def _age(store: NodeStore, cid: str, seconds: float) -> None:
    path = store.chunks.path_of(cid)
    then = path.stat().st_mtime - seconds
    os.utime(path, (then, then))


def test_collection_spares_blobs_stored_after_the_oldest_kept_checkpoint(tmp_path: Path) -> None:
    """A restarted node replays the log past its checkpoint and needs those rounds' delta blobs,
    whose ids it no longer holds in memory: only blobs from well before the oldest kept checkpoint go."""
    with NodeStore(tmp_path) as store:
        old_blob = store.chunks.put(b"delta of a round before every kept checkpoint")
        recent_blob = store.chunks.put(b"delta of a round after the checkpoint, replayed by a restart")
        for round in (1, 2):
            store.checkpoints.save(round, {"w": torch.full((8,), float(round))}, state_hash=bytes(32))
        _age(store, old_blob, 3600)
        _age(store, recent_blob, 60)
        result = store.collect_garbage(keep_checkpoints=2, margin_s=600)
        assert not store.chunks.has(old_blob)
        assert store.chunks.has(recent_blob)
        assert result.removed == 1
        on_disk = [store.chunks.path_of(cid) for cid in store.chunks.ids()]
        assert (result.kept, result.kept_bytes) == (len(on_disk), sum(p.stat().st_size for p in on_disk))


def test_a_chunk_stored_again_counts_as_recent(tmp_path: Path) -> None:
    with NodeStore(tmp_path) as store:
        blob = store.chunks.put(b"a delta fetched again while catching up")
        store.checkpoints.save(1, {"w": torch.zeros(8)}, state_hash=bytes(32))
        _age(store, blob, 3600)
        assert not store.chunks.store(b"a delta fetched again while catching up").written
        store.collect_garbage(keep_checkpoints=1, margin_s=600)
        assert store.chunks.has(blob)
