"""End to end: real `moe-swarm node` processes on 127.0.0.1, checked only through what a user sees.

One honest 4-node swarm is shared by the tests of this module, in file order: agreement on every
round's state hash, the admin token, hostile peer traffic, kill -9 and restart. The last test stops it
and runs the same settings with one poisoning node, to compare the held-out figures.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moeswarm.identity import Identity
from moeswarm.swarm.messages import StateRequest
from tests.e2e.peer import sealed, send_admitted, send_unadmitted, with_bad_signature
from tests.e2e.swarm import LocalSwarm, http

pytestmark = pytest.mark.e2e

NODES = 4
# Tiny rounds; a short round deadline so that rounds without a killed node's delta commit quickly;
# checkpoints every 4 rounds so a restarted node resumes from one and peers can serve state transfer.
NODE_ARGS = ("--round-deadline-s=10", "--checkpoint-interval-rounds=4")
ROUNDS = 3
START_TIMEOUT_S = 240.0  # process start (torch import), bootstrap and three rounds on a busy 2-core machine
ROUND_TIMEOUT_S = 90.0  # one round, including a round deadline and a possible view change
CATCH_UP_TIMEOUT_S = 150.0
BPB_TOLERANCE = 0.02


def _swarm(root: Path, *, byzantine: int = 0) -> LocalSwarm:
    """The honest run and the poisoned run differ only in `byzantine`: same seeds, same settings."""
    return LocalSwarm(root, nodes=NODES, seed=0, inner_steps=3, batch_size=8, node_args=NODE_ARGS,
                      byzantine=byzantine, poison="scale")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    s = _swarm(tmp_path_factory.mktemp("honest"))
    try:
        s.start()
        s.wait_rounds(ROUNDS, START_TIMEOUT_S)
        yield s
    finally:
        s.stop()


def _agreed_rounds(s: LocalSwarm, rounds: range, indices: list[int]) -> dict[int, dict[str, Any]]:
    """Each listed node's record of each round; asserts they agree on hash, contributors and rejections."""
    per_node = {i: s.rounds(i) for i in indices}
    agreed = {}
    for r in rounds:
        records = {i: per_node[i].get(r) for i in indices}
        missing = [s.nodes[i].name for i, rec in records.items() if rec is None]
        assert not missing, f"round {r} not reported by {missing}\n{s.describe()}"
        hashes = {i: rec["state_hash"] for i, rec in records.items() if rec is not None}
        assert len(set(hashes.values())) == 1, f"round {r}: state hashes differ {hashes}\n{s.describe()}"
        first = records[indices[0]]
        assert first is not None
        for rec in records.values():
            assert rec is not None
            assert rec["contributors"] == first["contributors"], f"round {r}: contributors differ"
            assert rec["rejected"] == first["rejected"], f"round {r}: rejections differ"
        agreed[r] = first
    return agreed


def _node_ids(s: LocalSwarm) -> list[str]:
    ids = []
    for i in range(len(s.nodes)):
        status = s.wait_for(f"status of node {i}", functools.partial(s.get, i, "/v1/status"), ROUND_TIMEOUT_S)
        ids.append(status["node_id"])
    return ids


def test_every_node_reports_the_same_state_hash_for_every_round(swarm: LocalSwarm) -> None:
    agreed = _agreed_rounds(swarm, range(1, ROUNDS + 1), list(range(NODES)))
    ids = set(_node_ids(swarm))
    for r, record in agreed.items():
        assert record["contributors"], f"round {r} committed no delta"
        assert set(record["contributors"]) <= ids
        assert record["heldout_bpb"] is not None
    statuses = [swarm.get(i, "/v1/status") for i in range(NODES)]
    assert all(s is not None and s["members"] == NODES and s["member"] for s in statuses), statuses


def test_admin_calls_need_the_bearer_token(swarm: LocalSwarm) -> None:
    port = swarm.nodes[0].admin_port
    for method, path in (("GET", "/v1/status"), ("GET", "/v1/rounds"), ("GET", "/v1/peers"),
                         ("POST", "/v1/drain"), ("POST", "/v1/training/pause"), ("POST", "/v1/checkpoint")):
        missing = http(port, path, method=method)
        assert missing.status == 401, (method, path, missing.status)
        assert missing.body["error"] == "unauthorized"
        assert missing.headers.get("WWW-Authenticate", "").startswith("Bearer")
        wrong = http(port, path, token="not-the-token", method=method)
        assert wrong.status == 403, (method, path, wrong.status)
        assert wrong.body["error"] == "forbidden"
    # none of the refused POSTs took effect: the node is not draining and keeps training
    health = http(port, "/healthz")
    assert health.status == 200
    assert health.body["ok"] is True
    assert health.body["draining"] is False
    status = swarm.get(0, "/v1/status")
    assert status is not None
    assert status["phase"] not in ("draining", "paused")
    assert http(port, "/metrics").status == 200
    assert http(port, "/v1/status", token=swarm.token).status == 200


