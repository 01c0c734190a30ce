"""The pure rules of joining: which swarm a newcomer believes in, which member set is proposed, and
which proposed member set a backup accepts."""

from __future__ import annotations

from moeswarm.consensus import Validation
from moeswarm.identity import Identity
from moeswarm.node.membership import change_target, judge_members, vouched_swarm
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


def _judge(proposed: tuple[str, ...], *, me: str = FOUR[0], leaving: bool = False, asked: tuple[str, ...] = (),
           connected: tuple[str, ...] = FOUR[1:]) -> Validation:
    return judge_members(FOUR, proposed, me=me, leaving=leaving, asked_to_leave=asked, connected=connected)[0]


def test_a_backup_accepts_the_changes_a_correct_primary_proposes() -> None:
    assert _judge((*FOUR, NEWCOMER), connected=(*FOUR[1:], NEWCOMER)) is Validation.VALID  # an admitted joiner
    assert _judge(FOUR[:3], asked=(FOUR[3],)) is Validation.VALID  # a member that asked to leave
    assert _judge(FOUR[:3], connected=FOUR[1:3]) is Validation.VALID  # a member that is gone
    assert _judge(FOUR[1:], leaving=True) is Validation.VALID  # our own leave
    assert _judge((*FOUR[:3], NEWCOMER), connected=(*FOUR[1:3], NEWCOMER)) is Validation.VALID  # both at once


def test_a_byzantine_primary_cannot_vote_out_reachable_members_or_add_strangers() -> None:
    assert _judge(FOUR[:3]) is Validation.PENDING  # connected, never asked to leave
    assert _judge(FOUR[1:]) is Validation.PENDING  # us, running, not leaving
    assert _judge((*FOUR, NEWCOMER)) is Validation.PENDING  # a key that never connected to us
    assert _judge((*FOUR, NEWCOMER, OTHER), connected=(*FOUR[1:], NEWCOMER, OTHER)) is Validation.INVALID
    assert _judge(()) is Validation.INVALID
