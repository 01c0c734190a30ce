"""SWIM rules and the probe cycle, driving one Membership directly."""

from __future__ import annotations

import random

from moeswarm.gossip.config import GossipConfig
from moeswarm.gossip.effects import Alive, Dead, Effect, Joined, Send, Suspect
from moeswarm.gossip.membership import Membership
from moeswarm.gossip.messages import Ack, MemberUpdate, Nack, Ping, PingReq, Status
from tests.gossip.sim import node_ids

ME, A, B, C, D = node_ids(5, seed=0)


def update(node: str, incarnation: int, status: Status, origin: str | None = None) -> MemberUpdate:
    return MemberUpdate(node=node, incarnation=incarnation, status=status, origin=origin or node)


def group(lifeguard: bool = True) -> Membership:
    m = Membership(ME, GossipConfig(lifeguard=lifeguard), random.Random(1), now=0.0)
    m.apply_all([update(n, 0, Status.ALIVE) for n in (A, B, C, D)], 0.0)
    return m


def sends(effects: list[Effect], kind: type) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and isinstance(e.msg, kind)]


def test_new_members_are_announced_once() -> None:
    m = Membership(ME, GossipConfig(), random.Random(1), now=0.0)
    assert m.apply_all([update(A, 0, Status.ALIVE)], 0.0) == [Joined(A, 0)]
    assert m.apply_all([update(A, 0, Status.ALIVE)], 0.0) == []
    assert m.peers() == [A]


def test_incarnations_order_the_claims() -> None:
    m = group()
    assert m.apply_all([update(A, 0, Status.SUSPECT, B)], 1.0) == [Suspect(A, 0, B)]
    assert m.apply_all([update(A, 0, Status.ALIVE)], 1.0) == []  # same incarnation: suspect wins
    assert m.apply_all([update(A, 1, Status.ALIVE)], 1.0) == [Alive(A, 1)]  # refuted
    assert m.apply_all([update(A, 0, Status.DEAD, B)], 1.0) == []  # stale
    assert m.apply_all([update(A, 1, Status.DEAD, B)], 1.0) == [Dead(A, 1)]
    assert m.apply_all([update(A, 1, Status.SUSPECT, B)], 1.0) == []  # dead stays dead
    assert m.apply_all([update(A, 2, Status.ALIVE)], 1.0) == [Alive(A, 2)]  # rejoined
    assert m.apply_all([update("f" * 64, 0, Status.SUSPECT, B)], 1.0) == []  # unknown: ignored


def test_a_suspected_node_refutes_with_a_higher_incarnation() -> None:
    m = group()
    m.updates.select(100)  # the join announcements have now been sent once each
    m.apply_all([update(ME, 0, Status.SUSPECT, A)], 1.0)
    assert m.incarnation == 1
    assert m.awareness.score == 1
    assert m.updates.select(1) == [update(ME, 1, Status.ALIVE)]  # the fresh refutation goes first
    m.apply_all([update(ME, 5, Status.DEAD, A)], 2.0)
    assert m.incarnation == 6


def run_until_sent(m: Membership, kind: type, start: float, end: float) -> tuple[float, list[Send]]:
    now = start
    while now <= end:
        found = sends(m.on_tick(now), kind)
        if found:
            return now, found
        now = max(now + 1e-3, m.next_deadline())
    raise AssertionError(f"no {kind.__name__} sent by {end}")


def test_probe_escalates_to_indirect_probes_then_suspicion_then_death() -> None:
    m = group()
    now, pings = run_until_sent(m, Ping, 0.0, 1.0)
    target = pings[0].to
    ping = pings[0].msg
    assert isinstance(ping, Ping)
    assert ping.target == target
    now, requests = run_until_sent(m, PingReq, now, now + 1.0)
    assert len(requests) == 3
    assert target not in {r.to for r in requests}
    events: list[Effect] = []
    while not any(isinstance(e, Dead) for e in events):
        now = m.next_deadline()
        events += m.on_tick(now)
        assert now < 60.0
    suspects = [e for e in events if isinstance(e, Suspect)]
    assert suspects[0].node == target
    assert suspects[0].accuser == ME
    assert next(e for e in events if isinstance(e, Dead)).node == target
    assert m.awareness.score >= 1  # failed probes with missing nacks count against our own health


def test_an_ack_in_time_keeps_the_target_alive() -> None:
    m = group()
    now, pings = run_until_sent(m, Ping, 0.0, 1.0)
    ping = pings[0].msg
    assert isinstance(ping, Ping)
    assert m.on_ack(Ack(seq=ping.seq), pings[0].to, now + 0.01) == []
    events = []
    end = now + 5.0
    while now < end:
        now = m.next_deadline()
        events += [e for e in m.on_tick(now) if isinstance(e, Suspect) and e.node == pings[0].to]
    assert not events


def test_relay_forwards_the_targets_ack_or_answers_with_a_nack() -> None:
    m = group()
    effects = m.on_ping_req(PingReq(seq=77, target=B), A, 5.0)
    relay_ping = sends(effects, Ping)[0]
    assert relay_ping.to == B
    assert isinstance(relay_ping.msg, Ping)
    forwarded = sends(m.on_ack(Ack(seq=relay_ping.msg.seq), B, 5.1), Ack)
    assert [(s.to, s.msg.seq) for s in forwarded if isinstance(s.msg, Ack)] == [(A, 77)]

    effects = m.on_ping_req(PingReq(seq=78, target=C), A, 6.0)
    nacks: list[Send] = []
    now = 6.0
    while not nacks and now < 8.0:
        now = max(now + 1e-3, m.next_deadline())
        nacks = sends(m.on_tick(now), Nack)
    assert [(s.to, s.msg.seq) for s in nacks if isinstance(s.msg, Nack)] == [(A, 78)]


def test_plain_swim_sends_no_nacks() -> None:
    m = group(lifeguard=False)
    m.on_ping_req(PingReq(seq=78, target=C), A, 6.0)
    now = 6.0
    for _ in range(50):
        now = max(now + 1e-3, m.next_deadline())
        assert not sends(m.on_tick(now), Nack)


def test_ping_for_someone_else_is_not_acked_and_pings_carry_updates() -> None:
    m = group()
    assert sends(m.on_ping(Ping(seq=1, target=A), B, 1.0), Ack) == []
    acks = sends(m.on_ping(Ping(seq=2, target=ME), B, 1.0), Ack)
    assert len(acks) == 1
    assert isinstance(acks[0].msg, Ack)
    assert acks[0].msg.updates  # the join announcements ride along


def test_a_ping_to_a_suspect_carries_the_suspicion_first() -> None:
    m = group()
    m.apply_all([update(A, 0, Status.SUSPECT, B)], 0.0)
    assert m.piggyback(buddy=A)[0] == update(A, 0, Status.SUSPECT, ME)
