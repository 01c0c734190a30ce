from __future__ import annotations

from moeswarm.swarm.messages import CommitEntry, RoundCommit
from moeswarm.swarm.round import HeldBlob, RoundTracker, Verdict

MEMBERS = tuple(sorted(c * 64 for c in "abcd"))
H0 = b"\x01" * 32


def _tracker() -> RoundTracker:
    return RoundTracker(round=0, base_hash=H0, epoch=0, members=MEMBERS, deadline_s=10.0)


def _blob(author: str, rnd: int = 0, valid: bool = True) -> HeldBlob:
    return HeldBlob(author=author, round=rnd, blob_id=(author[0] * 31 + str(rnd)).encode(), valid=valid)


def test_ready_when_every_member_delivered() -> None:
    t = _tracker()
    for m in MEMBERS[:3]:
        t.add(_blob(m))
    assert not t.ready(now=1.0)
    t.add(_blob(MEMBERS[3]))
    assert t.ready(now=1.0)
    commit = t.build_commit()
    assert commit.round == 1
    assert [e.node for e in commit.entries] == list(MEMBERS)


def test_deadline_commits_what_arrived() -> None:
    t = _tracker()
    t.add(_blob(MEMBERS[0]))
    assert not t.ready(now=9.9)
    assert t.ready(now=10.0)
    assert [e.node for e in t.build_commit().entries] == [MEMBERS[0]]


def test_invalid_blob_is_never_proposed_and_a_commit_listing_it_is_rejected() -> None:
    t = _tracker()
    bad = _blob(MEMBERS[1], valid=False)
    t.add(_blob(MEMBERS[0]))
    t.add(bad)
    assert [e.node for e in t.build_commit().entries] == [MEMBERS[0]]
    commit = RoundCommit(
        round=1, base_hash=H0, epoch=0,
        entries=(CommitEntry(node=MEMBERS[0], blob_id=_blob(MEMBERS[0]).blob_id, round=0),
                 CommitEntry(node=MEMBERS[1], blob_id=bad.blob_id, round=0)),
    )
    verdict, _, _ = t.judge(commit)
    assert verdict is Verdict.INVALID


def test_missing_blob_is_pending_and_then_valid() -> None:
    t = _tracker()
    blob = _blob(MEMBERS[2])
    commit = RoundCommit(round=1, base_hash=H0, epoch=0,
                         entries=(CommitEntry(node=blob.author, blob_id=blob.blob_id, round=0),))
    verdict, _, missing = t.judge(commit)
    assert verdict is Verdict.PENDING
    assert missing[0].blob_id == blob.blob_id
    t.add(blob)
    assert t.judge(commit)[0] is Verdict.VALID


def test_wrong_base_stale_round_and_future_round() -> None:
    t = _tracker()
    t.add(_blob(MEMBERS[0]))
    entries = (CommitEntry(node=MEMBERS[0], blob_id=_blob(MEMBERS[0]).blob_id, round=0),)
    assert t.judge(RoundCommit(round=1, base_hash=b"\x02" * 32, epoch=0, entries=entries))[0] is Verdict.INVALID
    assert t.judge(RoundCommit(round=2, base_hash=H0, epoch=0, entries=entries))[0] is Verdict.PENDING
    t.advance(1, b"\x03" * 32, 0, MEMBERS, [entries[0].blob_id], now=5.0)
    # the commit just applied, proposed again by a slower primary: a harmless no-op
    assert t.judge(RoundCommit(round=1, base_hash=H0, epoch=0, entries=entries))[0] is Verdict.VALID
    t.advance(2, b"\x04" * 32, 0, MEMBERS, [], now=6.0)
    assert t.judge(RoundCommit(round=1, base_hash=H0, epoch=0, entries=entries))[0] is Verdict.INVALID


def test_late_delta_stays_eligible_within_staleness() -> None:
    t = _tracker()
    late = _blob(MEMBERS[3], rnd=0)
    t.advance(1, b"\x03" * 32, 0, MEMBERS, [], now=0.0)
    t.add(late)
    assert t.eligible()[MEMBERS[3]].round == 0
    t.advance(2, b"\x04" * 32, 0, MEMBERS, [], now=0.0)
    t.advance(3, b"\x05" * 32, 0, MEMBERS, [], now=0.0)
    assert MEMBERS[3] not in t.eligible()
