"""The discrete-event world: replicas, their applications, the network and the faults of one seed.

Events sit in one heap ordered by (virtual time, insertion counter), so a seed replays exactly.
Replicas are driven only through their entry points (``on_message``, ``on_tick``, ``propose``,
``recheck``, ``executed``, ``install_state``) and their effects are performed here: messages go
through the network model, persisted records survive crashes, deliveries feed the application and the
invariant checkers.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from moeswarm import wire
from moeswarm.consensus import (
    Broadcast,
    Config,
    Deliver,
    Effect,
    FetchState,
    Kind,
    Persist,
    Replica,
    Send,
    Validation,
    ViewChanged,
)
from moeswarm.consensus.messages import CheckpointCertificate, PrePrepare
from moeswarm.identity import Identity, VerifiedSignatureCache
from moeswarm.simulator import schedule
from moeswarm.simulator.app import ChainApp, available_at, created_at, make_value
from moeswarm.simulator.byzantine import Byzantine
from moeswarm.simulator.faults import ALL_FAULTS, Plan, draw_plan
from moeswarm.simulator.invariants import Agreement, NoDoubleDecide, Progress, Validity
from moeswarm.simulator.network import Network

EVENTS_MAX = 3_000_000
BYZANTINE_TICK_S = 0.4
SETTLE_S = 1.0  # keep running this long after progress is shown, to catch late violations


def default_consensus() -> Config:
    return Config(checkpoint_interval=4, window=16, view_timeout=1.0, view_timeout_max=8.0, fetch_delay=0.3)


@dataclass(frozen=True, slots=True)
class Settings:
    nodes: int = 4
    byzantine: int = 1
    faults: frozenset[str] = frozenset(ALL_FAULTS)
    fault_phase_s: float = 8.0
    progress_bound_s: float = 90.0
    consensus: Config = field(default_factory=default_consensus)
    codec: bool = False  # send every message through the wire codec (slower, stricter)


@dataclass(slots=True)
class Outcome:
    seed: int
    commits: int
    view_changes: int
    violations: list[str]
    latencies_ms: list[float]
    events: int
    virtual_s: float
    plan: str


class SimNode:
    """One process: a replica and its application (twins are two of these with one identity)."""

    def __init__(self, index: int, identity: Identity, name: str) -> None:
        self.index = index
        self.identity = identity
        self.id = identity.node_id
        self.name = name
        self.app = ChainApp(index)
        self.records: list[object] = []
        self.replica: Replica | None = None
        self.boot_args: tuple[tuple[str, ...], int, int] = ((), 0, 0)  # members, epoch, start seq
        self.up = False
        self.byz: Byzantine | None = None
        self.timer_at: float | None = None
        self.timer_gen = 0
        self.fetch: FetchState | None = None
        self.faulty = False  # Byzantine, or one of a pair of twins

    @property
    def honest(self) -> bool:
        return not self.faulty


class World:
    def __init__(self, seed: int, settings: Settings, trace: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.settings = settings
        self.rng = random.Random(seed)
        self.trace = trace
        self.now = 0.0
        self.heap: list[tuple[float, int, int, int, object, object]] = []
        self.counter = 0
        self.events = 0
        self.plan: Plan = draw_plan(
            self.rng, settings.nodes, settings.byzantine, settings.faults, settings.fault_phase_s
        )
        self.network = Network(self.rng, list(self.plan.regions), self.plan.link)
        self.cache = VerifiedSignatureCache(entries_max=200_000)
        self.agreement = Agreement()
        self.validity = Validity()
        self.double = NoDoubleDecide()
        self.progress = Progress(settings.progress_bound_s)
        self.violations: list[str] = []
        self.latencies_ms: list[float] = []
        self.timed: set[int] = set()  # seqs whose commit latency is recorded
        self.views: set[tuple[int, int]] = set()
        self.nodes: list[SimNode] = []
        self.by_id: dict[str, list[SimNode]] = {}
        self.genesis: tuple[str, ...] = ()
        self.twin_groups: list[int] = []
        self.removal_planned = False
        schedule.populate(self)

    # ---------------------------------------------------------------- event heap

    def at(self, when: float, kind: int, a: int = 0, b: object = None, c: object = None) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (when, self.counter, kind, a, b, c))

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.now * 1000:10.1f}ms  {text}")

    def name_of(self, node_id: str) -> str:
        nodes = self.by_id.get(node_id)
        return nodes[0].name if nodes else node_id[:6]

    def violation(self, text: str) -> None:
        self.violations.append(f"t={self.now * 1000:.1f}ms {text}")
        self.log(f"VIOLATION {text}")

    # ---------------------------------------------------------------- driving one replica

    def boot(self, node: SimNode, members: tuple[str, ...], epoch: int, start_seq: int) -> None:
        node.boot_args = (members, epoch, start_seq)
        node.replica = Replica(
            node.identity,
            members,
            self.settings.consensus,
            lambda seq, value, node=node: self._validate(node, value),  # type: ignore[misc]
            epoch=epoch,
            epoch_start_seq=start_seq,
            restored=list(node.records),
            applied_seq=node.app.seq,
            verifier=self.cache.verify,
        )
        node.up = True
        node.fetch = None
        self.log(f"{node.name} boots (epoch {epoch}, applied {node.app.seq}, {len(node.records)} records)")
        self.handle(node, node.replica.start(self.now))
        self.propose_next(node)

    def _validate(self, node: SimNode, value: bytes) -> Validation:
        verdict = node.app.validate(value, self.now)
        if verdict is Validation.PENDING:
            self.at(available_at(value, node.index), schedule.RECHECK, node.index)
        return verdict

    def propose_next(self, node: SimNode) -> None:
        replica = node.replica
        if replica is None or not node.up or replica.removed:
            return
        delay = self.rng.uniform(0.0, 1.0) if self.rng.random() < self.plan.pending_probability else 0.0
        payload = f"{node.name}:{replica.last_delivered + 1}:{self.rng.getrandbits(32)}".encode()
        value = make_value(payload, created_at=self.now, delay=delay)
        self.validity.proposed_value(value)
        self.handle(node, replica.propose(value, self.now))

    def handle(self, node: SimNode, effects: list[Effect]) -> None:
        replica = node.replica
        assert replica is not None
        compact = False
        if node.byz is not None:
            for to, msg in node.byz.outgoing(effects, replica.members):
                self.send(node, to, msg)
        for effect in effects:
            if isinstance(effect, Broadcast):
                if node.byz is None:
                    for member in replica.members:
                        if member != node.id:
                            self.send(node, member, effect.msg)
            elif isinstance(effect, Send):
                if node.byz is None:
                    self.send(node, effect.to, effect.msg)
            elif isinstance(effect, Persist):
                node.records.append(effect.record)
                compact = compact or isinstance(effect.record, CheckpointCertificate)
            elif isinstance(effect, Deliver):
                self.deliver(node, effect)
            elif isinstance(effect, FetchState):
                node.fetch = effect
                self.at(self.now, schedule.FETCH, node.index, self.rng.randrange(len(effect.peers)))
            elif isinstance(effect, ViewChanged):
                if effect.active and effect.view > 0 and node.honest:
                    self.views.add((effect.epoch, effect.view))
                self.log(
                    f"{node.name} view {effect.epoch}/{effect.view} {'active' if effect.active else 'changing'}"
                )
        if compact:  # exercise the compact record list a driver may rewrite its log with
            node.records = replica.durable_records()
        self.arm_timer(node)

    def arm_timer(self, node: SimNode) -> None:
        assert node.replica is not None
        deadline = node.replica.next_deadline()
        if deadline != node.timer_at:
            node.timer_at = deadline
            node.timer_gen += 1
            if deadline is not None:
                self.at(max(deadline, self.now), schedule.TIMER, node.index, node.timer_gen)

    def send(self, node: SimNode, to: str, msg: object) -> None:
        if isinstance(msg, PrePrepare) and msg.proposal.kind is Kind.VALUE:
            self.validity.proposed_value(msg.proposal.value)
        if self.settings.codec:
            msg = wire.decode(wire.encode(msg))
        for target in self.by_id.get(to, ()):
            for delay in self.network.delays(node.index, target.index):
                self.at(self.now + delay, schedule.MESSAGE, target.index, node.id, msg)

    def deliver(self, node: SimNode, d: Deliver) -> None:
        replica = node.replica
        assert replica is not None
        self.log(f"{node.name} delivers {d.seq} ({d.proposal.kind.value}, view {d.epoch}/{d.view})")
        if node.honest:
            for problem in (
                self.double.observe(node.name, d.seq, node.app.seq),
                self.agreement.observe(node.name, d.seq, d.proposal),
                self.validity.observe(node.name, d.seq, d.proposal),
            ):
                if problem is not None:
                    self.violation(problem)
            if d.seq not in self.timed:
                self.timed.add(d.seq)
                if d.proposal.kind is Kind.VALUE:
                    self.latencies_ms.append((self.now - created_at(d.proposal.value)) * 1000.0)
        if d.seq != node.app.seq + 1:
            return  # reported above for honest replicas; a Byzantine core may be anywhere
        state = node.app.apply(d.seq, d.proposal)
        self.handle(node, replica.executed(d.seq, state, self.now))
        if d.proposal.kind is Kind.RECONFIGURE:
            schedule.reconfigured(self, node, d)
        if d.proposal.kind is not Kind.NULL:
            self.propose_next(node)

    # ---------------------------------------------------------------- the run

    def positions(self) -> dict[str, int]:
        """How far each honest member of the latest epoch has applied decisions."""
        replicas = [n.replica for n in self.nodes if n.replica is not None]
        latest = max(replicas, key=lambda r: r.epoch).ms.member_set
        return {n.name: n.app.seq for n in self.nodes if n.honest and n.id in latest}

    def run(self) -> Outcome:
        finished_at: float | None = None
        while self.heap:
            when, _, kind, a, b, c = heapq.heappop(self.heap)
            self.now = when
            self.events += 1
            if self.events > EVENTS_MAX:
                self.violation(f"event budget of {EVENTS_MAX} exceeded (message storm?)")
                break
            schedule.dispatch(self, kind, a, b, c)
            deadline = self.progress.deadline()
            if deadline is not None:
                if finished_at is None and self.progress.done(self.positions()):
                    finished_at = self.now
                if finished_at is not None and self.now >= finished_at + SETTLE_S:
                    break
                if self.now >= deadline:
                    break
        if finished_at is None:
            problem = self.progress.verdict(self.positions())
            if problem is not None:
                self.violation(problem)
        return Outcome(
            seed=self.seed,
            commits=len(self.agreement.decided),
            view_changes=len(self.views),
            violations=self.violations,
            latencies_ms=self.latencies_ms,
            events=self.events,
            virtual_s=self.now,
            plan=self.plan.describe(),
        )
