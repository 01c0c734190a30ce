"""SWIM failure detection (Das, Gupta & Motivala 2002) with Lifeguard (Dadgar et al. 2018), as a pure
state machine.

Each probe period the node pings the next member of a shuffled round-robin list. No ack within the probe
timeout: it asks ``indirect_probes`` other members to ping the target for it (ping-req). No ack by the end
of the period: the target becomes *suspect*. The suspicion spreads piggy-backed on every probe message; the
suspect, hearing it, refutes by raising its incarnation number and announcing itself alive. Unrefuted
when its timer expires, the suspect is declared dead. Incarnation numbers order the claims: a claim about
a higher incarnation wins, and at equal incarnation dead beats suspect beats alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moeswarm.gossip.awareness import Awareness
from moeswarm.gossip.broadcast import BroadcastQueue
from moeswarm.gossip.config import GossipConfig, Rng
from moeswarm.gossip.effects import Alive, Dead, Effect, Joined, MemberEvent, Send, Suspect
from moeswarm.gossip.messages import (
    COUNTER_MAX,
    MEMBERS_MAX,
    Ack,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
    Priority,
    Status,
)
from moeswarm.gossip.suspicion import Suspicion

RELAY_TIMEOUT_FRACTION = 0.8


@dataclass(slots=True)
class Member:
    node: str
    incarnation: int
    status: Status
    changed_at: float


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    ack_deadline: float
    period_end: float
    acked: bool = False
    asked: bool = False
    helpers: tuple[str, ...] = ()
    nacks: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Relay:
    """We ping ``target`` on behalf of ``requester``, whose probe has sequence number ``their_seq``."""

    requester: str
    their_seq: int
    target: str
    deadline: float


class Membership:
    def __init__(self, node_id: str, config: GossipConfig, rng: Rng, now: float) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.incarnation = 0
        self.members: dict[str, Member] = {node_id: Member(node_id, 0, Status.ALIVE, now)}
        self.awareness = Awareness(config.awareness_max, enabled=config.lifeguard)
        self.updates: BroadcastQueue[MemberUpdate] = BroadcastQueue(config.queue_items_max)
        self.loss = 0.0
        self._suspicions: dict[str, Suspicion] = {}
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._order: list[str] = []
        self._next_probe_at = now
        self._seq = 0
        self._enqueue(self._self_update())

    # ---- queries -------------------------------------------------------------------------------

    def count(self) -> int:
        """Members not known dead, ourselves included: the n in every log n."""
        return sum(1 for m in self.members.values() if m.status is not Status.DEAD)

    def peers(self) -> list[str]:
        return [n for n, m in self.members.items() if n != self.node_id and m.status is not Status.DEAD]

    def snapshot(self) -> list[MemberUpdate]:
        return [
            MemberUpdate(node=m.node, incarnation=m.incarnation, status=m.status, origin=self.node_id)
            for m in self.members.values()
        ]

    def next_deadline(self) -> float:
        times = [self._next_probe_at]
        if self._probe is not None:
            times.append(self._probe.period_end if self._probe.asked else self._probe.ack_deadline)
        times += [relay.deadline for relay in self._relays.values()]
        times += [s.deadline() for s in self._suspicions.values()]
        return min(times)

    # ---- timers --------------------------------------------------------------------------------

    def on_tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        probe = self._probe
        if probe is not None and not probe.asked and now >= probe.ack_deadline:
            self._observe_loss(1.0)
            effects += self._ask_helpers(probe)
        if probe is not None and now >= probe.period_end:
            effects += self._finish_probe(probe, now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                if self.config.lifeguard:
                    effects.append(Send(relay.requester, Nack(seq=relay.their_seq)))
        for node, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline():
                member = self.members[node]
                effects += self._apply(
                    MemberUpdate(
                        node=node, incarnation=member.incarnation, status=Status.DEAD, origin=self.node_id
                    ),
                    now,
                )
        if self._probe is None and now >= self._next_probe_at:
            effects += self._start_probe(now)
        return effects

    def _start_probe(self, now: float) -> list[Effect]:
        target = self._next_target()
        period = self.awareness.scale(self.config.probe_interval_s)
        self._next_probe_at = now + period
        if target is None:
            return []
        seq = self._next_seq()
        timeout = self.awareness.scale(self.config.probe_timeout_s)
        self._probe = _Probe(target, seq, now + timeout, now + period)
        return [Send(target, Ping(seq=seq, target=target, updates=self.piggyback(buddy=target)))]

    def _next_target(self) -> str | None:
        while self._order:
            node = self._order.pop()
            member = self.members.get(node)
            if member is not None and member.status is not Status.DEAD and node != self.node_id:
                return node
        self._order = self.peers()
        self.rng.shuffle(self._order)
        return self._order.pop() if self._order else None

    def _ask_helpers(self, probe: _Probe) -> list[Effect]:
        candidates = [n for n in self.peers() if n != probe.target]
        helpers = self.rng.sample(candidates, min(self.config.indirect_probes, len(candidates)))
        probe.asked = True
        probe.helpers = tuple(helpers)
        request = PingReq(seq=probe.seq, target=probe.target, updates=self.piggyback())
        return [Send(helper, request) for helper in helpers]

    def _finish_probe(self, probe: _Probe, now: float) -> list[Effect]:
        self._probe = None
        if probe.acked:
            return []
        missing_nacks = len([h for h in probe.helpers if h not in probe.nacks])
        self.awareness.apply(1 + (missing_nacks if self.config.lifeguard else 0))
        member = self.members.get(probe.target)
        if member is None or member.status is Status.DEAD:
            return []
        # Already suspect: our own failed probe is an independent confirmation (Lifeguard).
        return self._apply(
            MemberUpdate(
                node=probe.target, incarnation=member.incarnation, status=Status.SUSPECT, origin=self.node_id
            ),
            now,
        )

    # ---- messages ------------------------------------------------------------------------------

    def on_ping(self, msg: Ping, sender: str, now: float) -> list[Effect]:
        effects = self.apply_all(msg.updates, now)
        if msg.target == self.node_id:
            effects.append(Send(sender, Ack(seq=msg.seq, updates=self.piggyback())))
        return effects

    def on_ack(self, msg: Ack, sender: str, now: float) -> list[Effect]:
        effects = self.apply_all(msg.updates, now)
        probe = self._probe
        if probe is not None and msg.seq == probe.seq and not probe.acked:
            probe.acked = True
            if not probe.asked:
                self._observe_loss(0.0)
            self.awareness.apply(-1)
            self._probe = None
        relay = self._relays.pop(msg.seq, None)
        if relay is not None and sender == relay.target:
            effects.append(Send(relay.requester, Ack(seq=relay.their_seq, updates=self.piggyback())))
        return effects

    def on_ping_req(self, msg: PingReq, sender: str, now: float) -> list[Effect]:
        effects = self.apply_all(msg.updates, now)
        if msg.target == self.node_id or msg.target not in self.members:
            return effects
        seq = self._next_seq()
        # Answer (ack or nack) well before the requester's probe period ends.
        self._relays[seq] = _Relay(
            sender, msg.seq, msg.target, now + RELAY_TIMEOUT_FRACTION * self.config.probe_timeout_s
        )
        effects.append(Send(msg.target, Ping(seq=seq, target=msg.target, updates=self.piggyback())))
        return effects

    def on_nack(self, msg: Nack, sender: str, now: float) -> list[Effect]:
        probe = self._probe
        if probe is not None and msg.seq == probe.seq and sender in probe.helpers:
            probe.nacks.add(sender)
        return []

    def _observe_loss(self, sample: float) -> None:
        weight = self.config.loss_ewma_weight
        self.loss = (1 - weight) * self.loss + weight * sample

    # ---- the SWIM rules --------------------------------------------------------------------------

    def apply_all(self, updates: tuple[MemberUpdate, ...] | list[MemberUpdate], now: float) -> list[Effect]:
        effects: list[Effect] = []
        for update in updates:
            effects += self._apply(update, now)
        return effects

    def _apply(self, update: MemberUpdate, now: float) -> list[Effect]:
        if update.node == self.node_id:
            return self._about_us(update)
        member = self.members.get(update.node)
        if update.status is Status.ALIVE:
            return self._alive(update, member, now)
        if member is None or member.status is Status.DEAD or update.incarnation < member.incarnation:
            return []
        if update.status is Status.SUSPECT:
            return self._suspect(update, member, now)
        return self._dead(update, member, now)

    def _about_us(self, update: MemberUpdate) -> list[Effect]:
        """Refute any suspicion or death notice about ourselves by outbidding its incarnation."""
        if update.status is Status.ALIVE or update.incarnation < self.incarnation:
            return []
        self.incarnation = min(COUNTER_MAX, update.incarnation + 1)
        self.members[self.node_id].incarnation = self.incarnation
        self.awareness.apply(1)
        self._enqueue(self._self_update())
        return []

    def _alive(self, update: MemberUpdate, member: Member | None, now: float) -> list[Effect]:
        event: MemberEvent
        if member is None:
            if len(self.members) >= MEMBERS_MAX:
                return []
            self.members[update.node] = Member(update.node, update.incarnation, Status.ALIVE, now)
            self._order.insert(self.rng.randint(0, len(self._order)), update.node)
            event = Joined(update.node, update.incarnation)
        elif update.incarnation > member.incarnation:
            was = member.status
            member.incarnation, member.status, member.changed_at = update.incarnation, Status.ALIVE, now
            self._suspicions.pop(update.node, None)
            if was is Status.ALIVE:
                self._enqueue(update)
                return []
            event = Alive(update.node, update.incarnation)
        else:
            return []
        self._enqueue(update)
        return [event]

    def _suspect(self, update: MemberUpdate, member: Member, now: float) -> list[Effect]:
        if member.status is Status.SUSPECT and update.incarnation == member.incarnation:
            suspicion = self._suspicions.get(update.node)
            if suspicion is not None and self.config.lifeguard and suspicion.confirm(update.origin):
                self._enqueue(update)
            return []
        low, high = self.config.suspicion_timeouts(self.count())
        expected = (
            int(self.config.suspicion_mult) - 2 if self.count() - 2 >= self.config.suspicion_mult - 2 else 0
        )
        self._suspicions[update.node] = Suspicion(
            started=now,
            low_s=low,
            high_s=high,
            expected=expected if self.config.lifeguard else 0,
            accuser=update.origin,
        )
        member.incarnation, member.status, member.changed_at = update.incarnation, Status.SUSPECT, now
        self._enqueue(update)
        return [Suspect(update.node, update.incarnation, update.origin)]

    def _dead(self, update: MemberUpdate, member: Member, now: float) -> list[Effect]:
        member.incarnation, member.status, member.changed_at = update.incarnation, Status.DEAD, now
        self._suspicions.pop(update.node, None)
        if self._probe is not None and self._probe.target == update.node:
            self._probe = None
        self._enqueue(update)
        return [Dead(update.node, update.incarnation)]

    # ---- dissemination ---------------------------------------------------------------------------

    def _self_update(self) -> MemberUpdate:
        return MemberUpdate(
            node=self.node_id, incarnation=self.incarnation, status=Status.ALIVE, origin=self.node_id
        )

    def _enqueue(self, update: MemberUpdate) -> None:
        limit = self.config.retransmit_limit(self.count(), Priority.CRITICAL)
        self.updates.push(("member", update.node), update, Priority.CRITICAL, limit)

    def piggyback(self, buddy: str | None = None) -> tuple[MemberUpdate, ...]:
        """Updates to ride on a probe message. Lifeguard's buddy system: a ping to a suspect carries
        the suspicion first, so the suspect learns of it from the one who probes it and can refute."""
        chosen = self.updates.select(self.config.updates_per_message)
        if buddy is not None and self.config.lifeguard:
            member = self.members.get(buddy)
            if member is not None and member.status is Status.SUSPECT:
                notice = MemberUpdate(
                    node=buddy, incarnation=member.incarnation, status=Status.SUSPECT, origin=self.node_id
                )
                chosen = [notice, *[u for u in chosen if u.node != buddy]][: self.config.updates_per_message]
        return tuple(chosen)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % COUNTER_MAX
        return self._seq
