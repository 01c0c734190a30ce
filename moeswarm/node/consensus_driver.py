"""Drives the pure PBFT replica from the daemon: real clock, durable log, transport, ordered execution.

Rules this module keeps:
- effects run in list order, and a `Persist` is appended to the consensus log and fsync'd before any
  later `Send`/`Broadcast` leaves the node, so a replica restarted after kill -9 never contradicts a
  vote it already sent;
- decided sequence numbers are executed strictly in order by one task; each execution reports the
  state hash back to the replica (`executed`), which is what the signed checkpoints compare;
- the replica's validation callback is the round tracker's verdict; a PENDING verdict names the
  delta blobs still missing, which are fetched and the proposal re-checked when they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

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
from moeswarm.node.membership import judge_members, reachable_removals
from moeswarm.swarm.messages import StateOffer, StateRequest
from moeswarm.swarm.round import Verdict

if TYPE_CHECKING:
    from moeswarm.node.daemon import NodeDaemon
    from moeswarm.node.rounds import RoundDriver

log = logging.getLogger(__name__)

_VERDICTS = {Verdict.VALID: Validation.VALID, Verdict.INVALID: Validation.INVALID,
             Verdict.PENDING: Validation.PENDING}
STATE_FETCH_RETRY_S = 2.0
# A backup's view timer runs from its own wish, or from a pre-prepare it cannot check yet. A correct
# primary or backup may first have to finish a checkpoint save, then its own inner steps, then pull and
# decode the last deltas in its one worker thread: seconds on a loaded machine. Below this floor (5 s
# was measured too short on 2 cores running 4 nodes) a lone backup suspects a healthy primary every
# minute or two, leaves the view, and the swarm runs on n - 1 votes until the others follow.
VIEW_TIMEOUT_MIN_S = 10.0


class ConsensusDriver:
    def __init__(self, daemon: NodeDaemon, members: list[str], *, epoch: int, executed_seq: int,
                 epoch_start_seq: int = 0) -> None:
        self.daemon = daemon
        c = daemon.config
        self.config = Config(
            checkpoint_interval=c.checkpoint_interval_rounds,
            window=4 * c.checkpoint_interval_rounds,
            view_timeout=max(VIEW_TIMEOUT_MIN_S, c.round_deadline_s / 4),
            view_timeout_max=max(60.0, c.round_deadline_s * 2),
        )
        records = [wire.decode(r) for r in daemon.store.log.replay()]
        self.replica = Replica(
            daemon.identity, sorted(members), self.config, self._validate,
            epoch=epoch, epoch_start_seq=epoch_start_seq, restored=records,
            applied_seq=executed_seq if records or executed_seq else None,
            validate_members=self._validate_members,
        )
        self._members_logged: tuple[int, str] | None = None
        self.applied = asyncio.Event()
        self.membership_changed = asyncio.Event()
        self._queue: asyncio.Queue[Deliver] = asyncio.Queue()
        self._dirty = False
        self._lock = asyncio.Lock()
        self._proposed_at: dict[int, float] = {}
        self._first_seen: dict[bytes, float] = {}
        self._leaving: asyncio.Future[None] | None = None
        self._proposed_round = -1
        self._executing = False
        self._state_fetch: asyncio.Task[None] | None = None
        self._pending_state: FetchState | None = None
        # Executing a decided entry and installing a transferred state both replace the model's
        # state: one at a time, and an installed state supersedes entries queued at or below it.
        self._state_lock = asyncio.Lock()
        self._installed_seq = 0

    # --- properties the daemon reads -------------------------------------------------------------

    @property
    def members(self) -> tuple[str, ...]:
        return self.replica.members

    @property
    def epoch(self) -> int:
        return self.replica.epoch

    @property
    def view(self) -> int:
        return self.replica.view

    @property
    def primary(self) -> str:
        return self.replica.primary

    @property
    def executed_seq(self) -> int:
        return self.replica.last_executed

    @property
    def epoch_start_seq(self) -> int:
        return self.replica.ms.start_seq

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.daemon.spawn(self._execute_loop(), "execute")
        await self._perform(self.replica.start(self._now()))

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    # --- inputs ---------------------------------------------------------------------------------

    async def on_message(self, sender: str, msg: object) -> None:
        try:
            effects = self.replica.on_message(msg, sender, self._now())
        except wire.WireError as exc:
            self.daemon.metrics.count_rejected("consensus")
            log.warning("node %s: consensus message from %s rejected: %s", self.daemon.identity.short_id,
                        sender[:12], exc.reason)
            return
        await self._perform(effects)

    async def tick(self) -> None:
        now = self._now()
        await self._perform(self.replica.on_tick(now))
        self._withdraw_stale_removal()
        if self._reconfiguration_waits():
            # the evidence a member set waits for (a connection, a leave request) comes without a poke
            await self._perform(self.replica.recheck(now))
        await self._maybe_propose(now)

    def poke(self) -> None:
        """A blob arrived or our delta is out: re-check pending proposals and maybe propose."""
        self.daemon.spawn(self._poke(), "poke")

    async def _poke(self) -> None:
        now = self._now()
        await self._perform(self.replica.recheck(now))
        await self._maybe_propose(now)

    async def _maybe_propose(self, now: float) -> None:
        """Once per round, when this node's view of the round is complete, ask for its commit.

        Every member proposes (the replica turns it into a pre-prepare on the primary and into a
        liveness wish on backups), so a stalled primary is replaced and its successor has a value.
        """
        driver = self.daemon.driver
        if driver is None or self.daemon.identity.node_id not in self.members:
            return
        if self._proposed_round == driver.engine.round or self._executing or not self._queue.empty():
            return
        if self._reconfiguring():
            return  # a commit built now would be decided after the new epoch began, for the old one
        value = driver.proposal(now)
        if value is None:
            return
        self._proposed_round = driver.engine.round
        self._proposed_at.setdefault(driver.engine.round + 1, time.monotonic())
        await self._perform(self.replica.propose(value, now))

    def _undelivered_reconfigurations(self) -> list[Validation | None]:
        """This node's verdict on each pre-prepared reconfiguration not yet delivered."""
        r = self.replica
        return [slot.validation for seq, slot in r.slots.items()
                if seq > r.last_delivered and slot.pre_prepare is not None
                and slot.pre_prepare.proposal.kind is Kind.RECONFIGURE]

    def _reconfiguring(self) -> bool:
        """This node wishes for, or has seen pre-prepared, a reconfiguration not yet delivered."""
        return self.replica.wanted_reconfig is not None or bool(self._undelivered_reconfigurations())

    def _withdraw_stale_removal(self) -> None:
        """A removal we asked for (a dead member) whose node is connected again and did not ask to
        leave: the other backups would let it wait, and pressing for it would only cost view changes."""
        wish = self.replica.wanted_reconfig
        transport = self.daemon.transport
        if wish is None or transport is None:
            return
        membership = self.daemon.membership
        back = reachable_removals(self.members, wish.members, me=self.daemon.identity.node_id,
                                  asked_to_leave=membership.asked_to_leave(), connected=transport.connected_peers())
        if back:
            log.info("node %s: %s is connected again: withdrawing its removal", self.daemon.identity.short_id,
                     back[0][:12])
            self.replica.withdraw_reconfigure()
            membership.forget_proposal()

    def _reconfiguration_waits(self) -> bool:
        """A pre-prepared reconfiguration not yet delivered that this node judged PENDING."""
        return Validation.PENDING in self._undelivered_reconfigurations()

    def _validate_members(self, seq: int, members: tuple[str, ...]) -> Validation:
        daemon = self.daemon
        transport = daemon.transport
        verdict, reason = judge_members(
            self.members, members, me=daemon.identity.node_id, leaving=daemon.membership.leaving,
            asked_to_leave=daemon.membership.asked_to_leave(),
            connected=transport.connected_peers() if transport is not None else (),
        )
        if verdict is not Validation.VALID and (seq, reason) != self._members_logged:
            self._members_logged = (seq, reason)  # once per reason, not on every re-check
            log.warning("node %s: seq %d reconfiguration to %d members %s: %s", daemon.identity.short_id, seq,
                        len(members), "refused" if verdict is Validation.INVALID else "waits", reason)
        return verdict

    def _validate(self, seq: int, value: bytes) -> Validation:
        driver = self.daemon.driver
        assert driver is not None
        verdict, reason, missing = driver.judge(value)
        self._first_seen.setdefault(value, time.monotonic())
        if verdict is Verdict.PENDING and missing:
            sources = [self.primary, *self.members]
            for blob_id in missing:
                self.daemon.spawn(self.daemon.fetch_blob(blob_id, sources), "fetch-listed")
        if verdict is Verdict.INVALID:
            log.warning("node %s: seq %d proposal invalid: %s", self.daemon.identity.short_id, seq, reason)
        return _VERDICTS[verdict]

    # --- effects --------------------------------------------------------------------------------

    async def _perform(self, effects: list[Effect]) -> None:
        async with self._lock:
            for effect in effects:
                if isinstance(effect, Persist):
                    self.daemon.store.log.append(wire.encode(effect.record))
                    self._dirty = True
                elif isinstance(effect, Send | Broadcast):
                    if self._dirty:
                        await asyncio.to_thread(self.daemon.store.log.sync)
                        self._dirty = False
                    if isinstance(effect, Send):
                        await self.daemon.send(effect.to, effect.msg)
                    else:
                        await self.daemon.broadcast(effect.msg)
                elif isinstance(effect, Deliver):
                    self._queue.put_nowait(effect)
                elif isinstance(effect, FetchState):
                    self._start_state_fetch(effect)
                elif isinstance(effect, ViewChanged):
                    if effect.active:
                        self.daemon.metrics.view_changes.inc()
                    self.daemon.metrics.view.set(effect.view)
                    log.info("node %s: view %d (primary %s, %s)", self.daemon.identity.short_id, effect.view,
                             effect.primary[:12], "active" if effect.active else "changing")
            if self._dirty:
                await asyncio.to_thread(self.daemon.store.log.sync)
                self._dirty = False

    # --- execution ------------------------------------------------------------------------------

    async def _execute_loop(self) -> None:
        driver = self.daemon.driver
        assert driver is not None
        while True:
            d = await self._queue.get()
            async with self._state_lock:
                if d.seq <= self._installed_seq:
                    log.info("node %s: seq %d is covered by the state installed at seq %d: not executed",
                             self.daemon.identity.short_id, d.seq, self._installed_seq)
                    continue
                await self._execute(driver, d)

    async def _execute(self, driver: RoundDriver, d: Deliver) -> None:
        self._executing = True
        engine = driver.engine
        if d.proposal.kind is Kind.VALUE:
            started = self._proposed_at.pop(engine.round + 1, None) or self._first_seen.pop(
                d.proposal.value, None)
            report = await driver.apply(d.proposal.value, d.seq, d.view, started)
            if report is None:
                self._proposed_round = -1  # a no-op satisfied our wish: ask again for this round
            else:
                m = self.daemon.metrics
                m.rounds_committed.inc()
                m.round.set(report.round)
                if driver.heldout_bpb is not None:
                    m.heldout_bpb.set(driver.heldout_bpb)
                if started:
                    m.commit_latency.observe(time.monotonic() - started)
        elif d.proposal.kind is Kind.NULL:
            self._proposed_round = -1
        elif d.proposal.kind is Kind.RECONFIGURE:
            await driver._work(engine.set_epoch, d.proposal.epoch)
            # The epoch is part of the state hash: the next commit extends the new hash, and a
            # commit this node wished for under the old member set is built again.
            driver.tracker.base_hash = engine.state_hash
            driver.set_members(d.proposal.members, d.proposal.epoch)
            self._proposed_round = -1
            self.poke()
            self.daemon.metrics.members.set(len(d.proposal.members))
            self.daemon.metrics.epoch.set(d.proposal.epoch)
            self.membership_changed.set()
            log.info("node %s: epoch %d, members %d, experts of this node %s", self.daemon.identity.short_id,
                     d.proposal.epoch, len(d.proposal.members),
                     list(driver.experts_of(self.daemon.identity.node_id)))
            if self._leaving is not None and self.daemon.identity.node_id not in d.proposal.members:
                self._leaving.set_result(None)
        await self._perform(self.replica.executed(d.seq, engine.state_hash, self._now()))
        if d.seq % self.config.checkpoint_interval == 0:
            await self.daemon.save_checkpoint(d.seq)
            await self._compact_log(d.seq)
        elif d.proposal.kind is Kind.RECONFIGURE:
            # A joining node's state transfer asks for exactly the state at the new epoch's start.
            await self.daemon.save_checkpoint(d.seq)
        self._executing = False
        self.applied.set()
        # A proposal for the round we just reached may have been pending only because we were
        # behind: validate it again now rather than wait for the view timer.
        self.poke()

    async def _compact_log(self, seq: int) -> None:
        """Rewrite the consensus log as the replica's minimal record set and drop older segments."""
        async with self._lock:
            log_ = self.daemon.store.log
            records = [wire.encode(r) for r in self.replica.durable_records()]

            def rewrite() -> None:
                log_.start_segment(max(seq, log_.label + 1))
                log_.append_many(records)
                log_.sync()
                log_.drop_segments_before(seq)

            await asyncio.to_thread(rewrite)

    async def propose_members(self, members: tuple[str, ...]) -> None:
        """Ask for a committed reconfiguration to `members` (a dead node's removal, a join)."""
        if tuple(sorted(members)) == self.members or not members:
            return
        await self._perform(self.replica.propose_reconfigure(members, self._now()))

    # --- leaving ------------------------------------------------------------------------------

    async def leave(self) -> None:
        """Ask the swarm to remove this node by reconfiguration; returns once it is committed."""
        me = self.daemon.identity.node_id
        if me not in self.members or len(self.members) == 1:
            return
        self._leaving = asyncio.get_running_loop().create_future()
        while not self._leaving.done():
            if me not in self.members:
                return
            remaining = tuple(m for m in self.members if m != me)
            await self._perform(self.replica.propose_reconfigure(remaining, self._now()))
            try:
                await asyncio.wait_for(asyncio.shield(self._leaving), timeout=self.config.view_timeout * 2)
            except TimeoutError:
                continue

    # --- state transfer -------------------------------------------------------------------------

    def _start_state_fetch(self, need: FetchState) -> None:
        self._pending_state = need
        if self._state_fetch is None or self._state_fetch.done():
            self._state_fetch = asyncio.create_task(self._fetch_state_loop(), name="state-fetch")

    async def _fetch_state_loop(self) -> None:
        while self._pending_state is not None:
            need = self._pending_state
            driver = self.daemon.driver
            if driver is not None and driver.engine.state_hash == need.state_digest:
                self._pending_state = None
                await self._perform(self.replica.install_state(need.seq, need.state_digest, self._now()))
                return
            for peer in need.peers:
                await self.daemon.send(peer, StateRequest(round_min=0))
            await asyncio.sleep(STATE_FETCH_RETRY_S)

    async def on_state_offer(self, sender: str, offer: StateOffer) -> None:
        need = self._pending_state
        if need is None or offer.state_hash != need.state_digest:
            return
        # Every asked peer offers the same state: install one offer, not one per peer at once. The
        # install waits for the entry being executed, so it runs as its own task: this peer's link
        # keeps being read meanwhile.
        self._pending_state = None
        self.daemon.spawn(self._install(sender, offer, need), "install-state")

    async def _install(self, sender: str, offer: StateOffer, need: FetchState) -> None:
        driver = self.daemon.driver
        assert driver is not None
        async with self._state_lock:
            if need.seq <= self.replica.last_executed:
                return  # executing the decided entries got us there first
            self._executing = True  # no proposal is built from the state being replaced
            try:
                try:
                    checkpoint_seq = await self.daemon.install_offer(sender, offer)
                except Exception as exc:
                    log.warning("node %s: state offer from %s unusable: %s", self.daemon.identity.short_id,
                                sender[:12], exc)
                    if self._pending_state is None:
                        self._start_state_fetch(need)
                    return
                # The model now holds the state at need.seq: the replica and the tracker learn it
                # before anything else can fail, or older queued entries would run on top of it.
                self._installed_seq = max(self._installed_seq, need.seq)
                driver.tracker.advance(driver.engine.round, driver.engine.state_hash, offer.epoch,
                                       driver.members, [], time.monotonic())
                effects: list[Any] = self.replica.install_state(need.seq, need.state_digest, self._now())
                await self._perform(effects)
                try:
                    await driver.record_installed(need.seq, self.replica.view, sender)
                    await self.daemon.save_checkpoint(checkpoint_seq)
                except Exception as exc:  # the state is installed; a lost record or checkpoint is not fatal
                    log.warning("node %s: round %d installed, but recording or checkpointing it failed: %s",
                                self.daemon.identity.short_id, driver.engine.round, exc)
            finally:
                self._executing = False
        self.applied.set()

    async def checkpoint_now(self) -> None:
        """A checkpoint asked for outside execution (the admin endpoint, a join, the final one): taken
        between two executed entries, so the saved state and its seq belong together."""
        async with self._state_lock:
            await self.daemon.save_checkpoint(self.executed_seq)
