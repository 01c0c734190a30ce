"""Nodes given one seed find each other: the hellos carry where each peer listens (peer exchange).

PBFT needs every member to reach every other; an operator who starts each new GPU host with
`--peers <one seed>` must not have to list the whole swarm. Here every node knows only n0's address,
and the four still form a full mesh, a swarm of four, and commit rounds with one state hash.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e_join.procs import (
    show_logs_on_failure,
    static_peer_nodes,
    wait_until,
)
from tests.e2e_join.test_join import all_members, hashes_at

COUNT = 4
START_S_MAX = 120.0


@pytest.mark.e2e
def test_nodes_that_know_one_seed_form_a_full_mesh_and_a_swarm(tmp_path: Path) -> None:
    nodes = static_peer_nodes(tmp_path, COUNT, seeds=1)  # every node knows only n0's address
    with show_logs_on_failure(nodes):
        for node in nodes:
            node.start()
        wait_until("every node is connected to the three others", START_S_MAX,
                   lambda: all(n.status().get("peers_connected") == COUNT - 1 for n in nodes))
        wait_until("the four form one swarm and commit two rounds", START_S_MAX,
                   lambda: all_members(nodes, COUNT, round_min=2))
        hashes = hashes_at(nodes, 2)
        assert len(set(hashes.values())) == 1, f"state hashes differ at round 2: {hashes}"
        assert sum("forming a genesis" in n.log_text() for n in nodes) >= 1
