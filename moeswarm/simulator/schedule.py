"""Setting up a seed's world from its plan, and the handler of every kind of event."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from moeswarm.consensus import Deliver, FetchState
from moeswarm.identity import Identity
from moeswarm.simulator.byzantine import Byzantine
from moeswarm.simulator.network import REGIONS

if TYPE_CHECKING:
    from moeswarm.simulator.world import SimNode, World

(
    MESSAGE,
    TIMER,
    RECHECK,
    FETCH,
    INSTALL,
    CRASH,
    RESTART,
    PARTITION,
    HEAL,
    FAULT_END,
    BYZANTINE_TICK,
    START,
    RECONFIGURE,
    REMOVE,
) = range(14)

FETCH_RETRY_S = 0.3
START_SPREAD_S = 0.05


def identity_for(index: int) -> Identity:
    return Identity.generate(hashlib.blake2b(b"sim-node-%d" % index, digest_size=32).digest())


def populate(world: World) -> None:
    from moeswarm.simulator.world import BYZANTINE_TICK_S, SimNode

    settings, plan, rng = world.settings, world.plan, world.rng
    total = len(plan.regions)
    for index in range(total):
        node = SimNode(index, identity_for(index), f"n{index}")
        world.nodes.append(node)
    for index, behaviours in sorted(plan.byzantine.items()):
        original = world.nodes[index]
        original.faulty = True
        if "twins" in behaviours:
            twin = SimNode(len(world.nodes), original.identity, original.name + "'")
            twin.faulty = True
            world.nodes.append(twin)
            world.network.regions.append(rng.choice(REGIONS))
            world.network.groups.append(0)
            world.twin_groups.append(rng.randint(0, 1))
        else:
            original.byz = Byzantine(behaviours, original.identity, rng)
            world.at(rng.uniform(0.0, BYZANTINE_TICK_S), BYZANTINE_TICK, index)
    for node in world.nodes:
        world.by_id.setdefault(node.id, []).append(node)
    world.genesis = tuple(sorted(node.id for node in world.nodes[: settings.nodes]))
    for node in world.nodes:
        if node.index < settings.nodes or node.name.endswith("'"):
            world.at(rng.uniform(0.0, START_SPREAD_S), START, node.index)
    for p in plan.partitions:
        world.at(p.start_s, PARTITION, 0, p.groups)
        world.at(p.end_s, HEAL)
    for crash in plan.crashes:
        world.at(crash.at_s, CRASH, crash.node)
        world.at(crash.restart_s, RESTART, crash.node)
    world.at(plan.fault_end_s, FAULT_END)
    if plan.reconfigure_at_s is not None:
        world.at(plan.reconfigure_at_s, RECONFIGURE)


def describe(msg: object) -> str:
    """One line per message for traces: its type and the numbers that place it."""
    fields = [
        f"{k}={getattr(msg, k)}" for k in ("epoch", "view", "new_view", "seq", "after_seq") if hasattr(msg, k)
    ]
    replica = getattr(msg, "replica", None)
    if isinstance(replica, str):
        fields.append(f"by={replica[:6]}")
    return f"{type(msg).__name__}({', '.join(fields)})"


def dispatch(world: World, kind: int, a: int, b: object, c: object) -> None:
    node = world.nodes[a]
    replica = node.replica
    if kind == MESSAGE:
        if node.up and replica is not None:
            if world.trace is not None:
                world.log(f"{world.name_of(b)} -> {node.name}: {describe(c)}")  # type: ignore[arg-type]
            if node.byz is not None:
                node.byz.observe(c)
            world.handle(node, replica.on_message(c, b, world.now))  # type: ignore[arg-type]
    elif kind == TIMER:
        if node.up and replica is not None and b == node.timer_gen:
            node.timer_at = None
            world.handle(node, replica.on_tick(world.now))
    elif kind == RECHECK:
        if node.up and replica is not None:
            world.handle(node, replica.recheck(world.now))
    elif kind == FETCH:
        _fetch(world, node, b)  # type: ignore[arg-type]
    elif kind == INSTALL:
        _install(world, node, b)  # type: ignore[arg-type]
    else:
        _fault_event(world, kind, node, b)


def _fault_event(world: World, kind: int, node: SimNode, b: object) -> None:
    if kind == CRASH:
        node.up = False
        node.timer_gen += 1
        node.timer_at = None
        world.log(f"{node.name} crashes")
    elif kind == RESTART:
        if not node.up:
            world.boot(node, *node.boot_args)
    elif kind == PARTITION:
        groups = list(b) + world.twin_groups  # type: ignore[call-overload]
        world.network.partition(groups)
        world.log(f"partition {groups}")
    elif kind == HEAL:
        world.network.heal()
        world.log("partition heals")
    elif kind == FAULT_END:
        world.network.heal()
        world.network.calm()
        highest = max(world.agreement.decided, default=0)
        world.progress.heal(world.now, highest)
        world.log(f"network heals; progress must pass seq {highest}")
    elif kind == BYZANTINE_TICK:
        _byzantine_tick(world, node)
    elif kind == START:
        world.boot(node, world.genesis, 0, 0)
    elif kind == RECONFIGURE:
        spare = world.nodes[world.settings.nodes]
        _propose_members(world, tuple(sorted((*world.genesis, spare.id))))
    elif kind == REMOVE:
        _remove_one(world)


def _byzantine_tick(world: World, node: SimNode) -> None:
    from moeswarm.simulator.world import BYZANTINE_TICK_S

    replica = node.replica
    if node.up and replica is not None and node.byz is not None:
        for to, msg in node.byz.tick(replica.members, replica.epoch, replica.view, replica.low):
            world.send(node, to, msg)
    world.at(world.now + BYZANTINE_TICK_S, BYZANTINE_TICK, node.index)


def _propose_members(world: World, members: tuple[str, ...]) -> None:
    world.log(f"reconfiguration proposed: {len(members)} members")
    for node in world.nodes:
        replica = node.replica
        if node.up and replica is not None and not replica.removed:
            world.validity.proposed_members(replica.epoch + 1, members)
            world.handle(node, replica.propose_reconfigure(members, world.now))


def _remove_one(world: World) -> None:
    current = max((n.replica for n in world.nodes if n.replica is not None), key=lambda r: r.epoch)
    honest = [m for m in current.members if all(n.honest for n in world.by_id[m])]
    if len(current.members) > world.settings.nodes and honest:
        victim = world.rng.choice(honest)
        _propose_members(world, tuple(m for m in current.members if m != victim))


def reconfigured(world: World, node: SimNode, d: Deliver) -> None:
    """A replica delivered a reconfiguration: boot members that have never run; plan a removal."""
    members = d.proposal.members
    for member in members:
        for candidate in world.by_id.get(member, ()):
            if candidate.replica is None:
                world.boot(candidate, members, d.proposal.epoch, d.seq)
    if d.proposal.epoch == 1 and not world.removal_planned:
        world.removal_planned = True
        world.at(world.now + world.rng.uniform(1.0, 4.0), REMOVE)


def _fetch(world: World, node: SimNode, attempt: int) -> None:
    fs = node.fetch
    replica = node.replica
    if fs is None or replica is None or not node.up or replica.transfer != fs:
        return  # superseded; otherwise the application keeps asking, one peer after another
    peer_id = fs.peers[attempt % len(fs.peers)]
    world.log(f"{node.name} asks {world.name_of(peer_id)} for the state at seq {fs.seq}")
    for peer in world.by_id.get(peer_id, ()):
        reachable = peer.up and peer.byz is None and world.network.connected(node.index, peer.index)
        if reachable and peer.app.state_at(fs.seq) == fs.state_digest:
            rtt = 2 * world.network.one_way_s(node.index, peer.index)
            world.at(world.now + rtt, INSTALL, node.index, fs)
            return
    world.at(world.now + FETCH_RETRY_S, FETCH, node.index, attempt + 1)


def _install(world: World, node: SimNode, fs: FetchState) -> None:
    replica = node.replica
    if (
        replica is None
        or not node.up
        or fs not in [t[0] for t in replica.transfers]
        or fs.seq <= node.app.seq
    ):
        return  # the replica no longer wants this state (an older target is still welcome)
    world.log(f"{node.name} installs the state at seq {fs.seq}")
    node.app.install(fs.seq, fs.state_digest)
    world.handle(node, replica.install_state(fs.seq, fs.state_digest, world.now))
    world.propose_next(node)
