"""One sequence number's slot in the PBFT log: its pre-prepare, the votes for it, and what it proves.

A replica keeps at most one prepare and one commit per member per view in a slot, so a slot's memory
is bounded by the member count (votes from views older than the replica's are pruned).
"""

from __future__ import annotations

from moeswarm.consensus.config import Validation
from moeswarm.consensus.messages import Commit, CommittedEntry, Prepare, PreparedProof, PrePrepare


class Slot:
    __slots__ = (
        "certified",
        "commits",
        "committed",
        "locked",
        "pre_prepare",
        "prepared",
        "prepares",
        "sent_commit",
        "sent_prepare",
        "seq",
        "validation",
        "voters",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.pre_prepare: PrePrepare | None = None  # accepted in the replica's current view
        self.certified = False  # the new-view carried it with a proof: no validation needed
        self.validation: Validation | None = None
        self.prepares: dict[tuple[int, bytes], dict[str, Prepare]] = {}
        self.commits: dict[tuple[int, bytes], dict[str, Commit]] = {}
        self.voters: set[tuple[bool, int, str]] = set()  # (is_commit, view, replica) already counted
        self.prepared: PreparedProof | None = None  # in the highest view this replica prepared it
        self.sent_prepare = -1  # view of this replica's own prepare
        self.sent_commit = -1  # view of this replica's own commit
        self.locked: dict[int, bytes] = {}  # view -> digest this replica voted for (survives restarts)
        self.committed: CommittedEntry | None = None

    def accepts(self, view: int, digest: bytes) -> bool:
        """False if this replica already voted for another digest in ``view``."""
        locked = self.locked.get(view)
        return locked is None or locked == digest

    def add_prepare(self, p: Prepare) -> bool:
        key = (False, p.view, p.replica)
        if key in self.voters:
            return False
        self.voters.add(key)
        self.prepares.setdefault((p.view, p.digest), {})[p.replica] = p
        return True

    def add_commit(self, c: Commit) -> bool:
        key = (True, c.view, c.replica)
        if key in self.voters:
            return False
        self.voters.add(key)
        self.commits.setdefault((c.view, c.digest), {})[c.replica] = c
        return True

    def prepared_proof(self, quorum: int) -> PreparedProof | None:
        """The pre-prepare plus ``quorum - 1`` matching prepares from backups, if this replica has them."""
        pp = self.pre_prepare
        if pp is None:
            return None
        votes = self.prepares.get((pp.view, pp.digest), {})
        backups = [votes[r] for r in sorted(votes) if r != pp.replica]
        if len(backups) < quorum - 1:
            return None
        return PreparedProof(pre_prepare=pp, prepares=tuple(backups[: quorum - 1]))

    def commit_certificate(self, quorum: int) -> CommittedEntry | None:
        pp = self.pre_prepare
        if pp is None:
            return None
        votes = self.commits.get((pp.view, pp.digest), {})
        if len(votes) < quorum:
            return None
        chosen = tuple(votes[r] for r in sorted(votes)[:quorum])
        return CommittedEntry(epoch=pp.epoch, seq=pp.seq, view=pp.view, proposal=pp.proposal, commits=chosen)

    def forget_views_below(self, view: int) -> None:
        """Drop votes and the pre-prepare of views the replica has left (proofs are kept)."""
        self.prepares = {k: v for k, v in self.prepares.items() if k[0] >= view}
        self.commits = {k: v for k, v in self.commits.items() if k[0] >= view}
        self.voters = {k for k in self.voters if k[1] >= view}
        if self.pre_prepare is not None and self.pre_prepare.view < view:
            self.pre_prepare = None
            self.certified = False
            self.validation = None
