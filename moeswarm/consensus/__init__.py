"""PBFT (Castro & Liskov, OSDI '99 / TOCS 2002) as a pure state machine, with Ed25519-signed votes.

No I/O, no clock, no randomness: a driver (``node/`` over the network, ``simulator/`` in virtual
time) feeds it messages and time and performs the effects it returns.

How a driver uses a :class:`Replica`::

    replica = Replica(identity, members, Config(), validate, restored=records, applied_seq=app_seq)
    effects = replica.start(now)                       # once, first
    effects = replica.propose(value, now)              # every node may call it, see below
    effects = replica.on_message(msg, sender, now)     # msg: a decoded consensus message
    effects = replica.on_tick(now)                     # at (or after) replica.next_deadline()
    effects = replica.recheck(now)                     # a PENDING proposal may now validate
    effects = replica.executed(seq, state_digest, now) # the application applied `seq`
    effects = replica.install_state(seq, digest, now)  # the application installed a fetched state

Effects, performed **in list order**:

- ``Persist(record)``: make the record (a wire message) durable *before* performing any later effect
  of the same list. Votes are persisted before they are sent, so a restarted replica -- rebuilt with
  ``restored=`` every record persisted so far, or ``replica.durable_records()`` saved after a stable
  checkpoint -- never contradicts what it said before it crashed.
- ``Send(to, msg)`` / ``Broadcast(msg)`` (to the other members of the current epoch).
- ``Deliver(seq, epoch, view, proposal)``: decided, in sequence order, exactly once per run. The
  proposal is a ``Kind.VALUE`` (apply ``proposal.value``), a ``Kind.NULL`` (a gap a view change
  filled: nothing to apply) or a ``Kind.RECONFIGURE`` (from ``seq + 1`` on, ``proposal.members`` are
  the replicas of epoch ``proposal.epoch``; n, f and the quorum change with them). After applying
  it, the application calls ``executed(seq, state_digest, now)`` -- ``state_digest`` being its own
  state hash (in the swarm: the model state hash after the commit). Every K-th seq, and the first
  seq of an epoch, the replica signs it in a checkpoint; a quorum of matching ones makes it stable
  and truncates the log.
- ``FetchState(seq, epoch, state_digest, peers)``: this replica is behind a stable checkpoint whose
  decisions are no longer in anyone's log -- or it has no state at all (it just joined) and a stable
  checkpoint may need its own signature, in which case a digest that f + 1 replicas signed (so one
  honest replica at least) is enough. Fetch the application state with that digest from any of
  ``peers`` and call ``install_state(seq, state_digest, now)``; a later ``FetchState`` replaces an
  earlier one. Decisions after it are then fetched with their commit certificates and delivered.
- A replica that falls behind (a quorum of commits, or f + 1 peers, show it later decisions, views or
  epochs) asks peers with ``Fetch`` and verifies every part of the ``CatchUp`` answer itself: the
  chain of reconfigurations since its epoch, a stable checkpoint, commit certificates, a new-view.
- ``ViewChanged(epoch, view, primary, active)``: informational.

``propose(value, now)`` means "decide this next": on the primary of an active view it pre-prepares
the value; on a backup it is remembered (a later call replaces it) and the backup starts suspecting
the primary if nothing is decided within the view timeout; a backup that becomes primary proposes
it. Any decided value satisfies every pending wish -- the application proposes again for the next
sequence number (the swarm proposes the next round's commit). ``propose_reconfigure(members, now)``
works the same way for a ``Reconfigure`` to epoch + 1; the primary proposes nothing after an
undecided reconfiguration.

Validation: ``validate(seq, value) -> Validation``. ``VALID`` -> the backup prepares; ``INVALID`` ->
it starts a view change at once; ``PENDING`` ("I do not hold every listed delta yet") -> it keeps the
pre-prepare and runs validation again on ``recheck(now)``; a primary whose proposal stays pending
past the view timeout is replaced like a stalled one. Proposals that a new-view carries with a
prepared proof are not validated again: a quorum already did, and they may have committed.

Quorums: ``f = (n - 1) // 3`` and a quorum is ``ceil((n + f + 1) / 2)`` -- ``2f + 1`` when
``n = 3f + 1`` -- so that any two quorums share an honest replica for every n. Votes carry their own
signatures (``messages.py``) so certificates can be forwarded and checked by anyone.
"""

from moeswarm.consensus.config import Config, Membership, Validation
from moeswarm.consensus.effects import Broadcast, Deliver, Effect, FetchState, Persist, Send, ViewChanged
from moeswarm.consensus.messages import Kind, Proposal
from moeswarm.consensus.replica import Replica

__all__ = [
    "Broadcast",
    "Config",
    "Deliver",
    "Effect",
    "FetchState",
    "Kind",
    "Membership",
    "Persist",
    "Proposal",
    "Replica",
    "Send",
    "Validation",
    "ViewChanged",
]
