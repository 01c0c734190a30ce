"""Drives the pure gossip core: SWIM liveness, and scuttlebutt state (region, round, load) of every peer.

Gossip traffic rides the peer transport as droppable messages (the core retransmits). What the node
does with it:
- `/v1/peers` shows each peer's SWIM status and its gossiped region, round and load;
- a member that SWIM declares dead *and* whose connection is still gone `--dead-removal-grace-s` later
  is proposed for removal by committed reconfiguration, so its experts move to live nodes (placement is
  recomputed from the member set).
  Requiring both signals keeps a node that is merely slow — a CPU busy training misses probes — from
  being voted out.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

from moeswarm.gossip import (
    Alive,
    Dead,
    Effect,
    GossipConfig,
    GossipNode,
    Joined,
    Send,
    StateChanged,
    Suspect,
)

if TYPE_CHECKING:
    from moeswarm.node.daemon import NodeDaemon

log = logging.getLogger(__name__)

# Probing is gentler than memberlist's LAN profile: a node trains on the same CPUs that answer pings.
GOSSIP_CONFIG = GossipConfig(probe_interval_s=2.0, probe_timeout_s=1.0, suspicion_mult=6.0)
STATE_VALUE_CHARS_MAX = 64


class GossipDriver:
    def __init__(self, daemon: NodeDaemon, seed: int, seeds: list[str]) -> None:
        """`seeds`: the peers connected when the node starts; SWIM learns the rest from them."""
        self.daemon = daemon
        self.node = GossipNode(daemon.identity.node_id, config=GOSSIP_CONFIG, rng=random.Random(seed),
                               now=time.monotonic(), seeds=seeds)
        self.status: dict[str, str] = {}
        self.state: dict[str, dict[str, str]] = {}
        self._local: dict[str, str] = {}
        self._dead_since: dict[str, float] = {}

    def set_local(self, key: str, value: str) -> None:
        """Publish our `key` (a new version only when the value changes)."""
        if self._local.get(key) == value:
            return
        self._local[key] = value
        self.node.set_local(key, value.encode()[:STATE_VALUE_CHARS_MAX], time.monotonic())

    async def tick(self) -> None:
        now = time.monotonic()
        await self._perform(self.node.on_tick(now))
        for node, since in list(self._dead_since.items()):
            # A crashed node restarted on its data dir within the grace keeps its seat: removal is
            # for nodes that stay gone (one that comes back later joins again).
            if now - since >= self.daemon.config.dead_removal_grace_s:
                del self._dead_since[node]
                await self._on_dead(node)

    async def on_message(self, sender: str, msg: Any) -> None:
        await self._perform(self.node.on_message(msg, sender, time.monotonic()))

    async def _perform(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                transport = self.daemon.transport
                if transport is not None:
                    await transport.send(effect.to, self.daemon.seal(effect.msg), kind="gossip", droppable=True)
            elif isinstance(effect, Joined | Alive):
                self.status[effect.node] = "alive"
                self._dead_since.pop(effect.node, None)
            elif isinstance(effect, Suspect):
                self.status[effect.node] = "suspect"
                log.info("node %s: %s suspected (by %s)", self.daemon.identity.short_id, effect.node[:12],
                         effect.accuser[:12])
            elif isinstance(effect, Dead):
                self.status[effect.node] = "dead"
                self._dead_since.setdefault(effect.node, time.monotonic())
            elif isinstance(effect, StateChanged):
                text = effect.value.decode(errors="replace")[:STATE_VALUE_CHARS_MAX]
                self.state.setdefault(effect.origin, {})[effect.key] = text

    async def _on_dead(self, node: str) -> None:
        consensus, transport = self.daemon.consensus, self.daemon.transport
        if consensus is None or transport is None:
            return
        me = self.daemon.identity.node_id
        if me not in consensus.members or node not in consensus.members:
            return
        if node in transport.connected_peers():
            log.info("node %s: SWIM says %s is dead but its connection is up: keeping it",
                     self.daemon.identity.short_id, node[:12])
            return
        log.warning("node %s: %s is dead: proposing its removal", self.daemon.identity.short_id, node[:12])
        await consensus.propose_members(tuple(m for m in consensus.members if m != node))

    def describe(self, node: str) -> dict[str, Any]:
        return {"swim": self.status.get(node, "unknown"), **self.state.get(node, {})}
