"""A running 4-node swarm grows to 5 with a node it finds through a real DNS server, refuses a node
without the cluster key, and carries on at 4 when a node drains.

Every node runs the same command, as every Fly Machine does: discovery through SRV records that a
dnsmasq on a loopback port serves (Kubernetes-shaped, because local nodes share 127.0.0.1 and differ
by port), `--bootstrap-nodes 4`. The fifth node must therefore find out for itself that a swarm is
already running, and join it instead of forming a genesis of its own.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.deploy.dnsmasq import Dnsmasq, Zone, dnsmasq_for_test
from tests.e2e_join.procs import (
    Node,
    free_tcp_port,
    node_argv,
    node_env,
    show_logs_on_failure,
    wait_until,
    write_corpus,
)

SRV_NAME = "_peer._tcp.moe.internal"
FIRST = 4
START_S_MAX = 120.0  # four fresh processes import torch, build the model and find each other
JOIN_S_MAX = 90.0
ROUNDS_S_MAX = 60.0
DRAIN_S_MAX = 60.0
CORPUS_BYTES = 480_000


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[Dnsmasq]:
    yield from dnsmasq_for_test(tmp_path)


def zone(nodes: list[Node]) -> Zone:
    """One SRV record per node, its target a name for 127.0.0.1: what a headless Service publishes."""
    hosts = [("127.0.0.1", f"{n.name}.moe.internal") for n in nodes]
    srv = [(SRV_NAME, f"{n.name}.moe.internal", n.peer_port) for n in nodes]
    return Zone(hosts=hosts, srv=srv, local_domains=("internal",))


def make_node(tmp_path: Path, index: int, dns_port: int, data: Path, key: str, token: str) -> Node:
    name = f"n{index}"
    peer, admin = free_tcp_port(), free_tcp_port()
    extra = [
        "--discovery", f"srv:{SRV_NAME}@127.0.0.1:{dns_port}", "--bootstrap-nodes", str(FIRST),
        "--data", str(data), "--inner-steps", "2", "--batch-size", "4", "--device", "cpu",
        "--seed", str(index), "--round-deadline-s", "20", "--drain-timeout-s", "40", "--region", "local",
    ]
    data_dir = tmp_path / "nodes" / name
    return Node(name, peer, admin, data_dir, node_argv(name, data_dir, peer, admin, extra), node_env(key, token),
                token)


def all_members(nodes: list[Node], count: int, round_min: int = 0) -> list[dict[str, object]] | None:
    statuses = [n.status() for n in nodes]
    ok = all(s.get("member") and s.get("members") == count and int(s.get("round", 0)) >= round_min
             for s in statuses)
    return statuses if ok else None


def hashes_at(nodes: list[Node], r: int) -> dict[str, str]:
    """Each node's state hash after round r, from its own record of that round."""
    hashes = {}
    for node in nodes:
        probe = partial(node.round_hash, r)
        hashes[node.name] = wait_until(f"{node.name} reports round {r}", ROUNDS_S_MAX, probe, about=node)
    return hashes


@pytest.mark.e2e
def test_a_node_found_by_dns_joins_a_stranger_is_refused_and_a_drained_node_leaves(
    tmp_path: Path, dns: Dnsmasq
) -> None:
    key, token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    data = write_corpus(tmp_path / "corpus.txt", CORPUS_BYTES)
    dns.start(Zone(local_domains=("internal",)))
    nodes = [make_node(tmp_path, i, dns.port, data, key, token) for i in range(FIRST + 1)]
    stranger = make_node(tmp_path, FIRST + 1, dns.port, data, secrets.token_urlsafe(24), token)
    first, joiner = nodes[:FIRST], nodes[FIRST]

    with show_logs_on_failure([*nodes, stranger], [dns.log_path]):
        dns.restart(zone(first))
        for node in first:
            node.start()
        wait_until("the first four nodes form a swarm and commit a round", START_S_MAX,
                   lambda: all_members(first, FIRST, round_min=1))

        # --- a fifth node, published in DNS like a new Machine, joins -------------------------
        dns.restart(zone([*first, joiner, stranger]))
        joiner.start()
        stranger.start()
        wait_until("the replica set becomes 5 on every node", JOIN_S_MAX, lambda: all_members(nodes, FIRST + 1))
        joined = wait_until("the fifth node logs that it joined", ROUNDS_S_MAX,
                            lambda: re.search(r"joined the swarm at round (\d+)", joiner.log_text()))
        assert "forming a genesis" not in joiner.log_text()
        join_round = int(joined.group(1))
        # Within two rounds of joining, the newcomer's state hash is the swarm's, bit for bit.
        wait_until(f"every node has committed round {join_round + 2}", ROUNDS_S_MAX,
                   lambda: all_members(nodes, FIRST + 1, round_min=join_round + 2))
        for r in (join_round + 1, join_round + 2):
            hashes = hashes_at(nodes, r)
            assert len(set(hashes.values())) == 1, f"state hashes differ at round {r}: {hashes}"
        assert joiner.status()["experts"], "the joiner was given no experts by placement"

        # --- a node without the cluster key is refused and never becomes a member ---------------
        refused = f"dialing 127.0.0.1:{stranger.peer_port} failed (bad_cluster_signature"
        wait_until("a member logs that it refused the node without the key", ROUNDS_S_MAX,
                   lambda: any(refused in n.log_text() for n in nodes))
        stranger_id = stranger.status().get("node_id")
        assert stranger_id
        assert not stranger.status().get("member")
        assert stranger.status().get("peers_connected") == 0
        for node in nodes:
            peers = node.get("/v1/peers") or {}
            assert stranger_id not in {p.get("node_id") for p in peers.get("peers", [])}
            assert node.status().get("members") == FIRST + 1

        # --- one of the first nodes drains; the other four carry on at n=4 -----------------------
        primary = first[0].status().get("primary")
        leaver = next(n for n in first if n.status().get("node_id") != primary)
        stayers = [n for n in nodes if n is not leaver]
        assert leaver.post("/v1/drain") == 202  # accepted: the node leaves, then exits
        assert leaver.proc is not None
        wait_until("the drained node exits", DRAIN_S_MAX, lambda: leaver.proc is not None and not leaver.alive(),
                   about=leaver)
        assert leaver.proc.returncode == 0
        after = wait_until("the others see 4 members", ROUNDS_S_MAX, lambda: all_members(stayers, FIRST))
        base = max(int(s["round"]) for s in after)  # type: ignore[call-overload]
        wait_until(f"the four commit round {base + 2}", ROUNDS_S_MAX,
                   lambda: all_members(stayers, FIRST, round_min=base + 2))
        hashes = hashes_at(stayers, base + 2)
        assert len(set(hashes.values())) == 1, f"state hashes differ at round {base + 2}: {hashes}"
        records = stayers[0].get(f"/v1/rounds/{base + 2}") or {}
        assert leaver.status() == {}  # it is gone
        assert set(records.get("contributors", [])) <= {s.status()["node_id"] for s in stayers}
