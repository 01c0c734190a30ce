"""Which deltas a round may commit: the pure bookkeeping behind proposing and validating commits.

The tracker knows the committed round `r`, its hash `H_r`, the epoch and the members, and the delta
blobs this node holds (each already decoded and checked by the engine, so each is valid or invalid).
From that it answers the two questions PBFT asks of the round protocol:

- the primary: is it time to propose, and what (`ready`, `build_commit`)? Time to propose is when
  every member's delta for round r is in, or the round deadline has passed and at least one is;
- every replica: is a proposed `RoundCommit` acceptable (`judge`)? VALID only if it extends our own
  `H_r` and we hold and validated every listed blob; PENDING while a listed blob is still being
  fetched (or we are behind); INVALID for anything a correct primary would never propose.

Late deltas (trained from round r − s, 1 ≤ s ≤ `staleness_rounds_max`) stay eligible and enter with
weight 1/(1+s) when the blob from round r is missing. Time comes in as `now`; no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from moeswarm.swarm.messages import CommitEntry, RoundCommit


class Verdict(Enum):
    VALID = "valid"
    INVALID = "invalid"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class HeldBlob:
    author: str
    round: int
    blob_id: bytes
    valid: bool
    reason: str = ""


@dataclass(slots=True)
class RoundTracker:
    round: int
    base_hash: bytes
    epoch: int
    members: tuple[str, ...]
    deadline_s: float
    staleness_rounds_max: int = 2
    round_started: float = 0.0
    blobs: dict[bytes, HeldBlob] = field(default_factory=dict)
    committed_blobs: set[bytes] = field(default_factory=set)
    committed_blobs_max: int = 100_000

    def advance(self, new_round: int, new_hash: bytes, epoch: int, members: Iterable[str],
                committed: Iterable[bytes], now: float) -> None:
        """A commit was applied: move to the next round and forget blobs too old to matter."""
        self.round = new_round
        self.base_hash = new_hash
        self.epoch = epoch
        self.members = tuple(sorted(members))
        self.round_started = now
        self.committed_blobs.update(committed)
        if len(self.committed_blobs) > self.committed_blobs_max:
            self.committed_blobs = set(list(self.committed_blobs)[-self.committed_blobs_max // 2:])
        oldest = self.round - self.staleness_rounds_max
        self.blobs = {
            k: b for k, b in self.blobs.items() if b.round >= oldest and k not in self.committed_blobs
        }

    def add(self, blob: HeldBlob) -> None:
        if blob.round + self.staleness_rounds_max < self.round or blob.blob_id in self.committed_blobs:
            return
        self.blobs[blob.blob_id] = blob

    def holds(self, blob_id: bytes) -> bool:
        return blob_id in self.blobs or blob_id in self.committed_blobs

    def eligible(self) -> dict[str, HeldBlob]:
        """Per member, the freshest valid, uncommitted blob (current round preferred over late)."""
        best: dict[str, HeldBlob] = {}
        for b in self.blobs.values():
            if not b.valid or b.author not in self.members or b.round > self.round:
                continue
            if b.blob_id in self.committed_blobs:
                continue
            current = best.get(b.author)
            if current is None or (b.round, b.blob_id) > (current.round, current.blob_id):
                best[b.author] = b
        return best

    def ready(self, now: float) -> bool:
        eligible = self.eligible()
        fresh = [b for b in eligible.values() if b.round == self.round]
        if len(fresh) == len(self.members):
            return True
        return bool(eligible) and now >= self.round_started + self.deadline_s

    def deadline(self) -> float:
        return self.round_started + self.deadline_s

    def build_commit(self) -> RoundCommit:
        entries = tuple(
            CommitEntry(node=b.author, blob_id=b.blob_id, round=b.round)
            for _, b in sorted(self.eligible().items())
        )
        return RoundCommit(round=self.round + 1, base_hash=self.base_hash, epoch=self.epoch, entries=entries)

    def judge(self, commit: RoundCommit) -> tuple[Verdict, str, list[CommitEntry]]:
        """Verdict on a proposed commit, a reason for logs, and the listed blobs we still lack."""
        if commit.round > self.round + 1:
            return Verdict.PENDING, f"commit for round {commit.round}, we are at {self.round}", []
        if commit.round == self.round and self.round > 0:
            # The commit we just applied, proposed again by a primary that had not applied it yet when
            # it pre-prepared: executing it is a deterministic no-op, and refusing it would only cost a
            # view change.
            return Verdict.VALID, "duplicate of the last commit: a no-op", []
        if commit.round < self.round:
            return Verdict.INVALID, f"commit for round {commit.round} is stale (we are at {self.round})", []
        if commit.epoch > self.epoch:
            # The primary applied a reconfiguration that we have decided but not applied yet.
            return Verdict.PENDING, f"commit for epoch {commit.epoch}, we are still in {self.epoch}", []
        if commit.base_hash != self.base_hash:
            return Verdict.INVALID, "commit extends a state hash that is not ours", []
        if commit.epoch != self.epoch:
            return Verdict.INVALID, f"commit for epoch {commit.epoch}, ours is {self.epoch}", []
        if not commit.entries:
            return Verdict.INVALID, "commit lists no delta", []
        missing: list[CommitEntry] = []
        for entry in commit.entries:
            if entry.node not in self.members:
                return Verdict.INVALID, f"{entry.node[:8]} is not a member", []
            if entry.round > self.round or entry.round + self.staleness_rounds_max < self.round:
                return Verdict.INVALID, f"{entry.node[:8]}'s delta is from round {entry.round}", []
            if entry.blob_id in self.committed_blobs:
                return Verdict.INVALID, "commit repeats an already committed delta", []
            held = self.blobs.get(entry.blob_id)
            if held is None:
                missing.append(entry)
                continue
            if held.author != entry.node or held.round != entry.round:
                return Verdict.INVALID, "commit entry does not match the blob's header", []
            if not held.valid:
                return Verdict.INVALID, f"{entry.node[:8]}'s delta is invalid: {held.reason}", []
        if missing:
            return Verdict.PENDING, f"waiting for {len(missing)} delta(s)", missing
        return Verdict.VALID, "ok", []
