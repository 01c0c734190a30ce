"""Gossip as pure state machines: SWIM membership with Lifeguard, prioritised push gossip with adaptive
fan-out, and scuttlebutt anti-entropy for per-node key/value state.

``GossipNode`` (node.py) is what a driver runs; one concept per module: ``membership`` (SWIM rules and
probing), ``suspicion`` (the shrinking suspicion timer), ``awareness`` (local health), ``broadcast``
(the transmit-limited priority queue), ``scuttlebutt`` (state sync), ``config`` (tunables and the
log-n formulas), ``messages`` (wire types) and ``effects`` (what comes out).
"""

from moeswarm.gossip.config import GossipConfig
from moeswarm.gossip.effects import Alive, Dead, Delivered, Effect, Joined, Send, StateChanged, Suspect
from moeswarm.gossip.messages import GossipMessage, Priority, Rumor, Status
from moeswarm.gossip.node import GossipNode

__all__ = [
    "Alive",
    "Dead",
    "Delivered",
    "Effect",
    "GossipConfig",
    "GossipMessage",
    "GossipNode",
    "Joined",
    "Priority",
    "Rumor",
    "Send",
    "StateChanged",
    "Status",
    "Suspect",
]
