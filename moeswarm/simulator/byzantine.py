"""Byzantine replicas: an honest core whose outgoing messages are rewritten, plus periodic mischief.

Running the honest protocol underneath keeps the attacker plausible (it votes, proposes, answers) so
that its lies land where they can do damage. Behaviours:

- ``equivocate``: as primary, sends two different pre-prepares for one seq to two halves of the
  replicas, and votes for a second digest towards some of them;
- ``invalid``: as primary, proposes values the application rejects (validly signed);
- ``forge``: sends votes and view-changes with bad or missing (zeroed) signatures, some claiming to
  come from honest replicas;
- ``replay``: re-sends messages it received earlier, to anyone;
- ``stale``: re-sends its own old messages, signs checkpoints for old seqs with junk digests, and
  asks for catch-ups it does not need;
- ``silent``: sends nothing at all;
- ``twins`` is not a rewrite: the world runs two honest instances under one identity.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

from moeswarm.consensus import Broadcast, Effect, Kind, Proposal, Send
from moeswarm.consensus.messages import (
    UNSIGNED,
    Checkpoint,
    Commit,
    Fetch,
    Prepare,
    PrePrepare,
    ViewChange,
    sign,
)
from moeswarm.identity import Identity
from moeswarm.simulator.app import make_invalid_value, make_value

SEEN_MAX = 256
Outgoing = list[tuple[str, object]]


class Byzantine:
    def __init__(self, behaviours: tuple[str, ...], identity: Identity, rng: random.Random) -> None:
        self.behaviours = frozenset(behaviours)
        self.identity = identity
        self.me = identity.node_id
        self.rng = rng
        self.seen: deque[object] = deque(maxlen=SEEN_MAX)
        self.sent: deque[object] = deque(maxlen=SEEN_MAX)
        self.alt_digests: dict[tuple[int, int], bytes] = {}  # (view, seq) -> the second digest

    def observe(self, msg: object) -> None:
        if "replay" in self.behaviours:
            self.seen.append(msg)

    def outgoing(self, effects: list[Effect], members: tuple[str, ...]) -> Outgoing:
        """The messages to send in place of the honest core's sends."""
        peers = [m for m in members if m != self.me]
        out: Outgoing = []
        if "silent" in self.behaviours:
            return out
        for effect in effects:
            if isinstance(effect, Send):
                out.append((effect.to, effect.msg))
            elif isinstance(effect, Broadcast):
                out.extend(self._rewrite(effect.msg, peers))
        if "stale" in self.behaviours:
            self.sent.extend(msg for _, msg in out)
        return out

    def _rewrite(self, msg: object, peers: list[str]) -> Outgoing:
        rng = self.rng
        if isinstance(msg, PrePrepare) and msg.replica == self.me and msg.proposal.kind is Kind.VALUE:
            if "invalid" in self.behaviours:
                msg = self._repropose(msg, make_invalid_value(rng.randbytes(8)))
            elif "equivocate" in self.behaviours and len(peers) > 1:
                alt = self._repropose(msg, make_value(b"twin-of-" + rng.randbytes(8)))
                self.alt_digests[(msg.view, msg.seq)] = alt.digest
                half = set(rng.sample(peers, len(peers) // 2))
                return [(p, alt if p in half else msg) for p in peers]
        out: Outgoing = [(p, msg) for p in peers]
        if isinstance(msg, Prepare | Commit) and msg.replica == self.me:
            if "equivocate" in self.behaviours:
                digest = self.alt_digests.get((msg.view, msg.seq), rng.randbytes(32))
                conflicting = sign(self.identity, replace(msg, digest=digest, sig=UNSIGNED))
                for p in rng.sample(peers, len(peers) // 2):
                    out.append((p, conflicting))
            if "forge" in self.behaviours:
                out.extend(self._forgeries(msg, peers))
        return out

    def _repropose(self, pp: PrePrepare, value: bytes) -> PrePrepare:
        proposal = Proposal(kind=Kind.VALUE, value=value)
        return sign(self.identity, replace(pp, proposal=proposal, digest=proposal.digest(), sig=UNSIGNED))

    def _forgeries(self, vote: Prepare | Commit, peers: list[str]) -> Outgoing:
        rng = self.rng
        victim = rng.choice(peers)
        sig = bytes(64) if rng.random() < 0.5 else rng.randbytes(64)
        forged = replace(vote, replica=victim, digest=rng.randbytes(32), sig=sig)
        unsigned_own = replace(vote, sig=bytes(64))
        return [(rng.choice(peers), forged), (rng.choice(peers), unsigned_own)]

    def tick(self, members: tuple[str, ...], epoch: int, view: int, low: int) -> Outgoing:
        """Periodic mischief that needs no trigger."""
        rng = self.rng
        peers = [m for m in members if m != self.me]
        out: Outgoing = []
        if not peers or "silent" in self.behaviours:
            return out
        if "replay" in self.behaviours and self.seen:
            out.extend((rng.choice(peers), rng.choice(self.seen)) for _ in range(3))
        if "stale" in self.behaviours:
            if self.sent:
                out.append((rng.choice(peers), rng.choice(self.sent)))
            junk = Checkpoint(
                epoch=epoch,
                seq=max(low - 1, 0),
                state_digest=rng.randbytes(32),
                replica=self.me,
                sig=UNSIGNED,
            )
            out.append((rng.choice(peers), sign(self.identity, junk)))
            out.append((rng.choice(peers), Fetch(epoch=epoch, view=view, after_seq=0, replica=self.me)))
        if "forge" in self.behaviours:
            fake = ViewChange(
                epoch=epoch,
                new_view=view + 1,
                stable_seq=low + rng.randint(1, 64),
                stable_digest=rng.randbytes(32),
                checkpoint_proof=(),
                prepared=(),
                replica=rng.choice(peers),
                sig=rng.randbytes(64),
            )
            out.append((rng.choice(peers), fake))
        return out
