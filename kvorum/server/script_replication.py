"""Scripts on a replicated node: run once on the leader, replicated as their effects.

Theory of operation
-------------------
Followers never run Lua: a script's writes reach them as one EXEC log entry
of the write commands it ran, so a script that reads the clock or random
numbers cannot make replicas diverge (Redis 7's effects replication). The
leader's keyspace, too, changes only by applying log entries, so the script
cannot run on it. Instead, for EVAL / EVALSHA on the leader:

1. the declared keys (KEYS) must hash to one slot (else -CROSSSLOT), and a
   read barrier passes (the leader's keyspace holds every acknowledged write),
   and no write to them that this leader proposed is still in flight;
2. the declared keys are copied, with values, versions and deadlines, into a
   scratch keyspace, at a time stamp chosen now;
3. the script runs there (`kvorum.commands.scripting.EffectsRun`): it sees
   its own writes; a command on an undeclared key is refused; each write that
   succeeds is recorded as the argv it ran with;
4. no writes: the reply goes out at once. Else one EXEC entry is proposed
   whose watches are the declared keys' versions at copy time and whose
   commands are the recorded writes, stamped with the scratch run's time, so
   every replica computes the same deadlines from relative TTLs;
5. the client gets the script's reply once the entry applies. If it applied
   nothing because a watched version changed (another write landed between the
   copy and the entry), the script runs again from step 1, at most
   SCRIPT_ATTEMPTS_MAX times, then the client gets -TRYAGAIN.

A read-only script (EVAL_RO, EVALSHA_RO, `no-writes`) follows the same steps
and never proposes; on a READONLY connection it runs against the local
keyspace of whichever node it reaches, within the follower staleness bound.
Scripts are refused inside MULTI on a replicated node: EXEC's entry cannot
carry a script's effects, which are known only after it ran.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kvorum.cluster.slots import key_slot
from kvorum.commands import scripting
from kvorum.commands.table import Command, CommandContext, resolve
from kvorum.consensus.replicated_log import ProposalDropped
from kvorum.protocol.encoder import encode, error_line
from kvorum.protocol.values import CommandError, NullArray
from kvorum.replica import state_machine
from kvorum.server.group_driver import Unavailable
from kvorum.store import Keyspace

if TYPE_CHECKING:
    from kvorum.server.connection import Connection
    from kvorum.server.replication import ClusterNode

# Runs of one script call whose entry found a watched key changed, before -TRYAGAIN.
SCRIPT_ATTEMPTS_MAX = 5
# Times one run waits for in-flight writes to its keys before it copies them anyway.
PENDING_WAITS_MAX = 16

CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot"


def execute(node: ClusterNode, client: Connection, cmd: Command, argv: list[bytes],
            now_ms: int) -> bytes | asyncio.Future:
    """EVAL / EVALSHA / EVAL_RO / EVALSHA_RO on a replicated node."""
    try:
        keys, _args = scripting.parse_keys(argv)
    except CommandError as exc:
        return error_line(exc.message)
    slots = {key_slot(key) for key in keys}
    if len(slots) > 1:
        return error_line(CROSSSLOT)
    slot = slots.pop() if slots else 0
    if client.readonly_reads and "readonly" in cmd.flags:
        if node.driver.leader_contact_age_s() > node.stale_read_s_max:
            return error_line(f"TRYAGAIN no contact with a leader for over {node.stale_read_s_max:g}s")
        reply, writes = _run(node, client, argv, keys, now_ms)
        assert not writes, "a read-only script wrote"
        return _encode(reply, client.resp3)
    moved = node.redirect_slot(slot)
    if moved is not None:
        return moved
    outer = asyncio.get_running_loop().create_future()
    # Later requests of this connection wait for the script (a write pipelined after it must
    # not be proposed before the script's own entry).
    client.read_waiting = outer
    _attempt(node, client, argv, keys, outer, 1)
    return outer


def _attempt(node: ClusterNode, client: Connection, argv: list[bytes], keys: list[bytes],
             outer: asyncio.Future, attempt: int) -> None:
    """Run the script once the read barrier passed and no write to its keys is in flight."""
    try:
        barrier = node.driver.read_barrier()
    except ProposalDropped as exc:
        outer.set_result(error_line(f"TRYAGAIN {exc}"))
        return

    def barrier_passed(done: asyncio.Future) -> None:
        if outer.done():
            return
        failure = _failure(done)
        if failure is not None:
            outer.set_result(failure)
            return
        _when_settled(node, keys, outer, lambda: _run_and_propose(node, client, argv, keys, outer, attempt))

    barrier.add_done_callback(barrier_passed)


def _when_settled(node: ClusterNode, keys: list[bytes], outer: asyncio.Future, then, waits: int = 0) -> None:
    """then() once this leader has no proposal to `keys` in flight (or after
    PENDING_WAITS_MAX waits: the watches keep it correct either way).

    A script copies its keys from the applied keyspace; a write to them already
    proposed but not applied would land before the script's entry and void it."""
    pending = node.pending_writes(keys)
    if not pending or waits >= PENDING_WAITS_MAX:
        then()
        return
    gathered = asyncio.gather(*pending, return_exceptions=True)
    gathered.add_done_callback(lambda _all: outer.done() or _when_settled(node, keys, outer, then, waits + 1))


