"""The round protocol's I/O: train in a worker thread, publish the delta, pull peers' deltas, apply commits.

One `RoundDriver` per node. It owns the `SwarmEngine` (tensors) and the `RoundTracker` (pure
bookkeeping), and talks to the network only through the callables the daemon gives it. Everything
that touches tensors runs in one worker thread (`_work`), one job at a time in submission order, so
the engine never sees two threads and the event loop never waits on torch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import blake3

from moeswarm import wire
from moeswarm.clocks import HybridLogicalClock, VectorClock
from moeswarm.identity import Identity, verify
from moeswarm.placement import Member, place
from moeswarm.store import NodeStore
from moeswarm.swarm.aggregate import staleness_weight
from moeswarm.swarm.apply import Contribution
from moeswarm.swarm.engine import ApplyReport, DeltaRejected, SwarmEngine
from moeswarm.swarm.messages import BLOB_BYTES_MAX, DeltaAnnounce, DeltaBlob, RoundCommit
from moeswarm.swarm.round import HeldBlob, RoundTracker, Verdict

log = logging.getLogger(__name__)

T = TypeVar("T")
HISTORY_ROUNDS_MAX = 10_000
PENDING_FETCHES_MAX = 256
RECOVER_ATTEMPTS_MAX = 30
PLACEMENT_EPOCHS_KEPT = 4  # deltas trained under a recent epoch's placement are checked against it


@dataclass(slots=True)
class RoundRecord:
    """What the admin endpoint reports about one committed round."""

    round: int
    state_hash: str
    seq: int
    view: int
    epoch: int
    contributors: list[str]
    rejected: dict[str, str]
    heldout_bpb: float | None
    tokens: int
    commit_latency_ms: float
    committed_at: float
    # The peer whose checkpoint this node installed to reach the round, when it did not apply the
    # round's commit itself: then it knows the state hash but not the contributors.
    installed_from: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "state_hash": self.state_hash,
            "seq": self.seq,
            "view": self.view,
            "epoch": self.epoch,
            "contributors": self.contributors,
            "rejected": self.rejected,
            "heldout_bpb": self.heldout_bpb,
            "tokens": self.tokens,
            "commit_latency_ms": round(self.commit_latency_ms, 1),
            "committed_at": self.committed_at,
            "source": "commit" if self.installed_from is None else "state_transfer",
            "installed_from": self.installed_from,
        }


@dataclass(slots=True)
class HeldDelta:
    blob: DeltaBlob
    blob_id: bytes
    delta: dict[str, Any] | None  # decoded tensors, None when invalid


def blob_signing_bytes(blob: DeltaBlob) -> bytes:
    return wire.encode(replace(blob, sig=b""))


class RoundDriver:
    """Runs rounds for one node; see the module docstring."""

    def __init__(
        self,
        *,
        identity: Identity,
        engine: SwarmEngine,
        store: NodeStore,
        inner_steps: int,
        replicas: int,
        region_of: Callable[[str], str],
        deadline_s: float,
        staleness_rounds_max: int,
        eval_batches: int = 8,
    ) -> None:
        self.identity = identity
        self.engine = engine
        self.store = store
        self.inner_steps = inner_steps
        self.replicas = replicas
        self.region_of = region_of
        self.eval_batches = eval_batches
        self.hlc = HybridLogicalClock()
        self.version = VectorClock.of()
        self.members: tuple[str, ...] = ()
        self.tracker = RoundTracker(
            round=engine.round, base_hash=engine.state_hash, epoch=engine.epoch, members=(),
            deadline_s=deadline_s, staleness_rounds_max=staleness_rounds_max,
        )
        self.held: dict[bytes, HeldDelta] = {}
        self.history: list[RoundRecord] = []
        self.tokens_total = 0
        self.heldout_bpb: float | None = None
        self.phase = "idle"
        self.paused = asyncio.Event()
        self.paused.set()
        self.bytes_published = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
        self._interrupted = threading.Event()
        self._fetching: set[bytes] = set()
        self._owners: dict[int, tuple[str, ...]] = {}
        self._placements: dict[int, dict[int, tuple[str, ...]]] = {}  # epoch -> expert -> owners
        self._assignment: tuple[tuple[int, ...], int, int, int] | None = None  # owned, index, count, epoch
        self._assigned_epoch = engine.epoch
        self.fetch_missing: Callable[[bytes, list[str]], Awaitable[bool]] | None = None

    # --- worker thread --------------------------------------------------------------------------

    async def _work(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def interrupt(self) -> None:
        """Stop training at the next inner step (the node is stopping); what is queued behind it runs."""
        self._interrupted.set()

    def close(self) -> None:
        self._interrupted.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- membership -------------------------------------------------------------------------------

    def set_members(self, members: Sequence[str], epoch: int) -> None:
        """Recompute placement and the data shard from the member set (deterministic on every node).

        This node's new experts and shard take effect when its next round starts training: the delta
        of a round in progress is the one its training started with, and carries that epoch.
        """
        self.members = tuple(sorted(members))
        self.tracker.members = self.members
        self.tracker.epoch = epoch
        placement = place(
            self.engine.config.model.n_experts,
            [Member(node_id=m, region=self.region_of(m)) for m in self.members],
            min(self.replicas, len(self.members)),
        )
        # Known on non-members too (a joining node), so the deltas it holds are checked against the
        # experts their authors own.
        self._owners = {e: placement.owners(e) for e in range(self.engine.config.model.n_experts)}
        self._placements[epoch] = self._owners
        for old in sorted(self._placements)[:-PLACEMENT_EPOCHS_KEPT]:
            del self._placements[old]
        if self.identity.node_id not in self.members:
            return
        owned = tuple(placement.experts_of(self.identity.node_id))
        self._assignment = (owned, self.members.index(self.identity.node_id), len(self.members), epoch)

    def _take_assignment(self) -> None:
        """In the worker thread, between rounds: adopt the experts and shard the last placement gave us."""
        if self._assignment is not None:
            owned, index, count, epoch = self._assignment
            self._assignment = None
            self.engine.set_assignment(owned, index, count)
            self._assigned_epoch = epoch

    def experts_of(self, node_id: str, epoch: int | None = None) -> tuple[int, ...]:
        owners = self._owners if epoch is None else self._placements.get(epoch, {})
        return tuple(e for e, nodes in owners.items() if node_id in nodes)

    # --- training and publishing --------------------------------------------------------------

    async def train_and_publish(self) -> DeltaAnnounce | None:
        """H inner steps from the committed weights, then a signed blob stored locally; None when
        training was interrupted because the node is stopping (a partial round is not published).
        The caller waits while training is paused."""
        await self._work(self._take_assignment)
        base_round, base_hash = self.engine.round, self.engine.state_hash
        self.phase = "train"
        stats = await self._work(self.engine.train, self.inner_steps, self._interrupted.is_set)
        self.tokens_total += stats.tokens
        if self._interrupted.is_set():
            self.phase = "idle"
            return None
        self.phase = "encode"
        payload, names = await self._work(self._encode_delta)
        stamp = self.hlc.send(int(time.time() * 1000))
        self.version = self.version.increment(self.identity.node_id)
        unsigned = DeltaBlob(
            node=self.identity.node_id, round=base_round, base_hash=base_hash, epoch=self._assigned_epoch,
            hlc_ms=stamp.physical_ms, hlc_logical=stamp.logical, version=dict(self.version),
            names=tuple(names), payload=payload,
        )
        blob = replace(unsigned, sig=self.identity.sign(wire.encode(unsigned)))
        data = wire.encode(blob)
        blob_id = blake3.blake3(data).digest()
        await self._work(self.store.chunks.put, data)
        delta = await self._work(self._decode_own, blob)
        self._hold(blob, blob_id, delta, reason="")
        self.bytes_published += len(data)
        self.phase = "commit"
        return DeltaAnnounce(
            author=self.identity.node_id, round=base_round, base_hash=base_hash, blob_id=blob_id,
            size_bytes=len(data),
        )

    def _encode_delta(self) -> tuple[bytes, list[str]]:
        delta = self.engine.delta()
        return self.engine.encode(delta), list(delta)

    def _decode_own(self, blob: DeltaBlob) -> dict[str, Any] | None:
        try:
            return self.engine.decode(blob.payload, blob.names, self.engine.allowed_names(self.engine.owned))
        except DeltaRejected:
            return None  # our own poisoned (NaN) delta: held as invalid, never proposed by honest primaries

    # --- receiving --------------------------------------------------------------------------------

    def wants(self, announce: DeltaAnnounce) -> bool:
        if announce.blob_id in self.held or announce.blob_id in self._fetching:
            return False
        if self.tracker.holds(announce.blob_id):
            return False
        if len(self._fetching) >= PENDING_FETCHES_MAX:
            return False
        return announce.round + self.tracker.staleness_rounds_max >= self.engine.round

    async def fetch_and_check(self, blob_id: bytes, fetch: Callable[[], Awaitable[bytes]]) -> bool:
        """Pull a blob (its hash is checked by the fetcher), verify and decode it; True when now held."""
        if blob_id in self.held or blob_id in self._fetching:
            return blob_id in self.held
        self._fetching.add(blob_id)
        try:
            data = await fetch()
            if blake3.blake3(data).digest() != blob_id:
                log.warning("blob %s: content does not match its id", blob_id.hex()[:12])
                return False
            try:
                blob = wire.decode_as(data, DeltaBlob)
            except wire.WireError as exc:
                log.warning("blob %s rejected: %s", blob_id.hex()[:12], exc.reason)
                return False
            if not verify(blob.node, blob_signing_bytes(blob), blob.sig):
                log.warning("blob %s rejected: bad signature from %s", blob_id.hex()[:12], blob.node[:12])
                return False
            if blob.epoch > self.tracker.epoch:
                # Trained under a reconfiguration we have not applied yet: judged once we have (the
                # commit that lists it is PENDING until then, and fetches it again).
                return False
            delta, reason = await self._work(self._check, blob)
            await self._work(self.store.chunks.put, data)
            self._hold(blob, blob_id, delta, reason)
            return True
        finally:
            self._fetching.discard(blob_id)

    def _check(self, blob: DeltaBlob) -> tuple[dict[str, Any] | None, str]:
        if blob.node not in self.members:
            return None, "author is not a member"
        if blob.epoch not in self._placements:
            return None, f"trained under epoch {blob.epoch}, whose placement this node no longer knows"
        try:
            allowed = self.engine.allowed_names(self.experts_of(blob.node, blob.epoch))
            return self.engine.decode(blob.payload, blob.names, allowed), ""
        except DeltaRejected as exc:
            log.warning("delta from %s for round %d rejected: %s", blob.node[:12], blob.round, exc)
            return None, str(exc)

    def _hold(self, blob: DeltaBlob, blob_id: bytes, delta: dict[str, Any] | None, reason: str) -> None:
        self.held[blob_id] = HeldDelta(blob=blob, blob_id=blob_id, delta=delta)
        self.tracker.add(HeldBlob(author=blob.node, round=blob.round, blob_id=blob_id,
                                  valid=delta is not None, reason=reason))

    # --- consensus hooks ------------------------------------------------------------------------

    def judge(self, value: bytes) -> tuple[Verdict, str, list[bytes]]:
        try:
            commit = wire.decode_as(value, RoundCommit)
        except wire.WireError as exc:
            return Verdict.INVALID, f"not a round commit: {exc.reason}", []
        verdict, reason, missing = self.tracker.judge(commit)
        return verdict, reason, [e.blob_id for e in missing]

    def proposal(self, now: float) -> bytes | None:
        if not self.tracker.ready(now):
            return None
        return wire.encode(self.tracker.build_commit())

    async def apply(self, value: bytes, seq: int, view: int, proposed_at: float | None) -> ApplyReport | None:
        """Apply a decided commit; a commit that no longer extends our state is a deterministic no-op."""
        try:
            commit = wire.decode_as(value, RoundCommit)
        except wire.WireError:
            return None
        if commit.round != self.engine.round + 1 or commit.base_hash != self.engine.state_hash:
            log.info("seq %d: commit for round %d does not extend round %d: no-op", seq, commit.round,
                     self.engine.round)
            return None
        contributions = []
        for entry in commit.entries:
            if entry.blob_id not in self.held:
                await self._recover_blob(entry.blob_id, entry.node)
            held = self.held.get(entry.blob_id)
            if held is None or held.delta is None:
                if self.identity.node_id not in self.members:
                    # Voted out while away and catching up on rounds it took no part in: it will
                    # take the state by transfer when it joins again, so it need not rebuild them.
                    log.info("seq %d: round %d lists blob %s this node, not a member, cannot use: skipped",
                             seq, commit.round, entry.blob_id.hex()[:12])
                    return None
                raise RuntimeError(f"decided commit lists blob {entry.blob_id.hex()[:12]} this node lacks")
            weight = staleness_weight(self.engine.round - entry.round)
            contributions.append(Contribution(node_id=entry.node, delta=held.delta, weight=weight))
        self.phase = "apply"
        report = await self._work(self.engine.apply, contributions, commit.round, commit.epoch)
        bpb = await self._evaluate()
        committed = [e.blob_id for e in commit.entries]
        self.tracker.advance(report.round, report.state_hash, commit.epoch, self.members, committed,
                             time.monotonic())
        for blob_id in committed:
            self.held.pop(blob_id, None)
        self._forget_old()
        latency = (time.monotonic() - proposed_at) * 1000 if proposed_at else 0.0
        self._remember(seq, view, bpb, contributors=list(report.accepted), rejected=report.rejected,
                       commit_latency_ms=latency)
        if report.rejected:
            log.warning("round %d: rejected contributions %s", report.round,
                        {k[:12]: v for k, v in report.rejected.items()})
        return report

    async def record_installed(self, seq: int, view: int, sender: str) -> None:
        """Note a round reached by state transfer, so the node can answer for its state hash."""
        self._remember(seq, view, await self._evaluate(), contributors=[], rejected={}, commit_latency_ms=0.0,
                       installed_from=sender)

    async def _evaluate(self) -> float:
        bpb = await self._work(self.engine.evaluate, self.eval_batches)
        self.heldout_bpb = bpb
        return bpb

    def _remember(self, seq: int, view: int, bpb: float, *, contributors: list[str], rejected: dict[str, str],
                  commit_latency_ms: float, installed_from: str | None = None) -> None:
        """Add the round the engine is now at to the bounded history the admin endpoint reports."""
        self.history.append(RoundRecord(
            round=self.engine.round, state_hash=self.engine.state_hash.hex(), seq=seq, view=view,
            epoch=self.engine.epoch, contributors=contributors, rejected=rejected, heldout_bpb=bpb,
            tokens=self.tokens_total * max(1, len(self.members)), commit_latency_ms=commit_latency_ms,
            committed_at=time.time(), installed_from=installed_from,
        ))
        del self.history[:-HISTORY_ROUNDS_MAX]

    async def _recover_blob(self, blob_id: bytes, author: str) -> None:
        """A decided commit lists a blob we do not hold in memory (e.g. re-delivered after a restart):
        read it from our chunk store, else pull it from the swarm; a quorum validated it, so it exists."""
        store = self.store

        async def from_disk() -> bytes:
            return await self._work(store.chunks.get, blob_id.hex())

        if await self._safe_fetch(blob_id, from_disk):
            return
        for _ in range(RECOVER_ATTEMPTS_MAX):
            if self.fetch_missing is not None and await self.fetch_missing(blob_id, [author, *self.members]):
                return
            await asyncio.sleep(1.0)

    async def _safe_fetch(self, blob_id: bytes, fetch: Callable[[], Awaitable[bytes]]) -> bool:
        try:
            return await self.fetch_and_check(blob_id, fetch)
        except Exception:
            return False

    def _forget_old(self) -> None:
        oldest = self.engine.round - self.tracker.staleness_rounds_max
        self.held = {k: h for k, h in self.held.items() if h.blob.round >= oldest}

    def blob_size_max(self) -> int:
        return BLOB_BYTES_MAX
