"""Raft, as a pure state machine implementing `kvorum.consensus.replicated_log.ReplicatedLog`.

Constructing a node
-------------------
A fresh member of a new group (every node gets the same initial membership)::

    import random
    from kvorum.consensus.replicated_log import Membership
    from kvorum.consensus.raft import RaftConfig, RaftNode

    membership = Membership(voters=frozenset({"1", "2", "3"}))
    node = RaftNode(RaftConfig(id="1", membership=membership, rng=random.Random(seed)))

A node restarted from what it persisted (the snapshot it installed or took,
the entries and hard state from its Ready's, in that order)::

    from kvorum.consensus.replicated_log import RestoreState
    node = RaftNode(config, RestoreState(hard_state=hs, snapshot=snap, entries=entries))

On restart `config.membership` is only a fallback: the membership in the
restored snapshot or log wins. With `lease_reads`, a restarted node ignores
candidates for its first election timeout (it may be part of a live leader's
lease). A node being added to a running group is
started fresh with any membership that does not make it a voter (for example
the group's current one); it will not campaign and learns the real membership
from the leader. `RaftConfig.validate()` runs in the constructor and raises
ValueError for a bad setting.

Driving it (see `replicated_log` for the loop): `tick()`, `step(msg)`,
`propose(data) -> (index, term)`, `read_barrier(ctx)`,
`change_membership(Membership)`, `transfer_leadership(to)`, `compact(snapshot)`,
`has_ready()`, `ready()`, `advance(ready)`, `status()`, `log_entries(lo, hi)`,
plus `campaign()` to start an election at once. Messages in `Ready.messages`
carry `.to` and `.frm`; `encode_message` / `decode_message` turn them into
bytes and back.

`compact(snapshot)` needs `snapshot.index <= status().applied`; the engine
fills in the snapshot's membership itself. A caller persisting a snapshot at
`index` takes its membership from `membership_at(index)`: `status().membership`
may already hold a later, uncommitted change. `Ready.snapshot` (a follower that
was sent one) must be persisted and installed before `Ready.entries`.

Deliberately broken variants, for proving that the simulator catches them,
are subclasses that override `RaftNode`'s hook methods, one safety rule each:
`kvorum.consensus.raft.bugs.node_class(names)` builds one (its module lists
the bugs). Nothing here imports that module.
"""

from kvorum.consensus.raft import messages
from kvorum.consensus.raft.config import RaftConfig
from kvorum.consensus.raft.messages import *  # noqa: F403  (the wire vocabulary, listed in messages.__all__)
from kvorum.consensus.raft.node import RaftNode

__all__ = ["RaftConfig", "RaftNode", *messages.__all__]