def _run_and_propose(node: ClusterNode, client: Connection, argv: list[bytes], keys: list[bytes],
                     outer: asyncio.Future, attempt: int) -> None:
    stamp_ms = node.stamper.next_ms()
    watches = [(key, node.state.db.version_of(key, stamp_ms)) for key in keys]
    reply, writes = _run(node, client, argv, keys, stamp_ms)
    if not writes:
        outer.set_result(_encode(reply, client.resp3))
        return
    if len(writes) > state_machine.EXEC_COMMANDS_MAX:
        outer.set_result(error_line(f"ERR a replicated script may run at most "
                                    f"{state_machine.EXEC_COMMANDS_MAX} writes"))
        return
    leases = node.leases()
    if leases.outstanding:
        for write in writes:
            leases.void_keys(resolve(write), write)
    data = state_machine.encode_exec(stamp_ms, watches, writes)
    try:
        applied = node.driver.propose(data, node.write_concern(client), False, client)
    except ProposalDropped as exc:
        outer.set_result(error_line(f"TRYAGAIN {exc}"))
        return
    node.note_pending(keys, applied)

    def entry_applied(done: asyncio.Future) -> None:
        if outer.done():
            return
        failure = _failure(done)
        if failure is not None:
            outer.set_result(failure)
        elif done.result() is NullArray:
            if attempt >= SCRIPT_ATTEMPTS_MAX:
                outer.set_result(error_line(f"TRYAGAIN the script's keys changed under it "
                                            f"{SCRIPT_ATTEMPTS_MAX} times in a row"))
            else:
                _attempt(node, client, argv, keys, outer, attempt + 1)
        else:
            outer.set_result(_encode(reply, client.resp3))

    applied.add_done_callback(entry_applied)


def _run(node: ClusterNode, client: Connection, argv: list[bytes], keys: list[bytes], stamp_ms: int):
    """The script on a scratch copy of its declared keys: (reply value, recorded writes)."""
    ctx = client.ctx
    ctx.now_ms = stamp_ms
    try:
        prepared = scripting.prepare(ctx, argv)
    except CommandError as exc:
        return exc, []
    scratch = Keyspace()
    node.state.db.copy_keys_to(scratch, keys, stamp_ms)
    run = scripting.EffectsRun(ctx, CommandContext(scratch, stamp_ms, client, client.server), prepared.readonly,
                               prepared.allow_oom, frozenset(keys))
    reply = scripting.run(ctx, prepared, run)
    return reply, run.writes


def _failure(done: asyncio.Future) -> bytes | None:
    """The error line for a barrier or proposal that did not succeed, or None."""
    if done.cancelled():
        return error_line("TRYAGAIN the request was cancelled")
    exc = done.exception()
    if exc is None:
        return None
    if isinstance(exc, (Unavailable, ProposalDropped)):
        return error_line(str(exc) if isinstance(exc, Unavailable) else f"TRYAGAIN {exc}")
    raise exc


def _encode(reply, resp3: bool) -> bytes:
    if reply.__class__ is CommandError:
        return error_line(reply.message)
    return encode(reply, resp3)

