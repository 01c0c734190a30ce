"""The pure rules of joining: which swarm a newcomer believes in, and which member set is proposed."""

from __future__ import annotations

from moeswarm.identity import Identity
from moeswarm.node.membership import change_target, vouched_swarm
from moeswarm.swarm.messages import CommitEntry, RoundCommit, SwarmHello
from moeswarm.swarm.round import RoundTracker, Verdict

IDS = sorted(Identity.generate().node_id for _ in range(6))
FOUR, NEWCOMER, OTHER = tuple(IDS[:4]), IDS[4], IDS[5]
HASH = bytes(32)


def hello(members: tuple[str, ...], epoch: int = 0, start_seq: int = 0) -> SwarmHello:
    return SwarmHello(epoch=epoch, epoch_start_seq=start_seq, members=members, round=3, state_hash=HASH,
                      executed_seq=start_seq + 3, checkpoint_round=0)


def test_one_member_of_four_is_not_enough_two_are() -> None:
    assert vouched_swarm({FOUR[0]: hello(FOUR)}, NEWCOMER) is None
    swarm = vouched_swarm({FOUR[0]: hello(FOUR), FOUR[1]: hello(FOUR)}, NEWCOMER)
    assert swarm is not None
    assert swarm.members == FOUR
    assert NEWCOMER not in swarm


def test_a_swarm_that_names_us_is_taken_on_one_word() -> None:
    """Genesis members hear each other one at a time; the first to start names the others."""
    swarm = vouched_swarm({FOUR[0]: hello(FOUR)}, FOUR[2])
    assert swarm is not None
    assert swarm.members == FOUR


def test_hellos_from_outside_the_claimed_swarm_do_not_vouch() -> None:
    claims = {NEWCOMER: hello(FOUR), OTHER: hello(FOUR), FOUR[0]: hello(())}
    assert vouched_swarm(claims, IDS[5]) is None


def test_the_newest_vouched_epoch_wins() -> None:
    five = tuple(sorted((*FOUR, NEWCOMER)))
    claims = {
        FOUR[0]: hello(FOUR), FOUR[1]: hello(FOUR),
        FOUR[2]: hello(five, epoch=1, start_seq=9), FOUR[3]: hello(five, epoch=1, start_seq=9),
    }
    swarm = vouched_swarm(claims, OTHER)
    assert swarm is not None
    assert (swarm.epoch, swarm.members, swarm.start_seq) == (1, five, 9)


def test_members_that_are_not_node_ids_are_ignored() -> None:
    fake = tuple(sorted(("z" * 64, "y" * 64)))
    assert vouched_swarm({fake[0]: hello(fake), fake[1]: hello(fake)}, NEWCOMER) is None


def test_change_target_adds_the_joiner_and_removes_leavers() -> None:
    assert change_target(FOUR, NEWCOMER, ()) == tuple(sorted((*FOUR, NEWCOMER)))
    assert change_target(FOUR, None, [FOUR[1]]) == tuple(m for m in FOUR if m != FOUR[1])
    assert change_target(FOUR, NEWCOMER, [FOUR[0]]) == tuple(sorted((*FOUR[1:], NEWCOMER)))
    assert change_target(FOUR, None, ()) == FOUR


def test_change_target_never_empties_the_swarm() -> None:
    assert change_target(FOUR[:1], None, FOUR[:1]) == FOUR[:1]


def test_a_commit_for_an_epoch_not_yet_applied_is_pending_not_invalid() -> None:
    """A backup that decided a reconfiguration but has not applied it yet must not refuse the
    primary's next commit (that would cost a view change)."""
    tracker = RoundTracker(round=3, base_hash=HASH, epoch=0, members=FOUR, deadline_s=10.0)
    commit = RoundCommit(round=4, base_hash=bytes([1]) * 32, epoch=1,
                         entries=(CommitEntry(node=FOUR[0], blob_id=HASH, round=3),))
    verdict, _, _ = tracker.judge(commit)
    assert verdict is Verdict.PENDING
    stale = RoundCommit(round=4, base_hash=bytes([1]) * 32, epoch=0, entries=commit.entries)
    assert tracker.judge(stale)[0] is Verdict.INVALID
