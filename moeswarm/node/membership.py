"""Joining and leaving the replica set while the swarm runs (DESIGN §5).

Three signed messages carry it (`moeswarm.swarm.messages`):

- `SwarmHello`: on every new connection, on every epoch change and every `HELLO_INTERVAL_S`, a node
  tells its peers which swarm it is a member of. A node that starts without a checkpoint listens
  before it decides anything: if f+1 members of a swarm vouch for it (or a member names this node
  among the members), that swarm exists and the node joins it or takes its seat; only when every
  connected peer has said "no swarm" and `--bootstrap-nodes` of them are there does it form a genesis.
- `JoinRequest`: a newcomer asks the members to add it. Each member that admitted it (the transport
  delivers nothing from anyone else) wishes for `Reconfigure(members ∪ {it})` while its round is
  between commits -- its tracker is still waiting for deltas, so no round commit built for the old
  member set is decided after the reconfiguration. One join is pending at a time; others retry.
- `LeaveRequest`: a draining member asks the same for its own removal, so that the primary proposes
  it whoever drains (the leaver's own wish alone only counts when the leaver is the primary).

The newcomer runs its replica as a "removed" replica of the epoch the hellos name. Once a member's
hello shows a later epoch that includes it, it asks members for a catch-up (PBFT `Fetch`): its
replica checks the reconfiguration's commit certificate and the new epoch's stable checkpoint, then
asks for that state (`FetchState`), which the consensus driver gets by checkpoint transfer and which
must hash to the digest a quorum signed. From then on it is a member like any other; placement and
its data shard follow from the member set. A member that finds itself removed without having asked
(voted out while it was down longer than the dead-removal grace) trains nothing for the swarm it is no
longer part of and asks to join again, as a newcomer would.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moeswarm.consensus import Membership, Validation
from moeswarm.consensus.messages import Fetch
from moeswarm.node.config import parse_address
from moeswarm.swarm.messages import PEX_ADDRESSES_MAX, JoinRequest, LeaveRequest, SwarmHello

if TYPE_CHECKING:
    from moeswarm.node.daemon import NodeDaemon

log = logging.getLogger(__name__)

TICK_S = 0.2
HELLO_INTERVAL_S = 5.0
GENESIS_GRACE_S = 3.0  # a fresh node with peers to find listens this long before forming a genesis
REQUEST_RETRY_S = 2.0  # join and leave requests are repeated until the reconfiguration is decided
FETCH_RETRY_S = 1.0
JOIN_QUIET_S_MAX = 10.0  # a pending join whose requester stopped asking this long ago is dropped
LEAVERS_MAX = 64
PEX_DIALS_MAX = 64  # addresses learnt from hellos and dialled at one time
PEX_GIVE_UP_S = 60.0
HELLOS_MAX = 1024


@dataclass(frozen=True, slots=True)
class StartingPoint:
    """What the node's replica is built from: its member set, epoch and where that epoch began."""

    members: tuple[str, ...]
    epoch: int
    executed_seq: int
    epoch_start_seq: int


def vouched_swarm(hellos: Mapping[str, SwarmHello], me: str) -> Membership | None:
    """The newest swarm that f+1 of its own members vouch for, or that a member says we belong to.

    Only a hello whose sender is among the members it lists counts. f+1 keeps one confused or lying
    peer from sending a newcomer into a swarm that does not exist; a swarm that names `me` is taken
    on one word, because the genesis members hear each other one at a time.
    """
    votes: dict[Membership, set[str]] = {}
    for sender, hello in hellos.items():
        if not hello.members or sender not in hello.members:
            continue
        try:
            view = Membership(hello.epoch, tuple(hello.members), hello.epoch_start_seq)
        except ValueError:
            continue  # not node ids: nothing a correct member would send
        votes.setdefault(view, set()).add(sender)
    trusted = [v for v, who in votes.items() if len(who) >= v.f + 1 or me in v]
    return max(trusted, key=lambda v: (v.epoch, v.start_seq), default=None)


def change_target(members: Iterable[str], joiner: str | None, leavers: Iterable[str]) -> tuple[str, ...]:
    """The member set to propose: the current one plus the pending joiner, minus pending leavers.

    Never empty: a request that would leave no member is ignored.
    """
    current = set(members)
    target = (current | ({joiner} if joiner else set())) - set(leavers)
    return tuple(sorted(target if target else current))


