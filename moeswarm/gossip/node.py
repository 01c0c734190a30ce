"""One node's gossip: SWIM membership, prioritised push gossip with adaptive fan-out, and scuttlebutt
state sync, behind the pure-core interface (``on_message``, ``on_tick``, ``next_deadline``).

The driver delivers decoded messages with the authenticated sender, calls ``on_tick`` at (or after)
``next_deadline()``, and performs the returned ``Send`` effects; the other effects are events for the
node (membership changes, delivered rumors, changed peer state).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

from moeswarm.gossip.broadcast import BroadcastQueue, QueuedItem
from moeswarm.gossip.config import GossipConfig, Rng
from moeswarm.gossip.effects import Delivered, Effect, Send
from moeswarm.gossip.membership import Member, Membership
from moeswarm.gossip.messages import (
    COUNTER_MAX,
    RUMOR_PAYLOAD_BYTES_MAX,
    Ack,
    GossipMessage,
    MemberSync,
    MemberUpdate,
    Nack,
    Ping,
    PingReq,
    Priority,
    Push,
    Rumor,
    StateDeltas,
    StateDigest,
    Status,
)
from moeswarm.gossip.scuttlebutt import Scuttlebutt

SEEDS_MAX = 16


class GossipNode:
    def __init__(
        self,
        node_id: str,
        *,
        config: GossipConfig,
        rng: Rng,
        now: float,
        seeds: Iterable[str] = (),
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.membership = Membership(node_id, config, rng, now)
        self.state = Scuttlebutt(node_id, config)
        self.rumors: BroadcastQueue[Rumor] = BroadcastQueue(config.queue_items_max)
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._rumor_number = 0
        self._seeds = tuple(s for s in seeds if s != node_id)[:SEEDS_MAX]
        self._next_push = now
        self._next_member_sync = now
        self._next_state_sync = now

    # ---- the node's API ---------------------------------------------------------------------------

    def members(self) -> dict[str, Member]:
        """Every member we know of, ourselves and the dead included (a copy)."""
        return {
            n: Member(m.node, m.incarnation, m.status, m.changed_at)
            for n, m in self.membership.members.items()
        }

    def alive(self) -> list[str]:
        return sorted(n for n, m in self.membership.members.items() if m.status is not Status.DEAD)

    def set_local(self, key: str, value: bytes, now: float) -> None:
        """Publish our own ``key``; peers learn it through anti-entropy within a few sync rounds."""
        self.state.set_local(key, value)

    def get(self, origin: str, key: str) -> bytes | None:
        return self.state.get(origin, key)

    def broadcast(self, payload: bytes, priority: Priority, now: float) -> Rumor:
        """Spread ``payload`` to every member by push gossip; higher priorities get more fan-out."""
        if len(payload) > RUMOR_PAYLOAD_BYTES_MAX:
            raise ValueError(f"a rumor carries at most {RUMOR_PAYLOAD_BYTES_MAX} bytes")
        self._rumor_number = (self._rumor_number + 1) % COUNTER_MAX
        rumor = Rumor(origin=self.node_id, number=self._rumor_number, priority=priority, payload=payload)
        self._remember((rumor.origin, rumor.number))
        self._enqueue_rumor(rumor)
        return rumor

    def loss_estimate(self) -> float:
        """One-way message loss, from the probe round trips: a round trip fails with 1 - (1 - p)^2."""
        round_trip = min(self.membership.loss, 0.99)
        return 1.0 - math.sqrt(1.0 - round_trip)

    # ---- the pure-core interface -----------------------------------------------------------------

    def next_deadline(self) -> float:
        return min(
            self.membership.next_deadline(), self._next_push, self._next_member_sync, self._next_state_sync
        )

    def on_tick(self, now: float) -> list[Effect]:
        effects = self.membership.on_tick(now)
        if now >= self._next_push:
            self._next_push = now + self.config.push_interval_s
            effects += self._push_round()
        if now >= self._next_member_sync:
            self._next_member_sync = now + self.config.member_sync_interval_s
            effects += [
                Send(peer, MemberSync(members=self._table(), reply=True)) for peer in self._sync_peers()
            ]
        if now >= self._next_state_sync:
            self._next_state_sync = now + self.config.state_sync_interval_s
            digest = StateDigest(versions=self.state.digest())
            effects += [Send(peer, digest) for peer in self._sync_peers()]
        return effects

    def on_message(self, msg: GossipMessage, sender: str, now: float) -> list[Effect]:
        if sender == self.node_id:
            return []
        membership = self.membership
        if isinstance(msg, Ping):
            return membership.on_ping(msg, sender, now)
        if isinstance(msg, Ack):
            return membership.on_ack(msg, sender, now)
        if isinstance(msg, PingReq):
            return membership.on_ping_req(msg, sender, now)
        if isinstance(msg, Nack):
            return membership.on_nack(msg, sender, now)
        if isinstance(msg, Push):
            return membership.apply_all(msg.updates, now) + self._receive_rumors(msg.rumors)
        if isinstance(msg, MemberSync):
            effects = membership.apply_all(msg.members, now)
            if msg.reply:
                effects.append(Send(sender, MemberSync(members=self._table(), reply=False)))
            return effects
        if isinstance(msg, StateDigest):
            reply = StateDeltas(entries=self.state.deltas_for(msg.versions), versions=self.state.digest())
            return [Send(sender, reply)]
        if isinstance(msg, StateDeltas):
            changes: list[Effect] = list(self.state.apply(msg.entries))
            if msg.versions is not None:
                missing = self.state.deltas_for(msg.versions)
                if missing:
                    changes.append(Send(sender, StateDeltas(entries=missing)))
            return changes
        raise TypeError(f"not a gossip message: {type(msg).__name__}")

    # ---- push gossip -----------------------------------------------------------------------------

    def _push_round(self) -> list[Effect]:
        """Send queued updates and rumors to F random peers, F set by the most urgent item queued; an
        item of lower priority rides along only to the first peers its own fan-out allows."""
        loss = self.loss_estimate()
        priorities = self.rumors.priorities() | self.membership.updates.priorities()
        peers = self.membership.peers()
        if not priorities or not peers:
            return []
        fanout = max(self.config.fanout(p, loss) for p in priorities)
        effects: list[Effect] = []
        for slot, peer in enumerate(self.rng.sample(peers, min(fanout, len(peers)))):

            def eligible(item: QueuedItem[MemberUpdate] | QueuedItem[Rumor], slot: int = slot) -> bool:
                return self.config.fanout(item.priority, loss) > slot

            updates = self.membership.updates.select(self.config.updates_per_message, eligible)
            rumors = self.rumors.select(self.config.rumors_per_message, eligible)
            if updates or rumors:
                effects.append(Send(peer, Push(updates=tuple(updates), rumors=tuple(rumors))))
        return effects

    def _receive_rumors(self, rumors: tuple[Rumor, ...]) -> list[Effect]:
        effects: list[Effect] = []
        for rumor in rumors:
            key = (rumor.origin, rumor.number)
            if rumor.origin == self.node_id or key in self._seen:
                continue
            self._remember(key)
            self._enqueue_rumor(rumor)
            effects.append(Delivered(rumor))
        return effects

    def _enqueue_rumor(self, rumor: Rumor) -> None:
        limit = self.config.retransmit_limit(self.membership.count(), rumor.priority)
        limit *= self.config.fanout(rumor.priority, self.loss_estimate())
        self.rumors.push(("rumor", rumor.origin, rumor.number), rumor, rumor.priority, limit)

    def _remember(self, key: tuple[str, int]) -> None:
        self._seen[key] = None
        while len(self._seen) > self.config.seen_rumors_max:
            self._seen.popitem(last=False)

    # ---- anti-entropy ----------------------------------------------------------------------------

    def _table(self) -> tuple[MemberUpdate, ...]:
        return tuple(self.membership.snapshot())

    def _sync_peers(self) -> list[str]:
        """One random live peer; the seeds while we know nobody (joining, or cut off)."""
        peers = self.membership.peers()
        if peers:
            return [self.rng.choice(peers)]
        return list(self._seeds)
