"""etcd-io/raft's confchange test vectors, replayed against kvorum's changer.

Each file under testdata/confchange is a script of blocks:

    # comments
    simple | enter-joint [autoleave=true|false] | leave-joint
    v1 l2 r3 u4          (ops: make a voter, make a learner, remove, update)
    ----
    the membership after the command, then one progress line per member

or the refusal, in which case nothing changes. Every command, refused or
not, moves the log's last index one on, and a member added by a command
starts probing at max(last index, 1): the `next` in the progress lines tells
in which command a member was added, and that a demoted voter keeps its
progress. Progress comes from kvorum's own tracker, printed with etcd's
state names.

The files are etcd's, byte for byte, except where kvorum's representation
differs, which is only `zero.txt`: etcd reserves the node id 0 for "no node"
and ignores ops on it, while kvorum's ids are strings with no reserved value,
so `v0` and `l0` there make node "0" a voter and then a learner; the empty
id, which kvorum refuses everywhere, is refused here too (`simple_empty_id.txt`
is kvorum's own). Set REWRITE=1 to write the current output back (then read
the diff before committing).
"""

from __future__ import annotations

import pathlib

import pytest

import transcripts
from kvorum.consensus.raft import confchange
from kvorum.consensus.raft.confchange import Change, ConfChangeError, Config, Op
from kvorum.consensus.raft.membership import leave_joint, plan_change
from kvorum.consensus.replicated_log import Membership
from kvorum.consensus.tracker import ProgressState, ProgressTracker

TESTDATA = pathlib.Path(__file__).parent / "testdata" / "confchange"
INFLIGHT_MAX = 10
STATE_NAMES = {
    ProgressState.PROBE: "StateProbe",
    ProgressState.REPLICATE: "StateReplicate",
    ProgressState.SNAPSHOT: "StateSnapshot",
}


def _ids(ids: frozenset[str]) -> str:
    return "(" + " ".join(sorted(ids)) + ")"


def format_config(config: Config) -> str:
    m = config.membership
    text = "voters=" + _ids(m.voters)
    if m.joint:
        text += "&&" + _ids(m.voters_outgoing)
    if m.learners:
        text += " learners=" + _ids(m.learners)
    if m.learners_next:
        text += " learners_next=" + _ids(m.learners_next)
    if config.auto_leave:
        text += " autoleave"
    return text


class Changer:
    """A config, the progress of its members, and the log's last index."""

    def __init__(self) -> None:
        self.config = Config(Membership(frozenset()))
        self.tracker = ProgressTracker(self.config.membership, INFLIGHT_MAX)
        self.last_index = 0

    def run(self, command: str, args: dict[str, str], ops: list[str]) -> str:
        try:
            return self._run(command, args, ops)
        finally:
            self.last_index += 1

    def _run(self, command: str, args: dict[str, str], ops: list[str]) -> str:
        changes = []
        for token in ops:
            try:
                changes.append(Change(Op(token[0]), token[1:]))
            except ValueError:
                return f"unknown input: {token}"
        try:
            if command == "simple":
                config = confchange.simple(self.config, changes)
            elif command == "enter-joint":
                auto_leave = args.get("autoleave", "false") == "true"
                config = confchange.enter_joint(self.config, changes, auto_leave)
            elif command == "leave-joint":
                if changes:
                    return "this command takes no input"
                config = confchange.leave_joint(self.config)
            else:
                return "unknown command"
        except ConfChangeError as err:
            return str(err)
        self.config = config
        self.tracker.set_membership(config.membership, max(self.last_index, 1))
        lines = [format_config(config)]
        for pid, pr in self.tracker:
            learner = " learner" if pid in config.membership.learners else ""
            lines.append(f"{pid}: {STATE_NAMES[pr.state]} match={pr.match} next={pr.next}{learner}")
        return "\n".join(lines)


def run_script(text: str) -> str:
    """Run every block of `text`; return the text with each output replaced by what it prints now."""
    lines = text.split("\n")
    out: list[str] = []
    changer = Changer()
    pending: list[str] = []  # the current block's command and input lines
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line != "----":
            if line.strip() and not line.startswith("#"):
                pending.append(line)
            continue
        assert pending, f"---- without a command before line {i}"
        words = pending[0].split()
        args = dict(w.split("=", 1) for w in words[1:])
        ops = " ".join(pending[1:]).split()
        out.extend(changer.run(words[0], args, ops).split("\n"))
        pending = []
        while i < len(lines) and lines[i] != "":
            i += 1  # the recorded output, replaced above
    return "\n".join(out)


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_confchange_transcript(path: pathlib.Path) -> None:
    transcripts.check(path, run_script)


def _memberships(nodes: list[str]):
    """Every plain membership over `nodes` with at least one voter."""
    for code in range(3 ** len(nodes)):
        voters, learners = set(), set()
        for node in nodes:
            code, role = divmod(code, 3)
            (voters if role == 1 else learners if role == 2 else set()).add(node)
        if voters:
            yield Membership(frozenset(voters), frozenset(learners))


def test_plan_change_is_the_changer_with_auto_leave_and_lands_on_the_target() -> None:
    """For every pair of memberships over five nodes: a change of at most one voter
    is one simple step to the target; any other is a joint step that names the old
    voters as outgoing, keeps demoted voters voting there, and leaves onto the target."""
    memberships = list(_memberships(["1", "2", "3", "4", "5"]))
    for current in memberships[::7]:
        for target in memberships:
            planned = plan_change(current, target)
            if len(current.voters ^ target.voters) <= 1:
                assert planned == target
                continue
            assert planned.voters_outgoing == current.voters and planned.voters == target.voters
            assert planned.learners_next == target.learners & current.voters
            assert leave_joint(planned) == target
