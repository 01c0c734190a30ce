"""The node daemon: what `moe-swarm node` runs on every machine.

It wires the parts together and owns the event loop: the peer transport hands it verified envelopes,
it feeds them to the round driver and the PBFT replica, and carries out the effects they return. The
one rule that makes a restarted node safe: whatever the replica asks to persist is appended and
fsync'd to the consensus log before any message that follows it leaves the node.

Lifecycle: open the data dir (exclusive lock), restore the newest checkpoint, start transport + admin,
find peers (seeds or DNS discovery), form or join the replica set, then loop over rounds until told to
stop; SIGTERM/SIGINT drain: the node asks to leave by reconfiguration, waits up to the drain timeout,
and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import typing
from collections.abc import Awaitable
from typing import Any

from moeswarm import wire
from moeswarm.clocks import HybridLogicalClock
from moeswarm.gossip import GossipMessage
from moeswarm.identity import Envelope, Identity, seal
from moeswarm.model.config import preset
from moeswarm.model.data import load_corpus
from moeswarm.model.trainer import TrainConfig
from moeswarm.node.admin import AdminServer, ControlError, start_admin
from moeswarm.node.config import NodeConfig
from moeswarm.node.consensus_driver import ConsensusDriver
from moeswarm.node.discovery import build_discovery
from moeswarm.node.gossip_driver import GossipDriver
from moeswarm.node.membership import MembershipDriver
from moeswarm.node.metrics import NodeMetrics
from moeswarm.node.rounds import RoundDriver
from moeswarm.node.transport import PeerTransport
from moeswarm.store import NodeStore
from moeswarm.store.checkpoints import WEIGHTS, Manifest, tensor_from_bytes
from moeswarm.swarm.aggregate import AggregationConfig, Rule
from moeswarm.swarm.engine import MOMENTUM_PREFIX, EngineConfig, SwarmEngine
from moeswarm.swarm.messages import (
    DeltaAnnounce,
    JoinRequest,
    LeaveRequest,
    StateOffer,
    StateRequest,
    SwarmHello,
)
from moeswarm.swarm.outer import OuterConfig

log = logging.getLogger(__name__)

TICK_S = 0.2
GOSSIP_TYPES = typing.get_args(GossipMessage)
CHECKPOINTS_KEPT = 3
# Chunks stored less than this before the oldest kept checkpoint survive collection (at least; more
# when rounds are long): they hold the delta blobs a restart replays from the log.
GC_MARGIN_MIN_S = 600.0
FINISH_LINGER_S = 120.0
SHUTDOWN_STEP_S = 10.0  # each step of a stop; the whole stop stays well inside fly.toml's kill_timeout
SHUTDOWN_STEP_SLOW_S = 2.0
VITAL_TASKS = frozenset({"execute", "tick"})  # loops a node cannot run without (membership catches its own)


class NodeDaemon:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.store = NodeStore(config.data_dir)
        self.identity = Identity.load_or_create(self.store.key_path)
        self.metrics = NodeMetrics(node=self.identity.short_id, region=config.region)
        self.hlc = HybridLogicalClock()
        # Envelope sequence numbers must keep rising across restarts (peers' replay windows remember
        # the highest seen), so they start from the wall clock in microseconds.
        self._seq = time.time_ns() // 1000
        self.stopping = asyncio.Event()
        self.exit_status = 0
        self._overran = False  # a shutdown step ran out of time
        self.draining = False
        self.started_at = time.time()
        self.transport: PeerTransport | None = None
        self.admin: AdminServer | None = None
        self.driver: RoundDriver | None = None
        self.consensus: ConsensusDriver | None = None
        self.gossip: GossipDriver | None = None
        self.membership = MembershipDriver(self)
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- sending ----------------------------------------------------------------------------------

    def seal(self, msg: object, epoch: int = 0) -> bytes:
        self._seq += 1
        stamp = self.hlc.send(int(time.time() * 1000))
        return seal(self.identity, msg, epoch=epoch, seq=self._seq, hlc=stamp)

    async def send(self, node_id: str, msg: object) -> None:
        assert self.transport is not None
        await self.transport.send(node_id, self.seal(msg), kind=wire.type_name_of(msg))

    async def broadcast(self, msg: object, droppable: bool = False) -> None:
        assert self.transport is not None
        await self.transport.broadcast(self.seal(msg), kind=wire.type_name_of(msg), droppable=droppable)

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("node %s: task %s failed", self.identity.short_id, task.get_name(), exc_info=task.exception())
        if task.get_name() in VITAL_TASKS and not self.stopping.is_set():
            # Without this loop the node would stay up but never execute, tick or follow membership
            # again. Crash-only: stop with a failure status, so the orchestrator restarts it and it
            # resumes from its checkpoint and durable log, catching up from its peers.
            log.error("node %s: cannot go on without its %s loop; stopping with exit status 1",
                      self.identity.short_id, task.get_name())
            self.exit_status = 1
            self.stopping.set()

    # --- start-up -------------------------------------------------------------------------------

    def _engine(self) -> SwarmEngine:
        c = self.config
        model = preset(c.preset)
        total_steps = c.rounds * c.inner_steps if c.rounds else 100_000
        train = TrainConfig(
            batch_size=c.batch_size, lr=c.inner_lr, total_steps=max(total_steps, 1), seed=c.seed,
            warmup_steps=min(30, max(1, total_steps // 20)),
            schedule="cosine" if c.rounds else "constant",
        )
        outer = OuterConfig(
            lr=c.outer_lr if c.outer_optimizer == "nesterov" else 1.0,
            momentum=c.outer_momentum if c.outer_optimizer == "nesterov" else 0.0,
        )
        corpus = load_corpus([str(c.data_path)] if c.data_path else None)
        device = c.device if c.device != "auto" else ("cuda" if _cuda() else "cpu")
        return SwarmEngine(
            EngineConfig(model=model, train=train, codec=c.codec, outer=outer, device=device, poison=c.poison,
                         aggregation=_aggregation(c.aggregation)),
            corpus,
        )

    def _restore(self, engine: SwarmEngine) -> tuple[list[str], int, int] | None:
        manifest = self.store.checkpoints.latest()
        if manifest is None:
            return None
        state, manifest = self.store.checkpoints.load(manifest.round)
        momentum = self.store.checkpoints.load_optimizer(manifest.round)
        state.update({MOMENTUM_PREFIX + k: v for k, v in momentum.items()})
        engine.install(state, manifest.round, manifest.epoch, manifest.state_hash)
        members = list(manifest.meta.get("members", []))
        log.info("node %s: resumed from checkpoint of round %d (%s)", self.identity.short_id,
                 manifest.round, manifest.state_hash.hex()[:12])
        return members, int(manifest.meta.get("seq", 0)), int(manifest.meta.get("epoch_start_seq", 0))

    async def run(self) -> int:
        c = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_drain)
            except NotImplementedError:  # an event loop without Unix signals (Windows)
                log.warning("node %s: cannot handle %s here; use POST /v1/drain to leave cleanly",
                            self.identity.short_id, sig.name)
        engine = await asyncio.to_thread(self._engine)
        restored = await asyncio.to_thread(self._restore, engine)
        self.driver = RoundDriver(
            identity=self.identity, engine=engine, store=self.store, inner_steps=c.inner_steps,
            # Placement must be computed from agreed inputs only, and regions are not yet part of the
            # committed membership: every node is placed as one region until they are.
            replicas=c.replicas, region_of=lambda n: "swarm",
            deadline_s=c.round_deadline_s, staleness_rounds_max=c.staleness_rounds_max,
        )
        self.driver.fetch_missing = self.fetch_blob
        self.transport = PeerTransport(
            self.identity, c.cluster_key or "", c.listen_host, c.peer_port, self.on_envelope,
            self._blob_source, metrics=self.metrics,
        )
        await self.transport.start()
        self.admin = await start_admin(self, c.admin_token, self.metrics, c.admin_host, c.admin_port)
        log.info("node %s (%s) up: peers on %s:%d, admin on %s:%d", c.name, self.identity.short_id,
                 c.listen_host, c.peer_port, c.admin_host, c.admin_port)
        self._start_discovery()
        self.spawn(self.membership.run(), "membership")
        start = await self.membership.starting_point(restored)
        self.consensus = ConsensusDriver(self, list(start.members), epoch=start.epoch,
                                         executed_seq=start.executed_seq, epoch_start_seq=start.epoch_start_seq)
        await self.consensus.start()
        self.gossip = GossipDriver(self, c.seed, self.transport.connected_peers())
        self.gossip.set_local("region", c.region)
        self.driver.set_members(self.consensus.members, self.consensus.epoch)
        # The first round's deadline runs from now, not from the clock's origin: otherwise every node
        # counts it as long past and the primary commits round 1 with whatever single delta it holds.
        self.driver.tracker.round_started = time.monotonic()
        self.spawn(self._tick_loop(), "tick")
        try:
            await self._round_loop()
        finally:
            await self._shutdown()
        return self.exit_status

    def _start_discovery(self) -> None:
        c = self.config
        discovery = build_discovery(c.discovery, peers=list(c.peers), peer_port=c.peer_port)
        if discovery is None:
            return
        assert self.transport is not None
        transport = self.transport

        async def follow() -> None:
            async for change in discovery.watch():
                for cand in change.added:
                    transport.connect(cand.hostport)
                for cand in change.removed:
                    transport.forget(cand.hostport)

        self.spawn(follow(), "discovery")

    # --- loops ----------------------------------------------------------------------------------

    async def _round_loop(self) -> None:
        assert self.driver is not None and self.consensus is not None
        rounds, consensus = self.driver, self.consensus
        while not self.stopping.is_set():
            if self.config.rounds and rounds.engine.round >= self.config.rounds:
                log.info("node %s: reached round %d, finishing", self.identity.short_id, rounds.engine.round)
                await self._linger(self.config.rounds)
                break
            if self.identity.node_id not in consensus.members:
                # Not (or no longer) a member: wait for the reconfiguration that changes that.
                consensus.membership_changed.clear()
                if self.identity.node_id not in consensus.members:
                    await self._wait_or_stop(consensus.membership_changed.wait())
                continue
            if not rounds.paused.is_set():
                await self._wait_or_stop(rounds.paused.wait())  # a paused node still drains
                continue
            base = rounds.engine.round
            announce = await self._train_unless_stopped(rounds)
            if announce is None or self.stopping.is_set():
                break
            await self.broadcast(announce)
            consensus.poke()
            while rounds.engine.round == base and not self.stopping.is_set():
                await self._wait_or_stop(consensus.applied.wait())
                consensus.applied.clear()

    async def _train_unless_stopped(self, rounds: RoundDriver) -> DeltaAnnounce | None:
        """A round of training, cut short at the next inner step when the node stops meanwhile."""
        work = asyncio.ensure_future(rounds.train_and_publish())
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not work.done():
            rounds.interrupt()
        return await work

    async def _linger(self, final_round: int) -> None:
        """The job is done; keep serving (blobs, votes, catch-up) until every member has gossiped that
        it reached the final round too, or FINISH_LINGER_S passes, then exit without leaving."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_LINGER_S
        me = self.identity.node_id
        while not self.stopping.is_set() and loop.time() < deadline:
            members = self.consensus.members if self.consensus else ()
            state = self.gossip.state if self.gossip else {}
            rounds = [_int(state.get(m, {}).get("round")) for m in members if m != me]
            if all(r >= final_round for r in rounds):
                await asyncio.sleep(1.0)  # let our last votes and checkpoints reach them
                return
            await asyncio.sleep(0.5)

    async def _wait_or_stop(self, awaitable: Any) -> None:
        waiters = [asyncio.ensure_future(self.stopping.wait())]
        if awaitable is not None:
            waiters.append(asyncio.ensure_future(awaitable))
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for p in pending:
            p.cancel()

    async def _tick_loop(self) -> None:
        assert self.consensus is not None
        while not self.stopping.is_set():
            await self.consensus.tick()
            if self.gossip is not None and self.driver is not None:
                self.gossip.set_local("round", str(self.driver.engine.round))
                await self.gossip.tick()
            self.metrics.peers_connected.set(len(self.transport.connected_peers()) if self.transport else 0)
            await asyncio.sleep(TICK_S)

    # --- receiving ------------------------------------------------------------------------------

    async def on_envelope(self, sender: str, envelope: Envelope) -> None:
        try:
            msg = envelope.message()
        except wire.WireError as exc:
            self.metrics.count_rejected("bad_body")
            log.warning("node %s: dropped %s from %s: %s", self.identity.short_id, envelope.type, sender[:12],
                        exc.reason)
            return
        self.hlc.receive(envelope.hlc, int(time.time() * 1000)) if _hlc_ok(self.hlc, envelope) else None
        if isinstance(msg, DeltaAnnounce):
            await self._on_announce(sender, msg)
        elif isinstance(msg, StateRequest):
            await self._on_state_request(sender, msg)
        elif isinstance(msg, GOSSIP_TYPES):
            if self.gossip is not None:
                await self.gossip.on_message(sender, msg)
        elif isinstance(msg, SwarmHello | JoinRequest | LeaveRequest):
            await self.membership.on_message(sender, msg)
        elif isinstance(msg, StateOffer):
            if self.consensus is not None:  # none asked for before the node has decided how to start
                await self.consensus.on_state_offer(sender, msg)
        elif self.consensus is not None:
            await self.consensus.on_message(sender, msg)

    async def _on_announce(self, sender: str, announce: DeltaAnnounce) -> None:
        if self.driver is None or self.transport is None or self.consensus is None:
            return  # still starting (deciding whether to resume, join or form a swarm): not our round yet
        if not self.driver.wants(announce):
            return
        self.spawn(self.fetch_blob(announce.blob_id, [sender, announce.author]), "fetch-blob")

    async def fetch_blob(self, blob_id: bytes, sources: list[str]) -> bool:
        """Pull a delta blob from the first source that has it; then re-run pending validations."""
        assert self.driver is not None and self.transport is not None and self.consensus is not None
        transport = self.transport
        for source in dict.fromkeys(sources):
            if source == self.identity.node_id:
                continue

            async def fetch(source: str = source) -> bytes:
                return await transport.fetch_blob(source, blob_id.hex(), self.driver.blob_size_max())  # type: ignore[union-attr]

            try:
                if await self.driver.fetch_and_check(blob_id, fetch):
                    self.consensus.poke()
                    return True
            except Exception as exc:
                self.metrics.blob_fetch_failures.labels(reason=type(exc).__name__).inc()
                log.info("node %s: blob %s from %s failed: %s", self.identity.short_id, blob_id.hex()[:12],
                         source[:12], exc)
        return False

    def _blob_source(self, blob_id: str) -> bytes | None:
        try:
            return self.store.chunks.get(blob_id)
        except Exception:
            return None

    async def _on_state_request(self, sender: str, request: StateRequest) -> None:
        manifest = await asyncio.to_thread(self.store.checkpoints.latest)
        if manifest is None or manifest.round < request.round_min:
            return
        raw = manifest.to_bytes()
        await self.send(sender, StateOffer(round=manifest.round, epoch=manifest.epoch,
                                           state_hash=manifest.state_hash, manifest=raw))

    # --- checkpoints ------------------------------------------------------------------------------

    async def save_checkpoint(self, seq: int) -> None:
        """Write the committed state as of `seq` and collect what no kept checkpoint needs.

        Callers hold the consensus driver's state lock (execution, a state install, `checkpoint_now`):
        that makes saves one at a time, and nothing replaces or updates the committed weights while
        they are written, so the checkpoint needs no copy of them.
        """
        assert self.driver is not None and self.consensus is not None
        engine = self.driver.engine
        meta = {
            "members": list(self.consensus.members),
            "seq": seq,
            "epoch_start_seq": self.consensus.epoch_start_seq,
            "model_config": engine.config.model.to_json(),
        }
        await asyncio.to_thread(self.store.checkpoints.save, engine.round, dict(engine.weights),
                                state_hash=engine.state_hash, meta=meta, epoch=engine.epoch,
                                optimizer=dict(engine.momentum))
        # Without collection the data volume fills: every checkpoint writes the chunks that
        # changed and every round stores each member's delta blob.
        pinned = {blob_id.hex() for blob_id in self.driver.held}
        margin = max(GC_MARGIN_MIN_S, (self.config.staleness_rounds_max + 2) * self.config.round_deadline_s)
        gc = await asyncio.to_thread(self.store.collect_garbage, keep_checkpoints=CHECKPOINTS_KEPT,
                                     pinned=pinned, margin_s=margin)
        self.metrics.store_bytes.set(gc.kept_bytes)
        self.metrics.store_chunks.set(gc.kept)
        self.metrics.store_bytes_collected.inc(gc.freed_bytes)

    async def install_offer(self, sender: str, offer: StateOffer) -> int:
        """Adopt a peer's checkpoint: fetch its chunks by id (hash-checked), verify the state hash.
        Returns the consensus seq the checkpoint was taken at."""
        assert self.driver is not None and self.transport is not None
        manifest = Manifest.from_bytes(offer.manifest)
        if manifest.state_hash != offer.state_hash or manifest.round != offer.round:
            raise ValueError("offer and manifest disagree")
        state = {}
        for entry in manifest.tensors:
            if not self.store.chunks.has(entry.chunk):
                data = await self.transport.fetch_blob(sender, entry.chunk, entry.nbytes)
                await asyncio.to_thread(self.store.chunks.put, data, expect=entry.chunk)
            data = await asyncio.to_thread(self.store.chunks.get, entry.chunk)
            name = entry.name if entry.group == WEIGHTS else MOMENTUM_PREFIX + entry.name
            state[name] = tensor_from_bytes(data, entry)
        engine = self.driver.engine
        await self.driver._work(engine.install, state, manifest.round, manifest.epoch, offer.state_hash)
        members = [m for m in manifest.meta.get("members", []) if isinstance(m, str)]
        if members:
            self.driver.set_members(members, manifest.epoch)
        log.info("node %s: installed round %d from %s by state transfer", self.identity.short_id,
                 manifest.round, sender[:12])
        seq = manifest.meta.get("seq", 0)
        return seq if isinstance(seq, int) and seq >= 0 else 0

    # --- drain and shutdown -----------------------------------------------------------------------

    def request_drain(self) -> None:
        if self.draining:
            log.warning("node %s: second signal, stopping now", self.identity.short_id)
            self.stopping.set()
            return
        self.draining = True
        self.membership.request_leave()
        log.info("node %s: draining (leaving the swarm, up to %.0fs)", self.identity.short_id,
                 self.config.drain_timeout_s)
        self.spawn(self._drain(), "drain")

    async def _drain(self) -> None:
        try:
            if self.consensus is not None:
                await asyncio.wait_for(self.consensus.leave(), timeout=self.config.drain_timeout_s)
        except TimeoutError:
            log.warning("node %s: could not leave by reconfiguration within %.0fs; stopping anyway",
                        self.identity.short_id, self.config.drain_timeout_s)
        finally:
            self.stopping.set()

    async def _shutdown(self) -> None:
        """Stop within a bounded time: an orchestrator (Fly's kill_timeout, Kubernetes' grace period)
        kills a node that overruns, so every step has a time limit and a slow one is logged by name."""
        if self.driver is not None:
            self.driver.interrupt()  # the final checkpoint must not wait behind a round of training
        if self.driver is not None and self.consensus is not None and self.driver.engine.round > 0:
            # Nothing committed is lost: the final state is on disk before the node exits (and every
            # committed round is in the consensus log, fsync'd, should this step run out of time).
            await self._bounded("final checkpoint", self.consensus.checkpoint_now())
        for task in list(self._tasks):
            task.cancel()
        await self._bounded("stopping tasks", asyncio.gather(*self._tasks, return_exceptions=True))
        if self.admin is not None:
            await self._bounded("admin endpoint", self.admin.stop())
        if self.transport is not None:
            await self._bounded("peer connections", self.transport.stop())
        if self.driver is not None:
            await self._bounded("training worker", asyncio.to_thread(self.driver.close))
        if self._overran:
            # A step that ran out of time leaves its thread running, and the interpreter would wait
            # for it at exit. Everything committed is already fsync'd in the log, so exit now,
            # without closing the store under a thread that may still write to it.
            log.error("node %s: stopped with steps still running; exiting now", self.identity.short_id)
            logging.shutdown()
            os._exit(self.exit_status)
        self.store.close()
        log.info("node %s: stopped", self.identity.short_id)

    async def _bounded(self, step: str, awaitable: Awaitable[Any]) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(awaitable, timeout=SHUTDOWN_STEP_S)
        except TimeoutError:
            self._overran = True
            log.error("node %s: shutdown step %r still running after %.0fs; going on without it",
                      self.identity.short_id, step, SHUTDOWN_STEP_S)
        except Exception:
            log.exception("node %s: shutdown step %r failed", self.identity.short_id, step)
        else:
            spent = time.monotonic() - started
            if spent > SHUTDOWN_STEP_SLOW_S:
                log.warning("node %s: shutdown step %r took %.1fs", self.identity.short_id, step, spent)

    # --- NodeControl for the admin endpoint ---------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"ok": not self.draining, "node": self.config.name, "draining": self.draining}

    def status(self) -> dict[str, Any]:
        r, cons = self.driver, self.consensus
        engine = r.engine if r else None
        return {
            "node": self.config.name,
            "node_id": self.identity.node_id,
            "short_id": self.identity.short_id,
            "region": self.config.region,
            # from the tracker, which moves on the event loop once a commit is fully applied: the
            # engine's own fields change one by one in the worker thread while it applies
            "round": r.tracker.round if r else 0,
            "state_hash": r.tracker.base_hash.hex() if r else None,
            "heldout_bpb": r.heldout_bpb if r else None,
            "phase": ("draining" if self.draining else "paused" if r and not r.paused.is_set()
                      else r.phase if r else "starting"),
            "commits": sum(1 for h in r.history if h.installed_from is None) if r else 0,
            "view": cons.view if cons else 0,
            "epoch": cons.epoch if cons else 0,
            "members": len(cons.members) if cons else 0,
            "member": bool(cons and self.identity.node_id in cons.members),
            "primary": cons.primary if cons else None,
            "experts": list(engine.owned) if engine else [],
            "peers_connected": len(self.transport.connected_peers()) if self.transport else 0,
            "bytes_sent": int(_total(self.metrics, "moeswarm_bytes_sent_total")),
            "bytes_received": int(_total(self.metrics, "moeswarm_bytes_received_total")),
            "store_bytes": int(self.metrics.value("moeswarm_store_bytes")),
            "tokens": r.tokens_total if r else 0,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def peers(self) -> dict[str, Any]:
        table = self.transport.peer_table() if self.transport else []
        members = set(self.consensus.members) if self.consensus else set()
        for row in table:
            row["member"] = row.get("node_id") in members
            if self.gossip is not None and isinstance(row.get("node_id"), str):
                row.update(self.gossip.describe(str(row["node_id"])))
        return {"peers": table}

    def experts(self) -> dict[str, Any]:
        if self.driver is None:
            return {"experts": {}}
        owners = getattr(self.driver, "_owners", {})
        return {"replicas": self.config.replicas,
                "experts": {str(e): list(nodes) for e, nodes in sorted(owners.items())},
                "mine": list(self.driver.engine.owned)}

    def rounds(self, from_round: int | None, limit: int) -> dict[str, Any]:
        history = self.driver.history if self.driver else []
        rows = [h for h in history if from_round is None or h.round >= from_round]
        rows = rows[:limit] if from_round is not None else rows[-limit:]
        return {"rounds": [h.as_json() for h in rows]}

    def round(self, r: int) -> dict[str, Any] | None:
        for h in self.driver.history if self.driver else []:
            if h.round == r:
                return h.as_json()
        return None

    async def checkpoint(self) -> dict[str, Any]:
        if self.driver is None or self.consensus is None:
            raise ControlError("not_ready", "the node is still starting", 409)
        await self.consensus.checkpoint_now()
        return {"checkpointed_round": self.driver.engine.round}

    def drain(self) -> dict[str, Any]:
        self.request_drain()
        return {"draining": True}

    def pause(self) -> dict[str, Any]:
        if self.driver is None:
            raise ControlError("not_ready", "the node is still starting", 409)
        self.driver.paused.clear()
        self.metrics.training_paused.set(1)
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        if self.driver is None:
            raise ControlError("not_ready", "the node is still starting", 409)
        self.driver.paused.set()
        self.metrics.training_paused.set(0)
        return {"paused": False}


def _total(metrics: NodeMetrics, name: str) -> float:
    total = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def _hlc_ok(clock: HybridLogicalClock, envelope: Envelope) -> bool:
    try:
        clock.check(envelope.hlc, int(time.time() * 1000))
    except ValueError:
        return False
    return True


def _aggregation(name: str) -> AggregationConfig:
    if name == "mean":
        return AggregationConfig(expert_rule=Rule.MEAN, trunk_rule=Rule.MEAN)
    return AggregationConfig()


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
