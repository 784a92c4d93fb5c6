"""Named scenarios from the Raft paper (Ongaro & Ousterhout, USENIX ATC 2014) and
Ongaro's thesis, driven through a tiny in-memory router."""

from __future__ import annotations

import pytest
from raft_router import Router

from kvorum.consensus.raft import AppendEntries, AppendResponse, RequestVote
from kvorum.consensus.replicated_log import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    ProposalDropped,
    RestoreState,
    Role,
)


def log_of(terms: list[int]) -> tuple[Entry, ...]:
    return tuple(Entry(t, i + 1, EntryKind.NORMAL, f"{i + 1}@{t}".encode()) for i, t in enumerate(terms))


def elect(r: Router, nid: str) -> None:
    r.nodes[nid].campaign()
    r.pump()
    assert r.leaders() == [nid]


def test_election_at_startup_by_timeout() -> None:
    """§5.2: with randomized timeouts, ticking alone elects exactly one leader."""
    r = Router(["1", "2", "3"])
    for _ in range(40):
        r.tick_all()
        if r.leaders():
            break
    assert len(r.leaders()) == 1
    leader = r.leaders()[0]
    for nid, node in r.nodes.items():
        st = node.status()
        assert st.leader == leader and st.term == r.nodes[leader].status().term
    # The new leader's NOOP is committed everywhere (§8).
    assert all(r.nodes[n].status().commit == 1 for n in r.nodes)


def test_election_safety_split_vote_retries() -> None:
    """§5.2: two simultaneous candidates may split the vote; a later term elects one."""
    r = Router(["1", "2", "3", "4"], pre_vote=False, check_quorum=False)
    r.nodes["1"].campaign()
    r.nodes["2"].campaign()
    r.pump()
    for _ in range(60):
        if r.leaders():
            break
        r.tick_all()
    leaders = r.leaders()
    assert len(leaders) == 1
    assert r.nodes[leaders[0]].status().term >= 1


def test_write_committed_by_majority() -> None:
    """§5.3: an entry is committed once the leader has replicated it on a majority."""
    r = Router(["1", "2", "3"])
    elect(r, "1")
    r.crash("3")
    index, term = r.nodes["1"].propose(b"x")
    r.pump()
    assert r.nodes["1"].status().commit == index
    assert [e.data for e in r.applied["2"] if e.kind is EntryKind.NORMAL] == [b"x"]
    # Without a majority the entry is stored but never committed.
    r.crash("2")
    index2, _ = r.nodes["1"].propose(b"y")
    r.pump()
    assert r.nodes["1"].status().commit == index
    assert r.nodes["1"].status().last_index == index2


def test_behind_follower_never_elected() -> None:
    """§5.4.1: a voter denies its vote to a candidate whose log is less up-to-date,
    so after the leader dies, a follower that missed committed entries never wins."""
    ids = ["1", "2", "3", "4", "5"]
    r = Router(ids)
    elect(r, "1")
    r.isolate("5")
    for k in range(5):
        r.nodes["1"].propose(f"v{k}".encode())
    r.pump()
    committed = r.nodes["1"].status().commit
    assert committed == 6
    r.crash("1")
    r.heal()
    # 5 keeps trying; every attempt fails.
    for _ in range(3):
        r.nodes["5"].campaign()
        r.pump()
        assert r.nodes["5"].status().role is not Role.LEADER
    for _ in range(80):
        r.tick_all()
        if r.leaders():
            break
    (leader,) = r.leaders()
    assert leader != "5"
    # Leader completeness (§5.4): the new leader holds every committed entry.
    assert r.terms_at(leader)[:committed] == r.terms_at("2")[:committed]
    assert r.nodes[leader].status().last_index >= committed


def test_follower_catches_up_through_consistency_check() -> None:
    """§5.3: AppendEntries carries (prevLogIndex, prevLogTerm); a follower that missed
    entries rejects until the leader finds the point where their logs agree."""
    r = Router(["1", "2", "3"], max_entries_per_msg=2)
    elect(r, "1")
    r.isolate("3")
    for k in range(7):
        r.nodes["1"].propose(f"v{k}".encode())
    r.pump()
    assert r.nodes["3"].status().last_index == 1
    r.heal()
    rejects: list[AppendResponse] = []
    r.tick_all(2)
    r.pump(drop=lambda m: bool(isinstance(m, AppendResponse) and m.reject and rejects.append(m)))
    r.tick_all(3)
    assert r.terms_at("3") == r.terms_at("1")
    assert r.nodes["3"].status().commit == r.nodes["1"].status().commit == 8


