"""The PBFT replica: its state, its public entry points, and the dispatch of messages and timers.

The transitions live beside it, one concern per module -- ``normal`` (pre-prepare, prepare, commit,
delivery, reconfiguration), ``viewchange`` (view-change and new-view), ``catchup`` (checkpoints,
fetching missed decisions, state transfer) and ``durable`` (restart from persisted records) -- as
functions over this object's state. Every entry point returns the effects the driver must perform.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from moeswarm.consensus import catchup, durable, normal, viewchange
from moeswarm.consensus.certs import Verifier
from moeswarm.consensus.config import Config, Membership, Validation
from moeswarm.consensus.effects import Broadcast, Effect, FetchState, Persist
from moeswarm.consensus.log import Slot
from moeswarm.consensus.messages import (
    CatchUp,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommittedEntry,
    Fetch,
    Kind,
    NewView,
    Prepare,
    PrePrepare,
    Proposal,
    SignedT,
    ViewChange,
    sign,
)
from moeswarm.identity import Identity, VerifiedSignatureCache

ValidateValue = Callable[[int, bytes], Validation]
ValidateMembers = Callable[[int, tuple[str, ...]], Validation]
EARLY_MESSAGES_MAX = 512
TRANSFER_TARGETS_KEPT = 4  # messages for a view or epoch the replica has not entered yet


class Replica:
    """One member's PBFT state machine (see the package docstring for how a driver uses it)."""

    def __init__(
        self,
        identity: Identity,
        members: Sequence[str],
        config: Config,
        validate: ValidateValue,
        *,
        epoch: int = 0,
        epoch_start_seq: int = 0,
        restored: Sequence[object] = (),
        applied_seq: int | None = None,
        validate_members: ValidateMembers | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.identity = identity
        self.me = identity.node_id
        self.config = config
        self.validate = validate
        self.validate_members = validate_members
        self.verify: Verifier = verifier or VerifiedSignatureCache().verify
        self.ms = Membership(epoch, tuple(sorted(members)), epoch_start_seq)
        self.q = config.unsafe_quorum or self.ms.quorum
        self.view = 0
        self.active = True  # False between sending a view-change and accepting the new-view
        self.low = epoch_start_seq  # the stable checkpoint: the log holds seqs above it
        self.stable: CheckpointCertificate | None = None
        self.slots: dict[int, Slot] = {}
        self.last_delivered = epoch_start_seq
        self.last_executed = epoch_start_seq
        self.next_seq = epoch_start_seq + 1
        self.ckpt_votes: dict[str, dict[int, Checkpoint]] = {}
        self.own_checkpoint: Checkpoint | None = None
        self.vcs: dict[int, dict[str, ViewChange]] = {}
        self.new_view: NewView | None = None  # the new-view that started the current view
        self.chain: list[CommittedEntry] = []  # decided reconfigurations, oldest first
        self.future: dict[int, Membership] = {}  # later epochs learned from a verified chain
        self.future_entries: dict[int, CommittedEntry] = {}  # the decisions that started them
        self.wanted: Proposal | None = None  # a value this replica wants decided
        self.wanted_reconfig: Proposal | None = None
        self.attempts = 0  # consecutive view changes without a delivery
        self.progress_at: float | None = None
        self.newview_at: float | None = None
        self.stuck_at: float | None = None  # a view change without a quorum looks around again
        self.resend_at: float | None = None
        self.claims: dict[str, tuple[int, int, int]] = {}  # peer -> (epoch, view, checkpoint seq) shown
        self.known_decided = 0  # highest seq a quorum of commits shows decided, seen by this replica
        self.behind_since: float | None = None
        self.fetch_at: float | None = None
        self.fetch_round = 0
        self.served: dict[str, float] = {}
        self.helped: dict[str, int] = {}  # peer -> view of the new-view last sent to it
        self.transfer: FetchState | None = None  # the state the application is asked to fetch
        # Recent targets, the current one last: the application may finish an older one after a
        # newer stable checkpoint superseded it, and that still moves this replica forward.
        self.transfers: deque[tuple[FetchState, Membership, CheckpointCertificate]] = deque(
            maxlen=TRANSFER_TARGETS_KEPT
        )
        self.fetched: dict[int, CommittedEntry] = {}
        self.future_ckpts: dict[str, Checkpoint] = {}  # latest checkpoint per member of a later epoch
        self.early: deque[tuple[object, str]] = deque(maxlen=EARLY_MESSAGES_MAX)
        self.replay_early = False
        self.removed = self.me not in self.ms
        self.out: list[Effect] = []
        durable.restore(self, restored, applied_seq)

    # ------------------------------------------------------------------ public entry points

    def start(self, now: float) -> list[Effect]:
        """Call once before anything else: re-delivers decided entries the application has not
        applied (after a restart), asks for state if it is behind the stable checkpoint, arms timers."""
        durable.resume(self, now)
        return self._flush(now)

    def propose(self, value: bytes, now: float) -> list[Effect]:
        """Ask for ``value`` to be decided next. The primary pre-prepares it; a backup remembers it
        (replacing any earlier one), starts suspecting the primary if nothing is decided within the
        view timeout, and proposes it itself if it becomes primary. Any decided value satisfies it."""
        normal.propose(self, Proposal(kind=Kind.VALUE, value=value), now)
        return self._flush(now)

    def propose_reconfigure(self, members: Sequence[str], now: float) -> list[Effect]:
        """Ask for the member set of the next epoch to become ``members`` (like ``propose``)."""
        proposal = Proposal(
            kind=Kind.RECONFIGURE, epoch=self.ms.epoch + 1, members=tuple(sorted(set(members)))
        )
        normal.propose(self, proposal, now)
        return self._flush(now)

    def on_message(self, msg: object, sender: str, now: float) -> list[Effect]:
        """Handle a message from ``sender`` (authenticated by the transport). Invalid messages are
        dropped without effects; votes are checked against their own signatures."""
        self._dispatch(msg, sender, now)
        return self._flush(now)

    def on_tick(self, now: float) -> list[Effect]:
        """Fire the timers that are due (the driver calls it at ``next_deadline()``)."""
        if self.progress_at is not None and now >= self.progress_at and self.active:
            viewchange.start(self, self.view + 1, now)
        if self.newview_at is not None and now >= self.newview_at and not self.active:
            viewchange.start(self, self.view + 1, now)
        if self.stuck_at is not None and now >= self.stuck_at and not self.active:
            viewchange.unstick(self, now)
        if self.resend_at is not None and now >= self.resend_at:
            normal.resend(self, now)
        catchup.maybe_fetch(self, now)
        return self._flush(now)

    def next_deadline(self) -> float | None:
        timers = (self.progress_at, self.newview_at, self.stuck_at, self.resend_at)
        times = [t for t in timers if t is not None]
        if self.behind_since is not None:
            times.append(max(self.behind_since + self.config.fetch_delay, self.fetch_at or 0.0))
        return min(times, default=None)

    def withdraw_reconfigure(self) -> None:
        """Forget a reconfiguration this replica asked for and no longer wants. One that a primary
        has pre-prepared already goes on; this only stops the replica from pressing for it."""
        self.wanted_reconfig = None

    def recheck(self, now: float) -> list[Effect]:
        """Re-run validation of proposals that were PENDING (e.g. a missing delta arrived)."""
        normal.recheck(self, now)
        return self._flush(now)

    def executed(self, seq: int, state_digest: bytes, now: float) -> list[Effect]:
        """The application applied everything up to ``seq``; its state digest is ``state_digest``."""
        catchup.executed(self, seq, state_digest, now)
        return self._flush(now)

    def install_state(self, seq: int, state_digest: bytes, now: float) -> list[Effect]:
        """The application installed the state a ``FetchState`` effect asked for."""
        catchup.install_state(self, seq, state_digest, now)
        return self._flush(now)

    def durable_records(self) -> list[object]:
        """The smallest record list that restores this replica: a driver may rewrite its log with it."""
        return durable.records(self)

    # ------------------------------------------------------------------ views of the state

    @property
    def epoch(self) -> int:
        return self.ms.epoch

    @property
    def members(self) -> tuple[str, ...]:
        return self.ms.members

    @property
    def primary(self) -> str:
        return self.ms.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.ms.primary(self.view) == self.me

    def quorum_of(self, ms: Membership) -> int:
        return self.config.unsafe_quorum or ms.quorum

    def timeout(self) -> float:
        return self.config.timeout(self.attempts)

    def slot(self, seq: int) -> Slot:
        found = self.slots.get(seq)
        if found is None:
            found = self.slots[seq] = Slot(seq)
        return found

    def stable_at_low(self) -> bool:
        """True once the seq the log starts from has a stable checkpoint (an epoch's first seq has
        none until a quorum of the new member set signs it)."""
        return self.stable is not None and self.stable.seq == self.low

    def in_window(self, seq: int) -> bool:
        return self.low < seq <= self.low + self.config.window

    # ------------------------------------------------------------------ helpers for the transitions

    def emit(self, effect: Effect) -> None:
        self.out.append(effect)

    def sign_and_broadcast(self, msg: SignedT) -> SignedT:
        """Sign, persist, then broadcast one of our own votes (persisting first is what keeps a
        restarted replica from contradicting itself)."""
        signed = sign(self.identity, msg)
        self.out.append(Persist(signed))
        self.out.append(Broadcast(signed))
        return signed

    def defer(self, msg: object, sender: str) -> None:
        """Keep a message for a view or epoch not entered yet; replayed when the replica gets there."""
        self.early.append((msg, sender))

    def _dispatch(self, msg: object, sender: str, now: float) -> None:
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            return
        epoch = getattr(msg, "epoch", None)
        if isinstance(epoch, int) and epoch < self.ms.epoch and not isinstance(msg, Fetch):
            # Also from a replica that was removed: it may be the only one that can tell the old
            # epoch how it ended.
            catchup.help_old_epoch(self, sender, epoch, now)
            return
        if self.removed and not isinstance(msg, Fetch | CatchUp):
            return
        handler(self, msg, sender, now)

    def _flush(self, now: float) -> list[Effect]:
        rounds = 0
        while self.replay_early and rounds < 4:  # bounded: each round replays a bounded buffer
            self.replay_early = False
            rounds += 1
            pending = list(self.early)
            self.early.clear()
            for msg, sender in pending:
                self._dispatch(msg, sender, now)
        normal.update_timers(self, now)
        out, self.out = self.out, []
        return out


_HANDLERS: dict[type, Callable[[Replica, object, str, float], None]] = {
    PrePrepare: normal.on_pre_prepare,  # type: ignore[dict-item]
    Prepare: normal.on_prepare,  # type: ignore[dict-item]
    Commit: normal.on_commit,  # type: ignore[dict-item]
    Checkpoint: catchup.on_checkpoint,  # type: ignore[dict-item]
    ViewChange: viewchange.on_view_change,  # type: ignore[dict-item]
    NewView: viewchange.on_new_view,  # type: ignore[dict-item]
    Fetch: catchup.on_fetch,  # type: ignore[dict-item]
    CatchUp: catchup.on_catch_up,  # type: ignore[dict-item]
}
