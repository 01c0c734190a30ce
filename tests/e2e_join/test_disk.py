"""A node's data volume does not fill up: old checkpoints' chunks and old delta blobs are collected,
while what a restart needs stays. Every checkpoint writes the chunks that changed and every round
stores a delta blob, so without collection a long run ends with a full disk and a dead node."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from moeswarm.store import NodeStore
from tests.e2e_join.procs import show_logs_on_failure, wait_until
from tests.e2e_join.test_stop import START_S_MAX, lone_node, stop_and_wait

AGE_S = 2 * 3600  # far beyond the node's collection margin (10 minutes at least)
ROUNDS_S_MAX = 90.0


def _chunk_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "chunks").glob("*/*") if p.is_file() and not p.name.startswith(".")]


@pytest.mark.e2e
def test_old_chunks_are_collected_and_a_restart_still_resumes(tmp_path: Path) -> None:
    node = lone_node(tmp_path, inner_steps=2, extra=["--checkpoint-interval-rounds", "1"])
    with show_logs_on_failure([node]):
        node.start()
        wait_until("five rounds commit", START_S_MAX, lambda: int(node.status().get("round", 0)) >= 5, about=node)
        # Make every chunk stored so far look hours old, as on a node that has run for a day.
        for path in _chunk_files(node.data_dir):
            then = time.time() - AGE_S
            os.utime(path, (then, then))
        base = int(node.status().get("round", 0))
        collected = wait_until("old chunks are collected", ROUNDS_S_MAX,
                               lambda: re.search(r"collected (\d+) chunks", node.log_text()), about=node)
        assert int(collected.group(1)) > 0
        # what an operator watches for the volume: /v1/status and the moeswarm_store_bytes gauge
        assert int(node.status().get("store_bytes", 0)) > 0
        wait_until(f"round {base + 4} commits", ROUNDS_S_MAX,
                   lambda: int(node.status().get("round", 0)) >= base + 4, about=node)
        assert stop_and_wait(node) == 0

        # What is left of the old chunks is what the kept checkpoints still name (tensors that have
        # not changed since); a restart loads and verifies the newest checkpoint from them.
        aged = {p.name for p in _chunk_files(node.data_dir) if p.stat().st_mtime < time.time() - AGE_S / 2}
        with NodeStore(node.data_dir) as store:
            named = store.checkpoints.referenced_chunks()
        assert aged <= named, f"{len(aged - named)} old chunks no kept checkpoint names survived"
        node.start()
        resumed = wait_until("the node resumes from its checkpoint", START_S_MAX,
                             lambda: re.findall(r"resumed from checkpoint of round (\d+)", node.log_text()) or None,
                             about=node)
        assert int(resumed[-1]) >= base + 3
        wait_until("it commits again", ROUNDS_S_MAX,
                   lambda: int(node.status().get("round", 0)) > int(resumed[-1]), about=node)
