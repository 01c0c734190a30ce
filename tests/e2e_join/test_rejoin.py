"""A node that was voted out while it was down comes back as a member when it is restarted.

SWIM declares a killed node dead; once it has stayed gone for the dead-removal grace the others
commit its removal and carry on at n-1. Restarted on its data dir, the node learns that it was
removed, asks to join again like a new node, takes the state by transfer, and is a member with the
swarm's state hash again — what an operator expects after a host was down for a few minutes.
"""

from __future__ import annotations

import re
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
REMOVAL_S_MAX = 60.0
REJOIN_S_MAX = 120.0
ROUNDS_S_MAX = 60.0
GRACE_S = 3.0


@pytest.mark.e2e
def test_a_node_voted_out_while_down_rejoins_when_restarted(tmp_path: Path) -> None:
    nodes = static_peer_nodes(tmp_path, COUNT, seeds=COUNT, extra=[
        "--round-deadline-s", "20", "--dead-removal-grace-s", str(GRACE_S), "--checkpoint-interval-rounds", "2"])
    with show_logs_on_failure(nodes):
        for node in nodes:
            node.start()
        # past round 2, so the victim has a checkpoint and restarts as a member of the old epoch
        wait_until("four nodes form a swarm and commit three rounds", START_S_MAX,
                   lambda: all_members(nodes, COUNT, round_min=3))
        primary = nodes[0].status().get("primary")
        victim = next(n for n in nodes if n.status().get("node_id") != primary)
        others = [n for n in nodes if n is not victim]
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc.wait()

        wait_until("the others vote the dead node out", REMOVAL_S_MAX, lambda: all_members(others, COUNT - 1))
        base = max(int(n.status().get("round", 0)) for n in others)
        wait_until(f"the three commit round {base + 1}", ROUNDS_S_MAX,
                   lambda: all_members(others, COUNT - 1, round_min=base + 1))

        victim.start()
        wait_until("the restarted node is a member again", REJOIN_S_MAX, lambda: all_members(nodes, COUNT),
                   about=victim)
        # its membership loop logs the join on its next tick, a moment after the status says member
        joined = wait_until("the restarted node logs that it joined", ROUNDS_S_MAX,
                            lambda: re.findall(r"joined the swarm at round (\d+)", victim.log_text()) or None, about=victim)
        assert "asking to join again" in victim.log_text().split(" up: peers on ")[-1]
        join_round = int(joined[-1])
        wait_until(f"every node has committed round {join_round + 2}", ROUNDS_S_MAX,
                   lambda: all_members(nodes, COUNT, round_min=join_round + 2))
        hashes = hashes_at(nodes, join_round + 2)
        assert len(set(hashes.values())) == 1, f"state hashes differ at round {join_round + 2}: {hashes}"
