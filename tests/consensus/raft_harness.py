"""A data-driven interaction harness for the Raft engine (after etcd-io/raft's rafttest).

A script is a sequence of blocks:

    # comments (kept as they are)
    command arg key=value
    ----
    exact output the command produced

Blocks are separated by one blank line. `run_script(text)` runs every command
against a small in-memory world (nodes, their durable storage, a message queue
with partitions) and returns the same script with each output replaced by what
the commands print now; the test compares the two and REWRITE=1 writes it back.

Commands
--------
add-nodes N [voters=1,2,3] [learners=4] [pre-vote=false] [check-quorum=false]
          [lease=true] [drift=2] [max-entries=N] [max-bytes=N] [max-inflight=N]
          [max-uncommitted=N] [bugs=a,b] [election=10]
campaign ID                   start an election on ID
tick ID [N]                   N ticks (default 1)
tick-election ID...           election_tick ticks on each ID
tick-heartbeat ID...          heartbeat_tick ticks on each ID
stabilize [ID...]             handle Ready's and deliver messages until quiet
process-ready ID...           handle one Ready on each ID (messages are queued)
deliver-msgs [ID...] [drop=true]   deliver (or drop) queued messages to IDs
partition 1,2 3               drop messages between groups; `heal` removes it
isolate ID                    partition ID from everyone else
crash ID / restart ID         lose volatile state / rebuild from storage
propose ID DATA               propose; prints index/term or the refusal
propose-conf-change ID voters=1,2,4 [learners=5]
read-index ID CTX
transfer-leader FROM TO
compact ID INDEX
status ID... / raft-log ID
log-level none|info           none: Ready's and role changes are not printed
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from kvorum.consensus.raft import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    RaftConfig,
    RaftNode,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from kvorum.consensus.raft.bugs import node_class
from kvorum.consensus.raft.membership import decode_membership
from kvorum.consensus.replicated_log import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    ProposalDropped,
    RestoreState,
    Snapshot,
)


def fmt_ids(ids: Any) -> str:
    return "(" + " ".join(sorted(ids)) + ")"


def fmt_membership(m: Membership) -> str:
    s = "voters=" + fmt_ids(m.voters)
    if m.voters_outgoing:
        s += "&&" + fmt_ids(m.voters_outgoing)
    if m.learners:
        s += " learners=" + fmt_ids(m.learners)
    if m.learners_next:
        s += " learners_next=" + fmt_ids(m.learners_next)
    return s


def fmt_entry(e: Entry) -> str:
    if e.kind is EntryKind.NOOP:
        return f"{e.term}/{e.index} NOOP"
    if e.kind is EntryKind.MEMBERSHIP:
        return f"{e.term}/{e.index} CONF {fmt_membership(decode_membership(e.data))}"
    return f"{e.term}/{e.index} {e.data.decode()!r}"


def fmt_entries(entries: Any) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_snapshot(s: Snapshot) -> str:
    return f"index={s.index} term={s.term} {fmt_membership(s.membership)}"


def fmt_message(m: Any) -> str:
    head = f"{m.frm}->{m.to} "
    kind = type(m)
    if kind is AppendEntries:
        body = f"MsgApp term={m.term} prev={m.log_term}/{m.index} commit={m.commit}"
        if m.entries:
            body += " entries=" + fmt_entries(m.entries)
    elif kind is AppendResponse:
        body = f"MsgAppResp term={m.term} index={m.index}"
        if m.reject:
            body += f" reject hint={m.hint_term}/{m.hint_index}"
    elif kind is Heartbeat:
        body = f"MsgHeartbeat term={m.term} commit={m.commit} round={m.round}"
    elif kind is HeartbeatResponse:
        body = f"MsgHeartbeatResp term={m.term} round={m.round}"
    elif kind is RequestVote:
        name = "MsgPreVote" if m.pre else "MsgVote"
        body = f"{name} term={m.term} last={m.last_term}/{m.last_index}"
        if m.transfer:
            body += " transfer"
    elif kind is VoteResponse:
        name = "MsgPreVoteResp" if m.pre else "MsgVoteResp"
        body = f"{name} term={m.term}" + (" rejected" if m.reject else " granted")
    elif kind is InstallSnapshot:
        body = f"MsgSnap term={m.term} snapshot={fmt_snapshot(m.snapshot)}"
    elif kind is TimeoutNow:
        body = f"MsgTimeoutNow term={m.term}"
    else:
        raise AssertionError(f"unknown message {m!r}")
    return head + body


@dataclass
class Storage:
    """What a node has persisted: survives `crash`."""

    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)


class World:
    def __init__(self) -> None:
        self.nodes: dict[str, RaftNode] = {}
        self.configs: dict[str, RaftConfig] = {}
        self.classes: dict[str, type[RaftNode]] = {}  # RaftNode or a deliberately broken variant
        self.storage: dict[str, Storage] = {}
        self.queue: list[Any] = []
        self.groups: dict[str, int] | None = None
        self.verbose = True
        self.out: list[str] = []

    # ------------------------------------------------------------- helpers

    def ids(self) -> list[str]:
        return sorted(self.nodes, key=int)

    def say(self, line: str) -> None:
        self.out.append(line)

    def soft(self, nid: str) -> tuple[Any, ...]:
        st = self.nodes[nid].status()
        return (st.role.value, st.term, st.leader)

    def blocked(self, m: Any) -> bool:
        if m.to not in self.nodes:
            return True
        if self.groups is None:
            return False
        return self.groups.get(m.frm, -1) != self.groups.get(m.to, -1)

    def handle_ready(self, nid: str) -> bool:
        node = self.nodes[nid]
        if not node.has_ready():
            return False
        rd = node.ready()
        st = self.storage[nid]
        if rd.snapshot is not None:
            st.snapshot = rd.snapshot
            st.entries = []
        if rd.entries:
            first = rd.entries[0].index
            st.entries = [e for e in st.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            st.hard_state = rd.hard_state
        if self.verbose:
            self.say(f"> {nid} handling Ready")
            if rd.soft_state is not None:
                self.say(f"  SoftState leader={rd.soft_state.leader or 0} role={rd.soft_state.role.value}")
            if rd.snapshot is not None:
                self.say(f"  Snapshot {fmt_snapshot(rd.snapshot)}")
            if rd.hard_state is not None:
                hs = rd.hard_state
                self.say(f"  HardState term={hs.term} vote={hs.vote or 0} commit={hs.commit}")
            if rd.entries:
                self.say("  Entries: " + fmt_entries(rd.entries))
            if rd.committed_entries:
                self.say("  Committed: " + fmt_entries(rd.committed_entries))
            for m in rd.messages:
                self.say("  " + fmt_message(m))
            for rs in rd.read_states:
                self.say(f"  ReadState ctx={rs.ctx.decode()} index={rs.index}")
            for ctx in rd.dropped:
                self.say(f"  ReadDropped ctx={ctx.decode()}")
        self.queue.extend(rd.messages)
        node.advance(rd)
        return True

    def deliver(self, to: set[str] | None, drop: bool) -> bool:
        keep: list[Any] = []
        todo: list[Any] = []
        for m in self.queue:
            (todo if to is None or m.to in to else keep).append(m)
        self.queue = keep
        for m in todo:
            if drop or self.blocked(m):
                if self.verbose:
                    self.say(f"  dropped: {fmt_message(m)}")
                continue
            self.nodes[m.to].step(m)
        return bool(todo)

    # ------------------------------------------------------------ commands

    def run(self, cmd: str, args: list[str], kw: dict[str, str]) -> None:
        before = {nid: self.soft(nid) for nid in self.nodes}
        getattr(self, "cmd_" + cmd.replace("-", "_"))(args, kw)
        if self.verbose:
            for nid in self.ids():
                now = self.soft(nid)
                if nid in before and before[nid] != now:
                    role, term, lead = now
                    self.say(f"{nid}: {role} term={term} leader={lead or 0}")

    def cmd_add_nodes(self, args: list[str], kw: dict[str, str]) -> None:
        n = int(args[0])
        start = len(self.nodes) + 1
        new = [str(i) for i in range(start, start + n)]
        if "voters" in kw:
            membership = Membership(
                frozenset(kw["voters"].split(",")),
                frozenset(kw["learners"].split(",")) if "learners" in kw else frozenset(),
            )
        elif self.nodes:
            membership = self.nodes[self.ids()[0]].status().membership
        else:
            membership = Membership(frozenset(new))
        for nid in new:
            cfg = RaftConfig(
                id=nid,
                membership=membership,
                rng=random.Random(int(nid)),
                election_tick=int(kw.get("election", 10)),
                pre_vote=kw.get("pre-vote", "true") == "true",
                check_quorum=kw.get("check-quorum", "true") == "true",
                lease_reads=kw.get("lease", "false") == "true",
                lease_drift_ticks=int(kw.get("drift", 2)),
                max_entries_per_msg=int(kw.get("max-entries", 256)),
                max_bytes_per_msg=int(kw.get("max-bytes", 1 << 20)),
                max_inflight_msgs=int(kw.get("max-inflight", 256)),
                max_uncommitted_bytes=int(kw.get("max-uncommitted", 1 << 30)),
            )
            self.configs[nid] = cfg
            self.classes[nid] = node_class(kw["bugs"].split(",") if "bugs" in kw else ())
            self.storage[nid] = Storage()
            self.nodes[nid] = self.classes[nid](cfg)
        self.say(f"added {fmt_ids(new)} with {fmt_membership(membership)}")

    def cmd_campaign(self, args: list[str], kw: dict[str, str]) -> None:
        self.nodes[args[0]].campaign()

    def cmd_tick(self, args: list[str], kw: dict[str, str]) -> None:
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            self.nodes[args[0]].tick()

    def cmd_tick_election(self, args: list[str], kw: dict[str, str]) -> None:
        for nid in args:
            for _ in range(self.configs[nid].election_tick):
                self.nodes[nid].tick()

    def cmd_tick_heartbeat(self, args: list[str], kw: dict[str, str]) -> None:
        for nid in args:
            for _ in range(self.configs[nid].heartbeat_tick):
                self.nodes[nid].tick()

    def cmd_stabilize(self, args: list[str], kw: dict[str, str]) -> None:
        ids = set(args) if args else None
        for _ in range(1000):
            busy = False
            for nid in self.ids():
                if ids is None or nid in ids:
                    busy |= self.handle_ready(nid)
            busy |= self.deliver(ids, drop=False)
            if not busy:
                return
        raise AssertionError("stabilize did not converge")

    def cmd_process_ready(self, args: list[str], kw: dict[str, str]) -> None:
        for nid in args:
            self.handle_ready(nid)

    def cmd_deliver_msgs(self, args: list[str], kw: dict[str, str]) -> None:
        self.deliver(set(args) if args else None, drop=kw.get("drop") == "true")

    def cmd_partition(self, args: list[str], kw: dict[str, str]) -> None:
        self.groups = {nid: g for g, group in enumerate(args) for nid in group.split(",")}
        self.say("partitioned " + " | ".join(args))

    def cmd_isolate(self, args: list[str], kw: dict[str, str]) -> None:
        rest = ",".join(nid for nid in self.ids() if nid != args[0])
        self.cmd_partition([args[0], rest], kw)

    def cmd_heal(self, args: list[str], kw: dict[str, str]) -> None:
        self.groups = None
        self.say("healed")

    def cmd_crash(self, args: list[str], kw: dict[str, str]) -> None:
        nid = args[0]
        self.queue = [m for m in self.queue if m.to != nid and m.frm != nid]
        self.groups = dict(self.groups or {nid2: 0 for nid2 in self.ids()})
        self.groups[nid] = -2
        self.say(f"crashed {nid}")

    def cmd_restart(self, args: list[str], kw: dict[str, str]) -> None:
        nid = args[0]
        st = self.storage[nid]
        restore = RestoreState(st.hard_state, st.snapshot, tuple(st.entries))
        self.nodes[nid] = self.classes[nid](self.configs[nid], restore)
        if self.groups is not None:
            self.groups[nid] = 0
            if all(g == 0 for g in self.groups.values()):
                self.groups = None
        s = self.nodes[nid].status()
        self.say(f"restarted {nid}: term={s.term} vote={st.hard_state.vote or 0} commit={s.commit} last={s.last_index}")

    def cmd_propose(self, args: list[str], kw: dict[str, str]) -> None:
        try:
            index, term = self.nodes[args[0]].propose(args[1].encode())
            self.say(f"proposed at {term}/{index}")
        except ProposalDropped as exc:
            self.say(f"dropped: {exc}")

    def cmd_propose_conf_change(self, args: list[str], kw: dict[str, str]) -> None:
        target = Membership(
            frozenset(kw["voters"].split(",")),
            frozenset(kw["learners"].split(",")) if kw.get("learners") else frozenset(),
        )
        try:
            index, term = self.nodes[args[0]].change_membership(target)
            self.say(f"proposed at {term}/{index}")
        except ProposalDropped as exc:
            self.say(f"dropped: {exc}")

    def cmd_read_index(self, args: list[str], kw: dict[str, str]) -> None:
        try:
            self.nodes[args[0]].read_barrier(args[1].encode())
            self.say("ok")
        except ProposalDropped as exc:
            self.say(f"dropped: {exc}")

    def cmd_transfer_leader(self, args: list[str], kw: dict[str, str]) -> None:
        try:
            self.nodes[args[0]].transfer_leadership(args[1])
            self.say("ok")
        except ProposalDropped as exc:
            self.say(f"dropped: {exc}")

    def cmd_compact(self, args: list[str], kw: dict[str, str]) -> None:
        nid = args[0]
        node = self.nodes[nid]
        index = int(args[1])
        term = node.log_entries(index, index + 1)[0].term
        st = self.storage[nid]
        snap = Snapshot(index, term, node.membership_at(index), b"snap@" + args[1].encode())
        node.compact(snap)
        st.snapshot = snap
        st.entries = [e for e in st.entries if e.index > index]
        self.say(f"compacted {nid} to {index}: first index {node.status().first_index}")

    def cmd_status(self, args: list[str], kw: dict[str, str]) -> None:
        for nid in args:
            s = self.nodes[nid].status()
            self.say(
                f"{nid}: {s.role.value} term={s.term} leader={s.leader or 0} commit={s.commit}"
                f" applied={s.applied} log={s.first_index}..{s.last_index}"
                f" {fmt_membership(s.membership)}" + (" lease" if s.lease_valid else "")
            )
            for pid in sorted(s.progress, key=int):
                p = s.progress[pid]
                self.say(f"  {pid}: {p.state} match={p.match} next={p.next} inflight={p.inflight}")

    def cmd_raft_log(self, args: list[str], kw: dict[str, str]) -> None:
        s = self.nodes[args[0]].status()
        entries = self.nodes[args[0]].log_entries(s.first_index, s.last_index + 1)
        self.say(fmt_entries(entries) if entries else "(empty)")

    def cmd_log_level(self, args: list[str], kw: dict[str, str]) -> None:
        self.verbose = args[0] != "none"
        self.say("ok")


def parse_blocks(text: str) -> list[tuple[list[str], str]]:
    """Split a script into (leading comment lines + command line, recorded output) pairs."""
    blocks: list[tuple[list[str], str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        head: list[str] = []
        while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
            if lines[i].startswith("#"):
                head.append(lines[i])
            i += 1
        if i >= len(lines):
            break
        head.append(lines[i])
        i += 1
        assert i < len(lines) and lines[i] == "----", f"expected ---- after {head[-1]!r}"
        i += 1
        out: list[str] = []
        while i < len(lines) and lines[i] != "":
            out.append(lines[i])
            i += 1
        blocks.append((head, "\n".join(out)))
    return blocks


def run_script(text: str) -> str:
    """Run every command of `text` and return the script with fresh outputs."""
    world = World()
    parts: list[str] = []
    for head, _ in parse_blocks(text):
        words = head[-1].split()
        args = [w for w in words[1:] if "=" not in w]
        kw = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        world.out = []
        world.run(words[0], args, kw)
        parts.append("\n".join(head) + "\n----\n" + ("\n".join(world.out) or "ok") + "\n")
    return "\n".join(parts)