def test_figure7_leader_repairs_every_follower_log() -> None:
    """Paper Figure 7: the term-8 leader's log and followers (a)-(f), which miss
    entries, hold extra uncommitted entries, or both. Replication makes every
    log identical to the leader's, truncating conflicting suffixes (§5.3)."""
    leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    followers = {
        "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
        "b": [1, 1, 1, 4],
        "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        "e": [1, 1, 1, 4, 4, 4, 4],
        "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    }
    ids = ["L", *followers]
    r = Router([], pre_vote=False, check_quorum=False)
    r.membership = Membership(frozenset(ids))
    r.add("L", RestoreState(HardState(7, None, 3), None, log_of(leader_terms)))
    for nid, terms in followers.items():
        r.add(nid, RestoreState(HardState(7, None, 3), None, log_of(terms)))
    # L wins term 8 with the votes of a, b, e, f (c and d hold newer logs).
    r.nodes["L"].campaign()
    r.pump()
    assert r.leaders() == ["L"]
    assert r.nodes["L"].status().term == 8
    expected = leader_terms + [8]
    for nid in followers:
        assert r.terms_at(nid) == expected, nid
        assert r.nodes[nid].status().commit == len(expected)


@pytest.mark.parametrize("bug", [False, True])
def test_figure8_old_term_entry_not_committed_by_counting(bug: bool) -> None:
    """Paper Figure 8 / §5.4.2: a leader must not commit an entry from an earlier
    term just because a majority stores it. S1 (term 4) copies its term-2 entry to
    S2, making a majority; S3, holding a term-3 entry at that index, can still be
    elected and overwrite it. With the "commit-old-term" bug, S1 commits it and
    the committed entry is then lost."""
    bugs = frozenset({"commit-old-term"}) if bug else frozenset()
    r = Router([], pre_vote=False, check_quorum=False, max_entries_per_msg=1, bugs=bugs)
    r.membership = Membership(frozenset({"1", "2", "3"}))
    r.add("1", RestoreState(HardState(3, None, 1), None, log_of([1, 2])))
    r.add("2", RestoreState(HardState(3, None, 1), None, log_of([1])))
    r.add("3", RestoreState(HardState(3, None, 1), None, log_of([1, 3])))
    r.cut |= {("1", "3"), ("3", "1")}
    r.nodes["1"].campaign()
    # S2 first rejects S1's probe, then takes the term-2 entry alone (one entry
    # per message); everything after it, S1's own NOOP included, is lost.
    r.pump(drop=lambda m: isinstance(m, AppendEntries) and m.index >= 2 and len(r.terms_at("2")) >= 2)
    s1 = r.nodes["1"].status()
    assert s1.role is Role.LEADER and s1.term == 4
    assert r.terms_at("2") == [1, 2]
    assert s1.commit == (2 if bug else 1)
    # S1 crashes before its NOOP spreads. S3 loses term 4 (S2 voted for S1 in
    # it) and wins term 5 with S2's vote: its last term 3 beats S2's last term 2.
    r.crash("1")
    r.heal()
    r.nodes["3"].campaign()
    r.pump()
    r.nodes["3"].campaign()
    r.pump()
    assert r.leaders() == ["3"] and r.nodes["3"].status().term == 5
    assert r.terms_at("2")[:2] == [1, 3]
    if bug:
        # The entry S1 reported committed at index 2 (term 2) is gone.
        assert r.disks["1"].hard_state.commit == 2 and r.terms_at("1")[1] == 2
    else:
        assert r.disks["1"].hard_state.commit == 1


def test_joint_consensus_replaces_all_voters_including_leader() -> None:
    """§6 / thesis 4.3: C_old,new then C_new; the leader, not in C_new, manages the
    change and steps down once C_new is committed (thesis 4.2.2)."""
    r = Router(["1", "2", "3"])
    elect(r, "1")
    for nid in ["4", "5", "6"]:
        r.add(nid)
    r.nodes["1"].change_membership(Membership(frozenset({"4", "5", "6"})))
    st = r.nodes["1"].status()
    # The new membership is in force as soon as it is appended.
    assert st.membership.joint and st.membership.voters_outgoing == frozenset({"1", "2", "3"})
    r.pump()
    for _ in range(40):
        if r.leaders():
            break
        r.tick_all()
    (leader,) = r.leaders()
    assert leader in {"4", "5", "6"}
    final = r.nodes[leader].status().membership
    assert final == Membership(frozenset({"4", "5", "6"}))
    assert r.nodes["1"].status().role is not Role.LEADER
    index, _ = r.nodes[leader].propose(b"after")
    r.pump()
    assert r.nodes[leader].status().commit >= index


def test_joint_config_needs_both_majorities() -> None:
    """§6: during C_old,new, commitment needs separate majorities of both configs."""
    r = Router(["1", "2", "3"])
    elect(r, "1")
    for nid in ["4", "5", "6"]:
        r.add(nid)
    for nid in ["4", "5", "6"]:
        r.crash(nid)
    index, _ = r.nodes["1"].change_membership(Membership(frozenset({"1", "4", "5", "6"})))
    r.pump()
    assert r.nodes["1"].status().commit < index  # old majority alone is not enough
    with pytest.raises(ProposalDropped):
        r.nodes["1"].change_membership(Membership(frozenset({"1", "2"})))
    for nid in ["4", "5"]:
        r.restart(nid)
    r.tick_all(3)
    st = r.nodes["1"].status()
    assert st.commit >= index + 1
    assert st.membership == Membership(frozenset({"1", "4", "5", "6"}))


def test_lease_read_survives_follower_restart() -> None:
    """Thesis 6.4.1: a lease holds only while the followers that confirmed it refuse
    to vote for an election timeout. A follower that restarts has forgotten hearing
    from the leader, so it keeps that promise blindly for its first election timeout."""
    r = Router(["1", "2", "3"], lease_reads=True)
    elect(r, "1")
    r.tick_all(2)
    assert r.nodes["1"].status().lease_valid
    r.isolate("1")
    r.crash("2")
    r.restart("2")
    r.nodes["3"].campaign()
    r.pump()
    assert r.leaders() == ["1"] and r.nodes["1"].status().lease_valid
    for _ in range(10):  # one election timeout on everyone's clock
        for nid in ("1", "2"):
            r.nodes[nid].tick()
        r.pump()
    # Only now, with 1's lease over, may the others elect a leader of a new term.
    assert not r.nodes["1"].status().lease_valid
    r.nodes["3"].campaign()
    r.pump()
    assert set(r.leaders()) - {"1"}


def test_transfer_forfeits_the_lease() -> None:
    """Thesis 3.10 and 6.4.1: voters join an election started by TimeoutNow even
    while they believe in a live leader, so once a leader has sent TimeoutNow (which
    may arrive late, after the transfer was abandoned) it serves no lease reads in
    that term; reads fall back to ReadIndex rounds."""
    r = Router(["1", "2", "3"], lease_reads=True)
    elect(r, "1")
    r.tick_all(2)
    r.isolate("2")
    r.nodes["1"].transfer_leadership("2")
    r.pump()
    assert not r.nodes["1"].status().lease_valid
    r.heal()
    r.tick_all(12)  # the transfer is abandoned after an election timeout
    st = r.nodes["1"].status()
    assert st.role is Role.LEADER and not st.lease_valid
    r.nodes["1"].read_barrier(b"r")
    r.pump()
    assert r.nodes["1"].status().role is Role.LEADER


@pytest.mark.parametrize("pre_vote,check_quorum", [(True, True), (False, True), (True, False)])
def test_removed_server_that_missed_its_removal_does_not_disrupt(pre_vote: bool, check_quorum: bool) -> None:
    """Thesis 4.2.3: a server removed while cut off never receives the entry that
    removes it, so it keeps its old membership, still believes it is a voter, and
    times out again and again. The leader no longer sends it anything. PreVote
    (thesis 9.6) keeps its term from rising, and CheckQuorum makes the remaining
    members ignore its vote requests while they hear from their leader (PreVote
    alone does the same for pre-votes), so their terms never rise and the leader
    stays in place."""
    r = Router(["1", "2", "3", "4"], pre_vote=pre_vote, check_quorum=check_quorum)
    elect(r, "1")
    r.isolate("4")
    index, _ = r.nodes["1"].change_membership(Membership(frozenset({"1", "2", "3"})))
    r.pump()
    assert r.nodes["1"].status().commit >= index
    assert r.nodes["4"].status().membership == Membership(frozenset({"1", "2", "3", "4"}))
    r.heal()
    term = r.nodes["1"].status().term
    vote_requests: list[RequestVote] = []

    def count(m: object) -> bool:
        if isinstance(m, RequestVote) and m.frm == "4":
            vote_requests.append(m)
        return False

    for _ in range(20 * 10):  # twenty election timeouts
        for node in r.nodes.values():
            node.tick()
        r.pump(drop=count)
        for nid in ("1", "2", "3"):
            st = r.nodes[nid].status()
            assert st.term == term, (nid, st.term)
            assert st.leader == "1"
    # 4 kept timing out and asking its three old peers for (pre-)votes.
    assert len(vote_requests) >= 3 * 10
    assert all(m.pre == pre_vote for m in vote_requests)
    st4 = r.nodes["4"].status()
    assert st4.role is not Role.LEADER
    assert (st4.term == term) if pre_vote else (st4.term > term + 5)
    r.nodes["1"].propose(b"still leading")
    r.pump()
    assert r.nodes["2"].status().commit == r.nodes["1"].status().last_index


def test_single_server_change_before_a_commit_in_the_new_term_loses_committed_entries() -> None:
    """Thesis 4.1, with the correction Ongaro published in 2015 (raft-dev, "bug in
    single-server membership changes"; thesis errata): a leader may append a
    membership entry only after it has committed an entry of its own term.

    Leader 1 (term 1) of {1,2,3,4} starts adding 5; only 5 stores C1 = {1..5}.
    3 wins term 2 knowing everything before its NOOP is committed. Were it to
    remove 2 at once, C2 = {1,3,4} could commit on {3,4} while 2 never saw term
    2; then 1 could win term 3 under C1 with 1, 2 and 5, none of which holds the
    committed C2: two disjoint majorities. Refusing the change until 3's NOOP
    commits puts term 2 on a majority of {1,2,3,4}, which keeps 1 from winning."""
    r = Router(["1", "2", "3", "4"], pre_vote=False, check_quorum=False)
    elect(r, "1")
    r.add("5")
    r.cut |= {("1", "2"), ("1", "3"), ("1", "4")}
    r.nodes["1"].change_membership(Membership(frozenset({"1", "2", "3", "4", "5"})))
    r.pump()
    assert r.terms_at("5") == [1, 1] and r.terms_at("2") == [1]
    r.crash("1")
    r.heal()
    r.nodes["3"].campaign()
    r.pump(drop=lambda m: isinstance(m, AppendEntries))
    st = r.nodes["3"].status()
    assert r.leaders() == ["3"] and st.term == 2 and st.commit == 1 == st.last_index - 1
    with pytest.raises(ProposalDropped):
        r.nodes["3"].change_membership(Membership(frozenset({"1", "3", "4"})))
    r.nodes["3"].tick()
    r.pump()
    assert r.nodes["3"].status().commit == 2 and r.terms_at("2") == [1, 2]
    # Now the removal may go ahead; it commits on 3 and 4 alone.
    r.cut |= {("3", "2")}
    index, _ = r.nodes["3"].change_membership(Membership(frozenset({"1", "3", "4"})))
    r.pump()
    assert r.nodes["3"].status().commit == index
    r.crash("3")
    r.crash("4")
    r.heal()
    r.restart("1")
    for _ in range(3):
        r.nodes["1"].campaign()
        r.pump()
        # 2 holds a term-2 entry and refuses 1, whose log ends in term 1.
        assert r.leaders() == []


def test_prevote_granted_while_hearing_from_a_leader_deposes_it() -> None:
    """Thesis 9.6: a voter grants a pre-vote only if its log is not newer *and* it
    has not heard from a leader within the election timeout; the second condition
    is part of PreVote itself, not of CheckQuorum. 3 stops receiving from leader 1
    (a one-way cut) while its log is up to date: its pre-votes must fail, or its
    real election deposes a leader the rest of the group still hears from."""
    r = Router(["1", "2", "3"], pre_vote=True, check_quorum=False)
    elect(r, "1")
    r.cut |= {("1", "3")}
    for _ in range(10 * 10):
        r.tick_all()
        assert r.leaders() == ["1"]
        assert r.nodes["1"].status().term == r.nodes["2"].status().term == 1
    assert r.nodes["3"].status().role is Role.PRECANDIDATE
    r.heal()
    r.tick_all(2)
    assert r.nodes["3"].status().leader == "1"


def test_lease_without_a_tick_of_margin_serves_a_stale_read() -> None:
    """Thesis 6.4.1: a lease is safe only if it ends before any follower that
    confirmed it may vote again. Ticks are counted on each node's own clock: a
    follower that hears round r just before its own tick is released one tick
    earlier, by the leader's count, than the leader's lease would end without
    a margin. Here 2 and 3 tick just before 1 does, each time; without the
    one-tick margin 1 still trusted its lease after 2 had been elected and had
    committed a write, and answered a read that missed it."""
    with pytest.raises(ValueError):
        Router(["1", "2", "3"], lease_reads=True, lease_drift_ticks=0)
    r = Router(["1", "2", "3"], lease_reads=True, lease_drift_ticks=1)
    elect(r, "1")

    def tick_followers_then_leader() -> None:
        for nid in ("2", "3", "1"):
            r.nodes[nid].tick()
        r.pump()

    for _ in range(3):
        tick_followers_then_leader()
    assert r.nodes["1"].status().lease_valid
    r.isolate("1")
    for _ in range(10 - 1):
        tick_followers_then_leader()
    # One more tick on 2 and 3: an election timeout since they heard round r.
    for nid in ("2", "3"):
        r.nodes[nid].tick()
    r.nodes["2"].campaign()
    r.pump()
    index, _ = r.nodes["2"].propose(b"x")
    r.pump()
    assert r.nodes["2"].status().commit == index
    st = r.nodes["1"].status()
    assert st.role is Role.LEADER and st.commit < index
    assert not st.lease_valid
    r.nodes["1"].read_barrier(b"r")
    assert r.nodes["1"].ready().read_states == ()


def test_committing_an_earlier_terms_tail_lets_the_uncommitted_limit_be_exceeded() -> None:
    """The uncommitted-bytes limit (after etcd's MaxUncommittedEntriesSize) bounds
    what this leader has accepted and not yet committed. Entries of earlier terms
    were never counted, so committing them must not be subtracted either: here 2
    inherits 8 uncommitted bytes from leader 1, accepts 4 bytes of its own, and
    then commits its NOOP (with 1's entry, §5.4.2) but not its own entry. Its
    uncommitted tail still holds 4 bytes, so 8 more would pass the limit of 10."""
    r = Router(
        ["1", "2", "3"], pre_vote=False, check_quorum=False, max_uncommitted_bytes=10, max_entries_per_msg=1
    )
    elect(r, "1")
    r.cut |= {("2", "1"), ("1", "3")}
    r.nodes["1"].propose(b"old-old-")
    r.pump()
    assert r.terms_at("2") == [1, 1] and r.nodes["2"].status().commit == 1
    r.crash("1")
    r.heal()
    r.nodes["2"].campaign()
    r.pump(drop=lambda m: isinstance(m, AppendEntries))
    assert r.leaders() == ["2"]
    index, _ = r.nodes["2"].propose(b"new1")
    r.nodes["2"].tick()
    r.pump(drop=lambda m: isinstance(m, AppendEntries) and any(e.data == b"new1" for e in m.entries))
    st = r.nodes["2"].status()
    assert st.commit == index - 1 and st.last_index == index
    with pytest.raises(ProposalDropped):
        r.nodes["2"].propose(b"12345678")
    r.nodes["2"].propose(b"123456")