def judge_members(
    current: Iterable[str], proposed: Iterable[str], *, me: str, leaving: bool, asked_to_leave: Iterable[str],
    connected: Iterable[str],
) -> tuple[Validation, str]:
    """A backup's verdict on a proposed member set: would a correct primary propose it now?

    A correct primary adds at most one node, one that has been admitted (its connection proved the
    cluster key; to us too, since it must exchange votes with every member), and removes only nodes
    that asked to leave or that are gone (no connection to us either). Anything else waits (PENDING:
    the evidence may still be on its way — a LeaveRequest, a newcomer's connection) until the view
    timer replaces a primary that keeps asking for it; so a Byzantine primary can neither vote honest,
    reachable members out nor fill the set with keys that will never vote.
    """
    now, target = set(current), set(proposed)
    if not target:
        return Validation.INVALID, "an empty member set"
    added, removed = target - now, now - target
    if len(added) > 1:
        return Validation.INVALID, f"adds {len(added)} nodes at once"
    live = set(connected)
    for node in added:
        if node not in live:
            return Validation.PENDING, f"adds {node[:12]}, which has no admitted connection to this node"
    if me in removed and not leaving:
        return Validation.PENDING, "removes this node, which is running and did not ask to leave"
    kept_away = reachable_removals(now, target, me=me, asked_to_leave=asked_to_leave, connected=live)
    if kept_away:
        return Validation.PENDING, f"removes {kept_away[0][:12]}, which is connected and did not ask to leave"
    return Validation.VALID, ""


def reachable_removals(
    current: Iterable[str], proposed: Iterable[str], *, me: str, asked_to_leave: Iterable[str],
    connected: Iterable[str],
) -> list[str]:
    """Other members a change would remove although they are connected to us and never asked to
    leave: what no correct node proposes, and what makes a wish of our own stale."""
    live, asked = set(connected), set(asked_to_leave)
    return sorted(n for n in set(current) - set(proposed) if n != me and n in live and n not in asked)