def test_hostile_peer_frames_are_rejected_and_logged_while_the_node_keeps_serving(swarm: LocalSwarm) -> None:
    target = 1
    node = swarm.nodes[target]
    before = max(swarm.last_round(i) for i in range(NODES))

    # A stranger without the cluster key sends garbage instead of a handshake: refused at admission.
    code = send_unadmitted(node.peer_port, [b"\x00garbage\xff" * 8])
    assert code == 1008
    swarm.wait_for("the admission refusal in the log",
                   lambda: "admission refused for 127.0.0.1: malformed" in swarm.log_text(target), ROUND_TIMEOUT_S)

    # An admitted peer sends an envelope whose signature does not verify, then bytes that are no envelope.
    insider = Identity.generate()
    envelope = sealed(insider, StateRequest(round_min=0))
    send_admitted(node.peer_port, swarm.cluster_key, insider, [with_bad_signature(envelope), os.urandom(200)])
    short = insider.node_id[:12]
    swarm.wait_for("the bad-signature and malformed rejections in the log", lambda: (
        f"rejected a frame from peer {short} at 127.0.0.1: bad_signature" in swarm.log_text(target)
        and f"rejected a frame from peer {short} at 127.0.0.1: malformed" in swarm.log_text(target)), ROUND_TIMEOUT_S)
    metrics = http(node.admin_port, "/metrics").body
    assert 'moeswarm_messages_rejected_total{reason="bad_signature"}' in metrics
    assert 'moeswarm_admissions_refused_total{reason="malformed"}' in metrics

    health = http(node.admin_port, "/healthz")
    assert health.status == 200
    assert health.body["ok"] is True
    swarm.wait_rounds(before + 1, ROUND_TIMEOUT_S)
    _agreed_rounds(swarm, range(before + 1, before + 2), list(range(NODES)))


def test_a_killed_node_restarts_on_its_data_dir_and_reaches_the_current_state_hash(swarm: LocalSwarm) -> None:
    statuses = [swarm.get(i, "/v1/status") for i in range(NODES)]
    assert all(s is not None for s in statuses)
    primaries = {s["primary"] for s in statuses if s is not None}
    victim = next(i for i, s in enumerate(statuses) if s is not None and s["node_id"] not in primaries)
    others = [i for i in range(NODES) if i != victim]
    name = swarm.nodes[victim].name

    # Mid-round: the victim has published its delta and served it to the three others, and the round
    # is not decided yet. So they can commit it at once without the victim's votes, and it is down for
    # seconds only, well inside the grace a SWIM-dead member gets before it is voted out (a member
    # voted out while it was down stops when it comes back instead of rejoining).
    served_before: dict[int, float] = {}

    def published_and_served() -> bool:
        status = swarm.get(victim, "/v1/status")
        served = swarm.metric(victim, "moeswarm_blobs_served_total")
        if status is None or served is None:
            return False
        if status["phase"] != "commit":
            served_before[status["round"]] = served  # this round's delta is not out yet
            return False
        return served >= served_before.get(status["round"], float("inf")) + len(others)

    swarm.wait_for(f"{name} to publish a delta and serve it to the others", published_and_served,
                   2 * ROUND_TIMEOUT_S)
    swarm.kill(victim)
    killed_at = max(served_before)  # the last committed round it knew: the next one was in flight

    # n = 4 tolerates f = 1: the other three commit the round without the victim, which restarts at once.
    swarm.wait_rounds(killed_at + 1, ROUND_TIMEOUT_S, others)
    _agreed_rounds(swarm, range(killed_at + 1, killed_at + 2), others)
    swarm.restart(victim)
    target = max(swarm.last_round(i) for i in others)

    def caught_up() -> int | None:
        mine = swarm.rounds(victim)
        theirs = swarm.rounds(others[0])
        for r in sorted(mine, reverse=True):
            if r >= target and r in theirs:
                return r if mine[r]["state_hash"] == theirs[r]["state_hash"] else None
        return None

    reached = swarm.wait_for(f"{name} to reach round {target}", caught_up, CATCH_UP_TIMEOUT_S)
    assert reached > killed_at
    # and it is a member again like the others: the next round commits on all four with one hash
    swarm.wait_rounds(reached + 1, ROUND_TIMEOUT_S)
    _agreed_rounds(swarm, range(reached + 1, reached + 2), list(range(NODES)))
    status = swarm.get(victim, "/v1/status")
    assert status is not None
    assert status["member"] is True
    assert status["members"] == NODES
    assert "resumed from checkpoint of round" in swarm.log_text(victim), "it did not resume from its checkpoint"


def test_a_poisoning_node_is_rejected_and_the_swarm_learns_as_well_as_an_honest_one(
        swarm: LocalSwarm, tmp_path: Path) -> None:
    holder = next((i for i in range(NODES) if all(r in swarm.rounds(i) for r in range(1, ROUNDS + 1))), None)
    assert holder is not None, f"no node reports rounds 1..{ROUNDS}\n{swarm.describe()}"
    honest = swarm.rounds(holder)
    swarm.stop()  # the rest of this test needs the machine's cores

    poisoned = _swarm(tmp_path / "poisoned", byzantine=1)
    try:
        poisoned.start()
        poisoned.wait_rounds(ROUNDS, START_TIMEOUT_S)
        poisoner = _node_ids(poisoned)[NODES - 1]
        agreed = _agreed_rounds(poisoned, range(1, ROUNDS + 1), list(range(NODES)))
    finally:
        poisoned.stop()
    print("round, honest bpb, bpb with a poisoner, poisoner rejected:")
    for r, rec in agreed.items():
        print(r, honest[r]["heldout_bpb"], rec["heldout_bpb"], rec["rejected"].get(poisoner))
    rejected_rounds = [r for r, rec in agreed.items() if poisoner in rec["rejected"]]
    assert rejected_rounds, f"the poisoner's deltas were never proposed and rejected: {agreed}"
    for r, rec in agreed.items():
        assert poisoner not in rec["contributors"], f"round {r} applied the poisoned delta"
        ratio = rec["heldout_bpb"] / honest[r]["heldout_bpb"]
        assert abs(ratio - 1) <= BPB_TOLERANCE, (
            f"round {r}: held-out bpb {rec['heldout_bpb']:.4f} with a poisoner vs "
            f"{honest[r]['heldout_bpb']:.4f} honest")
