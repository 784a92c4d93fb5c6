"""One log line per consensus event a node's operator wants to see: leader and membership changes.

The lines are stable (scripts and tests grep them), so their words are fixed here:

    group 0: n2 is leader of term 7 (was n1), seen by n3
    group 0: no leader in term 8 (was n2), seen by n3
    group 0: membership voters={n1,n2,n4} learners={} at index 120 (was voters={n1,n2,n3})

A leader line says which node saw the change: nodes learn of a new leader at
different times (a cut-off node not at all), and `kvorum cluster up` prints
every node's log on one terminal. A membership line needs no observer: the
membership at a log index is the same on every node.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from kvorum.consensus.replicated_log import Membership

log = logging.getLogger("kvorum.raft")

# The parts of a membership, in the order a line shows them. The joint-consensus
# parts appear only while non-empty, so a plain membership reads as voters and learners.
_ALWAYS_SHOWN = ("voters", "learners")
_SHOWN_WHILE_JOINT = ("voters_outgoing", "learners_next")


def _natural(node_id: str) -> tuple:
    """Sort key that puts n2 before n10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", node_id))


def node_set(ids: Iterable[str]) -> str:
    return "{" + ",".join(sorted(ids, key=_natural)) + "}"


def leader_change_line(group: int, node_id: str, old_leader: str | None, new_leader: str | None,
                       term: int) -> str:
    was = f"(was {old_leader or 'none'}), seen by {node_id}"
    if new_leader is None:
        return f"group {group}: no leader in term {term} {was}"
    return f"group {group}: {new_leader} is leader of term {term} {was}"


def _parts(membership: Membership) -> dict[str, str]:
    parts = {name: node_set(getattr(membership, name)) for name in _ALWAYS_SHOWN}
    for name in _SHOWN_WHILE_JOINT:
        if getattr(membership, name):
            parts[name] = node_set(getattr(membership, name))
    return parts


def membership_change_line(group: int, old: Membership | None, new: Membership, index: int) -> str:
    """The new membership in full; of the old one, only the parts that differ."""
    now = _parts(new)
    line = f"group {group}: membership " + " ".join(f"{k}={v}" for k, v in now.items()) + f" at index {index}"
    if old is None:
        return line
    before = _parts(old)
    shown = [k for k in (*_ALWAYS_SHOWN, *_SHOWN_WHILE_JOINT) if k in now or k in before]
    changed = [f"{k}={before.get(k, '{}')}" for k in shown if before.get(k, "{}") != now.get(k, "{}")]
    return line + (f" (was {' '.join(changed)})" if changed else " (unchanged)")


def log_leader_change(group: int, node_id: str, old_leader: str | None, new_leader: str | None,
                      term: int) -> None:
    """Log that `node_id` now knows `new_leader` (None: no leader) as leader of `term`."""
    log.info("%s", leader_change_line(group, node_id, old_leader, new_leader, term))


def log_membership_change(group: int, old: Membership | None, new: Membership, index: int) -> None:
    """Log that the membership in force from log `index` on is `new` (it was `old`; None at start)."""
    log.info("%s", membership_change_line(group, old, new, index))
