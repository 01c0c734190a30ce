"""A test cluster: replicas joined by an in-memory, in-order network, driven without sockets or sleeps.

Messages are delivered one at a time in FIFO order; when none are in flight, virtual time jumps to the
earliest replica deadline. Tests cut nodes off (``isolate``), crash and restart them from their
persisted records, and read what each replica delivered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from moeswarm import wire
from moeswarm.consensus import (
    Broadcast,
    Config,
    Deliver,
    Effect,
    FetchState,
    Persist,
    Proposal,
    Replica,
    Send,
    Validation,
)
from moeswarm.identity import Identity, VerifiedSignatureCache
from moeswarm.simulator.app import ChainApp, make_value

STEPS_MAX = 2_000_000


class Cluster:
    def __init__(
        self,
        n: int,
        *,
        config: Config | None = None,
        spare: int = 0,
        roundtrip_codec: bool = False,
    ) -> None:
        self.identities = sorted(
            (Identity.generate(bytes([i + 1]) * 32) for i in range(n + spare)), key=lambda x: x.node_id
        )
        self.by_id = {i.node_id: i for i in self.identities}
        self.index = {i.node_id: k for k, i in enumerate(self.identities)}
        self.initial = tuple(i.node_id for i in self.identities[:n])
        self.config = config or Config(checkpoint_interval=4, window=16, view_timeout=1.0)
        self.cache = VerifiedSignatureCache()
        self.roundtrip_codec = roundtrip_codec
        self.now = 0.0
        self.queue: deque[tuple[str, str, object]] = deque()
        self.isolated: set[str] = set()
        self.crashed: set[str] = set()
        self.records: dict[str, list[object]] = {}
        self.apps: dict[str, ChainApp] = {}
        self.delivered: dict[str, dict[int, Proposal]] = {}
        self.replicas: dict[str, Replica] = {}
        self.invalid: dict[str, Callable[[bytes], bool]] = {}
        for node in self.initial:
            self.boot(node, self.initial)

    # ---------------------------------------------------------------- nodes

    def boot(self, node: str, members: tuple[str, ...], *, epoch: int = 0, start_seq: int = 0) -> Replica:
        self.apps.setdefault(node, ChainApp(self.index[node]))
        self.records.setdefault(node, [])
        self.delivered.setdefault(node, {})
        app = self.apps[node]
        replica = Replica(
            self.by_id[node],
            members,
            self.config,
            lambda seq, value, node=node: self._validate(node, value),
            epoch=epoch,
            epoch_start_seq=start_seq,
            restored=list(self.records[node]),
            applied_seq=app.seq,
            verifier=self.cache.verify,
        )
        self.replicas[node] = replica
        self.crashed.discard(node)
        self.handle(node, replica.start(self.now))
        return replica

    def _validate(self, node: str, value: bytes) -> Validation:
        return self.apps[node].validate(value, self.now)

    def crash(self, node: str) -> None:
        self.crashed.add(node)

    def restart(self, node: str) -> Replica:
        old = self.replicas[node]
        return self.boot(node, old.members, epoch=old.epoch, start_seq=old.ms.start_seq)

    def isolate(self, *nodes: str) -> None:
        self.isolated.update(nodes)

    def heal(self) -> None:
        self.isolated.clear()

    def up(self, node: str) -> bool:
        return node not in self.crashed

    # ---------------------------------------------------------------- driving

    def handle(self, node: str, effects: list[Effect]) -> None:
        replica = self.replicas[node]
        for effect in effects:
            if isinstance(effect, Persist):
                self.records[node].append(wire.decode(wire.encode(effect.record)))
            elif isinstance(effect, Send):
                self.queue.append((node, effect.to, effect.msg))
            elif isinstance(effect, Broadcast):
                for peer in replica.members:
                    if peer != node:
                        self.queue.append((node, peer, effect.msg))
            elif isinstance(effect, Deliver):
                self._deliver(node, effect)
            elif isinstance(effect, FetchState):
                self._fetch_state(node, effect)

    def _deliver(self, node: str, d: Deliver) -> None:
        assert d.seq not in self.delivered[node], f"{node[:6]} decided {d.seq} twice"
        self.delivered[node][d.seq] = d.proposal
        state = self.apps[node].apply(d.seq, d.proposal)
        self.handle(node, self.replicas[node].executed(d.seq, state, self.now))

    def _fetch_state(self, node: str, fs: FetchState) -> None:
        for peer in fs.peers:
            if self.apps[peer].state_at(fs.seq) == fs.state_digest:
                self.apps[node].install(fs.seq, fs.state_digest)
                self.handle(node, self.replicas[node].install_state(fs.seq, fs.state_digest, self.now))
                return

    def _reachable(self, a: str, b: str) -> bool:
        return self.up(a) and self.up(b) and (a in self.isolated) == (b in self.isolated)

    def step(self) -> bool:
        if self.queue:
            sender, to, msg = self.queue.popleft()
            if to in self.replicas and self._reachable(sender, to):
                if self.roundtrip_codec:
                    msg = wire.decode(wire.encode(msg))
                self.handle(to, self.replicas[to].on_message(msg, sender, self.now))
            return True
        deadlines = [
            (d, node)
            for node, r in self.replicas.items()
            if self.up(node) and (d := r.next_deadline()) is not None
        ]
        if not deadlines:
            return False
        when, node = min(deadlines)
        self.now = max(self.now, when)
        self.handle(node, self.replicas[node].on_tick(self.now))
        return True

    def run_until(self, done: Callable[[], bool], *, time_max: float = 600.0) -> None:
        for _ in range(STEPS_MAX):
            if done():
                return
            if self.now > time_max or not self.step():
                break
        assert done(), f"condition not reached by t={self.now:.1f}"

    def propose_everywhere(self, payload: bytes, *, delay: float = 0.0) -> bytes:
        value = make_value(payload, created_at=self.now, delay=delay)
        for node, replica in self.replicas.items():
            if self.up(node) and not replica.removed:
                self.handle(node, replica.propose(value, self.now))
        return value

    def commit_values(self, count: int, *, prefix: bytes = b"v", time_max: float = 600.0) -> None:
        """Propose values one after another, each once the previous is delivered by a quorum."""
        for i in range(count):
            target = max(self.replicas[n].last_delivered for n in self.live()) + 1
            self.propose_everywhere(prefix + str(i).encode())
            self.run_until(lambda t=target: self.last_delivered_by_quorum() >= t, time_max=time_max)

    def live(self) -> list[str]:
        return [
            n for n, r in self.replicas.items() if self.up(n) and n not in self.isolated and not r.removed
        ]

    def last_delivered_by_quorum(self) -> int:
        live = sorted((self.replicas[n].last_delivered for n in self.live()), reverse=True)
        any_replica = next(iter(self.replicas.values()))
        q = any_replica.q
        return live[q - 1] if len(live) >= q else -1

    def assert_agreement(self) -> None:
        decided: dict[int, Proposal] = {}
        for node, seqs in self.delivered.items():
            for seq, proposal in seqs.items():
                assert decided.setdefault(seq, proposal) == proposal, f"disagreement at {seq} ({node[:6]})"