class MembershipDriver:
    """One per node; the daemon feeds it hellos and requests, and runs `run()` beside its other loops."""

    def __init__(self, daemon: NodeDaemon) -> None:
        self.daemon = daemon
        self.me = daemon.identity.node_id
        self.hellos: dict[str, SwarmHello] = {}
        self.joiner: str | None = None
        self.leaving = False
        self._joiner_asked_at = 0.0
        self._leavers: dict[str, float] = {}
        self._greeted: set[str] = set()
        self._announced: tuple[int, tuple[str, ...]] | None = None
        self._hello_at = float("-inf")
        self._proposed: tuple[int, tuple[str, ...]] | None = None
        self._change_since: float | None = None
        self._request_at = float("-inf")
        self._fetch_at = float("-inf")
        self._fetches = 0
        self._was_member = False
        self._was_outsider = False
        self._pex: dict[str, float] = {}  # addresses learnt from hellos that we dial -> last seen up
        self._pex_offset = 0

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # --- deciding how to start ------------------------------------------------------------------

    async def starting_point(self, restored: tuple[list[str], int, int] | None) -> StartingPoint:
        """From our own checkpoint if there is one; else join a swarm the hellos show, or form one."""
        daemon = self.daemon
        assert daemon.driver is not None and daemon.transport is not None
        if restored is not None:
            members, seq, start_seq = restored
            return StartingPoint(tuple(sorted(members)), daemon.driver.engine.epoch, seq, start_seq)
        want = daemon.config.bootstrap_nodes
        searching = bool(daemon.config.peers or daemon.config.discovery)
        started = self._now()
        while not daemon.stopping.is_set():
            swarm = vouched_swarm(self.hellos, self.me)
            if swarm is not None:
                verb = "taking its seat in" if self.me in swarm else "joining"
                log.info("node %s: %s the running swarm of %d members (epoch %d)", daemon.identity.short_id,
                         verb, swarm.n, swarm.epoch)
                return StartingPoint(swarm.members, swarm.epoch, 0, swarm.start_seq)
            connected = daemon.transport.connected_peers()
            heard = [p for p in connected if p in self.hellos]
            quiet = len(heard) == len(connected) and not any(self.hellos[p].members for p in heard)
            grace_over = not searching or self._now() - started >= GENESIS_GRACE_S
            if quiet and grace_over and len(heard) + 1 >= want:
                genesis = tuple(sorted([self.me, *heard])[:want])
                log.info("node %s: no running swarm among %d peers: forming a genesis of %d",
                         daemon.identity.short_id, len(heard), len(genesis))
                return StartingPoint(genesis, 0, 0, 0)
            await asyncio.sleep(TICK_S)
        return StartingPoint((self.me,), 0, 0, 0)

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        while not self.daemon.stopping.is_set():
            try:
                await self.tick(self._now())
            except Exception:
                # One bad tick (a peer gone mid-send, a checkpoint dir being rewritten) must not end
                # membership handling for the life of the node.
                log.exception("node %s: membership tick failed", self.daemon.identity.short_id)
            await asyncio.sleep(TICK_S)

    async def tick(self, now: float) -> None:
        self._prune_exchanged(now)
        await self._greet(now)
        consensus = self.daemon.consensus
        if consensus is None:
            return
        if self.me in consensus.members:
            await self._as_member(now)
        else:
            await self._as_outsider(now)

    def forget_proposal(self) -> None:
        """The consensus driver withdrew our last wish: the same change may be wished for again."""
        self._proposed = None

    def asked_to_leave(self) -> tuple[str, ...]:
        """Members whose signed LeaveRequest reached this node (and are still members)."""
        return tuple(self._leavers)

    def request_leave(self) -> None:
        """The node drains: keep asking the members to remove it until they have."""
        self.leaving = True

    # --- hellos -----------------------------------------------------------------------------------

    def hello(self, checkpoint_round: int) -> SwarmHello:
        daemon = self.daemon
        assert daemon.driver is not None
        engine, consensus = daemon.driver.engine, daemon.consensus
        member = consensus is not None and self.me in consensus.members
        return SwarmHello(
            epoch=consensus.epoch if consensus is not None and member else 0,
            epoch_start_seq=consensus.epoch_start_seq if consensus is not None and member else 0,
            members=tuple(consensus.members) if consensus is not None and member else (),
            round=engine.round,
            state_hash=engine.state_hash,
            executed_seq=consensus.executed_seq if consensus is not None else 0,
            checkpoint_round=checkpoint_round,
            peers=self._peer_addresses(),
        )

    def _peer_addresses(self) -> tuple[str, ...]:
        """Where our connected peers can be dialled; a window that moves on with every hello, so in a
        swarm larger than one hello's share every address is passed on in turn."""
        transport = self.daemon.transport
        found = sorted(set(transport.peer_addresses().values())) if transport is not None else []
        if len(found) <= PEX_ADDRESSES_MAX:
            return tuple(found)
        self._pex_offset = (self._pex_offset + PEX_ADDRESSES_MAX) % len(found)
        window = found[self._pex_offset:] + found[:self._pex_offset]
        return tuple(window[:PEX_ADDRESSES_MAX])

    def _exchange_peers(self, sender: str, hello: SwarmHello) -> None:
        """Dial the peers a hello names that we have no connection to (peer exchange).

        Only IP literals are taken (a name would make us resolve whatever a peer says), at most
        PEX_DIALS_MAX at a time; `_prune_exchanged` gives up on those that stay unreachable.
        """
        transport = self.daemon.transport
        if transport is None:
            return
        known = set(transport.peer_addresses().values())
        for address in hello.peers:
            if address in known or address in self._pex or len(self._pex) >= PEX_DIALS_MAX:
                continue
            try:
                host, _ = parse_address(address)
                ipaddress.ip_address(host)
            except ValueError:  # ConfigError is one
                self.daemon.metrics.count_rejected("membership")
                log.warning("node %s: hello from %s names a peer address %r that is not ip:port; ignored",
                            self.daemon.identity.short_id, sender[:12], address[:64])
                continue
            self._pex[address] = self._now()
            transport.connect(address)

    def _prune_exchanged(self, now: float) -> None:
        """A learnt address stays dialled (the dialler keeps its link up) while its node is connected
        and for PEX_GIVE_UP_S after it was last; a node that comes back is learnt again from hellos."""
        transport = self.daemon.transport
        if transport is None or not self._pex:
            return
        known = set(transport.peer_addresses().values())
        for address, seen in list(self._pex.items()):
            if address in known:
                self._pex[address] = now
            elif now - seen > PEX_GIVE_UP_S:
                transport.forget(address)
                del self._pex[address]

    async def _greet(self, now: float) -> None:
        """A hello to every new peer; to all of them when our epoch changed, and now and then."""
        transport, consensus = self.daemon.transport, self.daemon.consensus
        assert transport is not None
        connected = set(transport.connected_peers())
        for gone in [p for p in self.hellos if p not in connected]:
            del self.hellos[gone]
        self._greeted &= connected
        member = consensus is not None and self.me in consensus.members
        announced = (consensus.epoch, tuple(consensus.members)) if consensus is not None and member else None
        everyone = announced != self._announced or now - self._hello_at >= HELLO_INTERVAL_S
        targets = connected if everyone else connected - self._greeted
        if not targets:
            return
        rounds = await asyncio.to_thread(self.daemon.store.checkpoints.rounds)
        hello = self.hello(rounds[-1] if rounds else 0)
        if everyone:
            self._announced, self._hello_at = announced, now
            await self.daemon.broadcast(hello)
        else:
            for peer in sorted(targets):
                await self.daemon.send(peer, hello)
        self._greeted |= targets

    # --- messages ---------------------------------------------------------------------------------

    async def on_message(self, sender: str, msg: SwarmHello | JoinRequest | LeaveRequest) -> None:
        if isinstance(msg, SwarmHello):
            if sender in self.hellos or len(self.hellos) < HELLOS_MAX:
                self.hellos[sender] = msg
                self._exchange_peers(sender, msg)
            return
        if msg.node != sender:
            self.daemon.metrics.count_rejected("membership")
            log.warning("node %s: %s from %s names another node %s; dropped", self.daemon.identity.short_id,
                        type(msg).__name__, sender[:12], msg.node[:12])
            return
        consensus = self.daemon.consensus
        if consensus is None or self.me not in consensus.members:
            return
        if isinstance(msg, JoinRequest):
            if not self.daemon.draining:
                self._on_join_request(sender, consensus.members)
        elif sender in consensus.members and (sender in self._leavers or len(self._leavers) < LEAVERS_MAX):
            if sender not in self._leavers:
                log.info("node %s: %s asks to leave; proposing its removal", self.daemon.identity.short_id,
                         sender[:12])
                consensus.poke()  # a proposed removal may be waiting for exactly this request
            self._leavers[sender] = self._now()

    def _on_join_request(self, sender: str, members: tuple[str, ...]) -> None:
        if sender in members:
            self._greeted.discard(sender)  # it is in already: our next hello tells it so
            return
        if self.joiner not in (None, sender):
            return  # one join at a time; the requester asks again
        if self.joiner is None:
            log.info("node %s: join request from admitted peer %s; proposing %d members",
                     self.daemon.identity.short_id, sender[:12], len(members) + 1)
        self.joiner, self._joiner_asked_at = sender, self._now()

    # --- as a member: propose the changes asked for --------------------------------------------

    async def _as_member(self, now: float) -> None:
        daemon = self.daemon
        consensus, driver, transport = daemon.consensus, daemon.driver, daemon.transport
        assert consensus is not None and driver is not None and transport is not None
        if not self._was_member:
            self._was_member = True
            if self._was_outsider:
                await self._joined()
        members = consensus.members
        if self.joiner is not None and (
            self.joiner in members or now - self._joiner_asked_at > JOIN_QUIET_S_MAX
            or self.joiner not in transport.connected_peers()
        ):
            self.joiner = None
        self._leavers = {n: t for n, t in self._leavers.items() if n in members}
        if self.leaving:
            await self._ask_to_leave(now, members)
        else:
            await self._propose_change(now, members)

    async def _propose_change(self, now: float, members: tuple[str, ...]) -> None:
        daemon = self.daemon
        consensus, driver, transport = daemon.consensus, daemon.driver, daemon.transport
        assert consensus is not None and driver is not None and transport is not None
        leavers = [*self._leavers, *self._dead(members)]
        joiner = self.joiner
        if joiner is not None and not set(members) - set(leavers) - {self.me} <= set(transport.connected_peers()):
            # Until the joiner has the state it cannot sign checkpoints, and the new epoch's first
            # one needs a quorum of the larger set: add it only while every staying member is reachable.
            joiner = None
        target = change_target(members, joiner, leavers)
        if target == members:
            self._change_since = None
            return
        self._change_since = self._change_since if self._change_since is not None else now
        wish = (consensus.epoch, target)
        if wish == self._proposed:
            return
        # Between commits (the tracker still waits for deltas) no commit for the old member set is
        # in flight; a swarm that stays stuck longer than a round deadline gets the change anyway.
        between_commits = not driver.tracker.ready(now)
        if between_commits or now - self._change_since > daemon.config.round_deadline_s:
            self._proposed = wish
            log.info("node %s: proposing epoch %d with %d members (now %d)", daemon.identity.short_id,
                     consensus.epoch + 1, len(target), len(members))
            await consensus.propose_members(target)

    def _dead(self, members: tuple[str, ...]) -> list[str]:
        """Members SWIM declared dead whose connection is gone too: they stay in every change we
        propose (the gossip driver proposes their removal once; a join decided first must not drop it)."""
        gossip, transport = self.daemon.gossip, self.daemon.transport
        if gossip is None or transport is None:
            return []
        connected = set(transport.connected_peers())
        return [m for m in members if m != self.me and gossip.status.get(m) == "dead" and m not in connected]

    async def _ask_to_leave(self, now: float, members: tuple[str, ...]) -> None:
        if now - self._request_at < REQUEST_RETRY_S:
            return
        self._request_at = now
        transport = self.daemon.transport
        assert transport is not None
        for peer in sorted(set(transport.connected_peers()) & set(members)):
            await self.daemon.send(peer, LeaveRequest(node=self.me))

    async def _joined(self) -> None:
        daemon = self.daemon
        consensus, driver = daemon.consensus, daemon.driver
        assert consensus is not None and driver is not None
        # Its experts come with the placement of the new epoch, once that reconfiguration is executed
        # (the execution loop logs them then).
        log.info("node %s: joined the swarm at round %d: epoch %d, %d members",
                 daemon.identity.short_id, driver.engine.round, consensus.epoch, len(consensus.members))
        daemon.metrics.members.set(len(consensus.members))
        daemon.metrics.epoch.set(consensus.epoch)
        consensus.membership_changed.set()
        # The transferred checkpoint was saved while this node was not yet a member; save it again
        # with the member set it now belongs to, so a restart resumes as a member.
        daemon.spawn(consensus.checkpoint_now(), "checkpoint-after-join")

    # --- as an outsider: ask to join, then catch up -----------------------------------------------

    async def _as_outsider(self, now: float) -> None:
        daemon = self.daemon
        consensus = daemon.consensus
        assert consensus is not None
        if self._was_member:
            if daemon.draining or daemon.stopping.is_set():
                return  # the removal it asked for
            # Voted out while it was away (down longer than the dead-removal grace): come back the
            # way a new node does — ask to join, then take the new epoch's state by transfer.
            log.warning("node %s: removed from the swarm by reconfiguration (epoch %d) while away; "
                        "asking to join again", daemon.identity.short_id, consensus.epoch)
            self._was_member = False
            self._request_at = float("-inf")
            self.joiner = None
            self._leavers.clear()
            self._proposed = None
        self._was_outsider = True
        if daemon.draining:
            return
        claims = {s: h for s, h in self.hellos.items() if s in h.members}
        admitted = sorted(s for s, h in claims.items() if h.epoch > consensus.epoch and self.me in h.members)
        if admitted:
            if now - self._fetch_at >= FETCH_RETRY_S:
                self._fetch_at = now
                peer = admitted[self._fetches % len(admitted)]
                self._fetches += 1
                replica = consensus.replica
                # Ask for what follows the epoch that admitted us: the reconfiguration chain and that
                # epoch's stable checkpoint, not the old epoch's rounds, whose state comes by transfer.
                after = max(replica.last_delivered, self.hellos[peer].epoch_start_seq)
                await daemon.send(peer, Fetch(epoch=replica.epoch, view=replica.view, after_seq=after,
                                              replica=self.me))
            return
        if claims and now - self._request_at >= REQUEST_RETRY_S:
            if self._request_at == float("-inf"):
                log.info("node %s: asking %d members to add it to the swarm", daemon.identity.short_id,
                         len(claims))
            self._request_at = now
            for peer in sorted(claims):
                await daemon.send(peer, JoinRequest(node=self.me))
