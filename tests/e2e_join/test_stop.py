"""A node told to stop exits promptly and cleanly whatever it is doing: in the middle of a long round
of training, or with training paused. Fly kills a Machine that overruns `kill_timeout`, Kubernetes a
pod that overruns its grace period; a stop that waits for a round to finish would be killed instead."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.e2e_join.procs import (
    Node,
    free_tcp_port,
    node_argv,
    node_env,
    show_logs_on_failure,
    wait_until,
    write_corpus,
)

START_S_MAX = 90.0
STOP_S_MAX = 30.0


def lone_node(tmp_path: Path, inner_steps: int, extra: Sequence[str] = ()) -> Node:
    """A swarm of one (its own genesis): no peer is needed to reach a running round."""
    data = write_corpus(tmp_path / "corpus.txt", 200_000)
    data_dir = tmp_path / "nodes" / "n0"
    extra = ["--bootstrap-nodes", "1", "--data", str(data), "--inner-steps", str(inner_steps), "--batch-size", "4",
             "--device", "cpu", "--region", "local", "--drain-timeout-s", "20", *extra]
    argv = node_argv("n0", data_dir, free_tcp_port(), free_tcp_port(), extra)
    token = secrets.token_hex(16)
    return Node("n0", 0, int(argv[argv.index("--admin-port") + 1]), data_dir, argv,
                node_env(secrets.token_hex(32), token), token)


def stop_and_wait(node: Node) -> int:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    wait_until("the node exits after SIGTERM", STOP_S_MAX, lambda: not node.alive(), about=node)
    return node.proc.returncode


@pytest.mark.e2e
def test_sigterm_in_the_middle_of_a_long_round_stops_training_and_exits(tmp_path: Path) -> None:
    node = lone_node(tmp_path, inner_steps=1_000_000)  # a round that would take hours
    with show_logs_on_failure([node]):
        node.start()
        wait_until("the node trains", START_S_MAX, lambda: node.status().get("phase") == "train")
        assert stop_and_wait(node) == 0
        assert "stopped" in node.log_text()


@pytest.mark.e2e
def test_sigterm_while_training_is_paused_exits(tmp_path: Path) -> None:
    node = lone_node(tmp_path, inner_steps=2)
    with show_logs_on_failure([node]):
        node.start()
        wait_until("a round commits", START_S_MAX, lambda: int(node.status().get("round", 0)) >= 1)
        assert node.post("/v1/training/pause") in (200, 202)
        wait_until("the node is paused", STOP_S_MAX, lambda: node.status().get("phase") == "paused")
        assert stop_and_wait(node) == 0
        assert "stopped" in node.log_text()
