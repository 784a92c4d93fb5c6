"""Membership requests on a replicated node: CLUSTER MEMBER ADD | REMOVE | PROMOTE, MOVE-LEADER, FAILOVER.

Theory of operation
-------------------
These commands carry the `membership` flag in the command table. Their
handlers run here, on the group's leader (a follower answers -MOVED, as for a
write), and return a Future of the reply: an ADD, REMOVE or PROMOTE is one
ROSTER log entry, answered once it has applied; the engine's membership then
follows the roster one safe step at a time (kvorum.replica.reconfigure, run by
the leader's cron). So an OK means "recorded, and being carried out"; `kvorum
cluster ...` and CLUSTER MEMBERS show the progress.

CLUSTER FAILOVER is the one request a follower serves: it asks the leader, over
the leader's client port, to hand leadership to this node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from kvorum.cluster.topology import BUS_PORT_OFFSET
from kvorum.commands.table import Command
from kvorum.consensus.replicated_log import ProposalDropped
from kvorum.protocol.encoder import encode, error_line
from kvorum.protocol.values import OK, CommandError
from kvorum.replica.roster import Goal, Member, RosterError
from kvorum.server import dispatch

if TYPE_CHECKING:
    from kvorum.server.replication import ClusterClient, ClusterNode
    from kvorum.server.state import ServerState

log = logging.getLogger("kvorum.group")

# How long CLUSTER FAILOVER waits for the leader's answer.
FAILOVER_ASK_TIMEOUT_S = 2.0


def execute(node: ClusterNode, client: ClusterClient, cmd: Command, argv: list[bytes]) -> bytes | asyncio.Future:
    """Run a membership command: the encoded reply, or a Future of it."""
    if cmd.name != "failover":
        moved = node.redirect(cmd, argv)
        if moved is not None:
            return moved
    reply = dispatch.call(client, cmd, argv, 0)
    if not isinstance(reply, asyncio.Future):
        return _encode(reply, client.resp3)
    outer = reply.get_loop().create_future()

    def done(inner: asyncio.Future) -> None:
        if inner.cancelled():
            outer.set_result(error_line("TRYAGAIN the request was cancelled"))
        elif inner.exception() is not None:
            exc = inner.exception()
            outer.set_result(error_line(str(exc) if not isinstance(exc, CommandError) else exc.message))
        else:
            outer.set_result(_encode(inner.result(), client.resp3))

    reply.add_done_callback(done)
    return outer


def _encode(reply, resp3: bool) -> bytes:
    if isinstance(reply, (CommandError, RosterError)):
        return error_line(reply.message if isinstance(reply, CommandError) else str(reply))
    return encode(reply, resp3)


def _text(arg: bytes) -> str:
    return arg.decode("utf-8", "surrogateescape")


def parse_address(text: str) -> tuple[str, int, int]:
    """host:port[@busport] -> (host, port, bus port); CommandError when malformed."""
    addr, _, bus_text = text.partition("@")
    host, sep, port_text = addr.rpartition(":")
    try:
        port = int(port_text)
        bus = int(bus_text) if bus_text else port + BUS_PORT_OFFSET
    except ValueError:
        raise CommandError(f"ERR invalid address {text!r}: expected host:port[@busport]") from None
    if not sep or not host or not 0 < port < 65536 or not 0 < bus < 65536:
        raise CommandError(f"ERR invalid address {text!r}: expected host:port[@busport]")
    return host, port, bus


def member_command(node: ClusterNode, argv: list[bytes]) -> object:
    """CLUSTER MEMBER ADD id host:port[@busport] [LEARNER] [REPLACE old-id] | REMOVE id | PROMOTE id"""
    sub = argv[2].upper()
    node_id = _text(argv[3])
    group = node.group
    roster = group.roster
    try:
        if sub == b"ADD":
            member = _parse_add(node_id, argv)
            roster.check_add(member)
            if roster.get(node_id) is not None:
                # Already registered at this address (check_add passed): joining again, as a
                # restarted node or one registered by `kvorum cluster replace` does, changes
                # nothing; PROMOTE changes a learner's goal.
                return OK
            return _propose(group, "add", member.to_wire())
        if len(argv) != 4:
            raise CommandError("ERR syntax error")
        if sub == b"REMOVE":
            roster.check_remove(node_id)
            if roster.is_removed(node_id):
                return OK
            return _propose(group, "remove", node_id)
        if sub == b"PROMOTE":
            member = roster.get(node_id)
            if member is None or member.goal is Goal.REMOVED:
                raise CommandError(f"ERR no member {node_id}")
            if member.goal is Goal.VOTER:
                return OK
            return _propose(group, "promote", node_id)
    except RosterError as exc:
        raise CommandError(str(exc)) from None
    raise CommandError(f"ERR unknown subcommand '{_text(argv[2])}'. Try CLUSTER HELP.")


def _parse_add(node_id: str, argv: list[bytes]) -> Member:
    host, port, bus = parse_address(_text(argv[4])) if len(argv) > 4 else (None, 0, 0)
    if host is None:
        raise CommandError("ERR wrong number of arguments for 'cluster|member' command")
    goal = Goal.VOTER
    replaces = ""
    i = 5
    while i < len(argv):
        option = argv[i].upper()
        if option == b"LEARNER":
            goal = Goal.LEARNER
            i += 1
        elif option == b"REPLACE" and i + 1 < len(argv):
            replaces = _text(argv[i + 1])
            i += 2
        else:
            raise CommandError("ERR syntax error")
    if replaces and goal is Goal.LEARNER:
        raise CommandError("ERR a learner cannot replace a voter")
    return Member(node_id, host, port, bus, goal, replaces)


def _propose(group, op: str, arg) -> asyncio.Future:
    try:
        inner = group.propose_roster(op, arg)
    except ProposalDropped as exc:
        raise CommandError(f"TRYAGAIN {exc}") from None
    outer = inner.get_loop().create_future()

    def done(f: asyncio.Future) -> None:
        if f.cancelled():
            outer.cancel()
        elif f.exception() is not None:
            outer.set_exception(f.exception())
        else:
            result = f.result()
            outer.set_result(CommandError(str(result)) if isinstance(result, RosterError) else OK)

    inner.add_done_callback(done)
    return outer


def move_leader(node: ClusterNode, to: str) -> object:
    """CLUSTER MOVE-LEADER id: start a leadership transfer (OK once started)."""
    if to == node.id:
        return OK
    status = node.driver.status()
    if to not in status.membership.voters:
        raise CommandError(f"ERR {to} is not a voter")
    try:
        node.group.transfer_leadership(to)
    except ProposalDropped as exc:
        raise CommandError(f"TRYAGAIN {exc}") from None
    log.info("group %d: leadership transfer to %s requested", node.group.id, to)
    return OK


def failover(node: ClusterNode) -> object:
    """CLUSTER FAILOVER on a follower: ask the leader to hand leadership to this node."""
    leader = node.driver.leader
    if leader == node.id:
        raise CommandError("ERR You should send CLUSTER FAILOVER to a replica")
    address = node.group.address_of(leader) if leader is not None else None
    if address is None:
        raise CommandError("CLUSTERDOWN no leader to fail over from")
    return asyncio.ensure_future(_ask_leader(address.host, address.port, node.id))


async def _ask_leader(host: str, port: int, me: str):
    request = encode([b"CLUSTER", b"MOVE-LEADER", me.encode()], False)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), FAILOVER_ASK_TIMEOUT_S)
        try:
            writer.write(request)
            line = await asyncio.wait_for(reader.readline(), FAILOVER_ASK_TIMEOUT_S)
        finally:
            writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        return CommandError(f"TRYAGAIN cannot reach the leader at {host}:{port}: {exc}")
    if line.startswith(b"-"):
        return CommandError(line[1:].decode(errors="replace").strip())
    return OK


def removed(state: ServerState) -> Callable[[str], None]:
    """What a node does when it learns it was removed from its group: say so and shut down."""

    def shut_down(reason: str) -> None:
        if state.shutting_down:
            return
        log.warning("%s; shutting down (its id is never used again)", reason)
        state.request_shutdown()

    return shut_down
