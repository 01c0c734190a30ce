"""A small deterministic driver for gossip nodes: one event queue, a network with latency and loss, crashes
and slow nodes. Every message goes through ``wire.encode``/``wire.decode`` as on a real link.

One seed draws everything (node ids, each node's RNG, latencies, losses), so a run replays exactly.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from blake3 import blake3

from moeswarm import wire
from moeswarm.gossip import Effect, GossipConfig, GossipMessage, GossipNode, Send, Status
from moeswarm.gossip.messages import MemberUpdate


def node_ids(count: int, seed: int) -> list[str]:
    return [blake3(f"node-{seed}-{i}".encode()).hexdigest() for i in range(count)]


@dataclass
class Network:
    """One-way latency uniform in [low, high] seconds; each message lost with probability ``loss``.

    Each node handles its inbound messages one at a time, ``service_s`` each, in arrival order; a node
    in ``slow`` takes ``factor`` times as long per message, so a backlog builds in its inbound queue,
    while its timers still fire on time -- an event loop whose message handling is CPU-bound, the case
    Lifeguard was designed for (the node's own probes time out with the acks sitting unread)."""

    latency_s: tuple[float, float] = (0.005, 0.05)
    loss: float = 0.0
    service_s: float = 0.0
    slow: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Observed:
    time: float
    node: str
    effect: Effect


class Cluster:
    def __init__(
        self,
        count: int,
        *,
        seed: int,
        config: GossipConfig | None = None,
        network: Network | None = None,
        joined: bool = True,
    ) -> None:
        """``joined``: every node starts knowing every other (a warmed-up group); otherwise each knows
        only the first node as its seed and joins through it."""
        self.rng = random.Random(seed)
        self.config = config or GossipConfig()
        self.network = network or Network()
        self.ids = node_ids(count, seed)
        self.now = 0.0
        self.crashed: set[str] = set()
        self.log: list[Observed] = []
        self.messages_sent = 0
        self.bytes_sent = 0
        self._queue: list[tuple[float, int, str, str, str, bytes]] = []
        self._seq = itertools.count()
        self._tick_at: dict[str, float] = {}
        self._busy_until: dict[str, float] = {}
        self.nodes: dict[str, GossipNode] = {}
        for node_id in self.ids:
            node_rng = random.Random(self.rng.getrandbits(64))
            self.nodes[node_id] = GossipNode(
                node_id, config=self.config, rng=node_rng, now=0.0, seeds=self.ids[:1]
            )
        if joined:
            everyone = [MemberUpdate(node=n, incarnation=0, status=Status.ALIVE, origin=n) for n in self.ids]
            for node in self.nodes.values():
                node.membership.apply_all(everyone, 0.0)
        self.log.clear()
        for node_id in self.ids:
            self._schedule_tick(node_id, self.rng.uniform(0, self.config.probe_interval_s))

    def crash(self, node_id: str) -> None:
        """The node stops: messages to it are dropped and its timers stop firing."""
        self.crashed.add(node_id)

    def restore(self, node_id: str) -> None:
        """The node comes back with its state intact (a paused process, or a partition healing)."""
        self.crashed.discard(node_id)
        self._tick_at.pop(node_id, None)
        self._schedule_tick(node_id, self.now)

    def run_until(self, end: float, stop: Callable[[Cluster], bool] | None = None) -> None:
        while self._queue and self._queue[0][0] <= end:
            time, _, kind, target, sender, data = heapq.heappop(self._queue)
            self.now = time
            if target in self.crashed:
                continue
            if kind == "tick":
                if self._tick_at.get(target) != time:
                    continue
                del self._tick_at[target]
                self._perform(target, self.nodes[target].on_tick(time))
            elif kind == "arrive":
                self._enqueue_inbound(time, target, sender, data)
                continue
            else:
                msg = wire.decode(data)
                self._perform(target, self.nodes[target].on_message(msg, sender, time))  # type: ignore[arg-type]
            self._schedule_tick(target, self.nodes[target].next_deadline())
            if stop is not None and stop(self):
                return
        self.now = max(self.now, end)

    def _perform(self, node_id: str, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(node_id, effect.to, effect.msg)
            else:
                self.log.append(Observed(self.now, node_id, effect))

    def _send(self, sender: str, to: str, msg: GossipMessage) -> None:
        data = wire.encode(msg)
        self.messages_sent += 1
        self.bytes_sent += len(data)
        if self.rng.random() < self.network.loss:
            return
        delay = self.rng.uniform(*self.network.latency_s)
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), "arrive", to, sender, data))

    def _enqueue_inbound(self, time: float, target: str, sender: str, data: bytes) -> None:
        service = self.network.service_s * self.network.slow.get(target, 1.0)
        done = max(time, self._busy_until.get(target, 0.0)) + service
        self._busy_until[target] = done
        heapq.heappush(self._queue, (done, next(self._seq), "msg", target, sender, data))

    def _schedule_tick(self, node_id: str, due: float) -> None:
        due = max(due, self.now)
        current = self._tick_at.get(node_id)
        if current is not None and current <= due:
            return
        self._tick_at[node_id] = due
        heapq.heappush(self._queue, (due, next(self._seq), "tick", node_id, "", b""))

    def events(self, kind: type, about: str | None = None) -> list[Observed]:
        return [
            o
            for o in self.log
            if isinstance(o.effect, kind) and (about is None or getattr(o.effect, "node", None) == about)
        ]
