"""The cluster's pure parts, no sockets: hash slots, --peers parsing, the replicated state machine."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import kvorum.commands  # noqa: F401  (registers every command)
from kvorum.replica import state_machine as sm
from kvorum.cluster.slots import crc16, hash_tag, key_slot
from kvorum.cluster.topology import TopologyError, parse_peers
from kvorum.consensus.replicated_log import Membership
from kvorum.protocol.values import CommandError, NullArray
from kvorum.replica.ready_loop import ReadyLoop
from kvorum.store import Keyspace


def test_key_slots_match_redis():
    # Values from Redis' cluster tests and the cluster spec.
    assert crc16(b"123456789") == 0x31C3
    assert key_slot(b"foo") == 12182
    assert key_slot(b"bar") == 5061
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers") == key_slot(b"user1000")
    assert hash_tag(b"foo{}{bar}") == b"foo{}{bar}"  # an empty tag hashes the whole key
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"


def test_parse_peers():
    nodes = parse_peers("n1@127.0.0.1:7001,n2@127.0.0.1:7002@9999", node_id="n1")
    assert nodes["n1"].bus_port == 17001 and nodes["n2"].bus_port == 9999
    assert parse_peers("n1@h:7001", bus_port_self=5000, node_id="n1")["n1"].bus_port == 5000
    for bad in ("n1@h", "n1@h:x", "@h:1", "n1@h:1,n1@h:2", "n1@h:70000"):
        with pytest.raises(TopologyError):
            parse_peers(bad)
    with pytest.raises(TopologyError):
        parse_peers("n1@h:7001", node_id="n9")


def _replay(entries: list[bytes]) -> tuple[Keyspace, list]:
    db = Keyspace()
    stamper = sm.Stamper()
    return db, [sm.apply(db, data, stamper) for data in entries]


def test_every_replica_applying_the_same_entries_ends_identical():
    entries = [
        sm.encode_command(1000, [b"SET", b"a", b"1"]),
        sm.encode_command(1001, [b"INCR", b"a"]),
        sm.encode_command(1002, [b"SET", b"t", b"x", b"PX", b"100"]),
        sm.encode_command(1003, [b"HSET", b"h", b"f", b"v"]),
        sm.encode_exec(1004, [], [[b"INCR", b"a"], [b"INCR", b"h"]]),
        sm.encode_expire(1200, [b"t", b"a"]),
    ]
    first, replies = _replay(entries)
    second, again = _replay(entries)
    assert first.dump() == second.dump()
    assert replies[1] == 2
    assert replies[4][0] == 3 and isinstance(replies[4][1], CommandError)  # EXEC keeps per-command errors
    assert first.get(b"t", 1200) is None  # expired by the EXPIRE entry at its stamp
    assert first.get(b"a", 1200) == b"3"  # not expired: it has no deadline


def test_exec_with_a_changed_watched_version_applies_nothing():
    db = Keyspace()
    stamper = sm.Stamper()
    sm.apply(db, sm.encode_command(1, [b"SET", b"k", b"1"]), stamper)
    version = db.version_of(b"k", 1)
    sm.apply(db, sm.encode_command(2, [b"SET", b"k", b"2"]), stamper)
    reply = sm.apply(db, sm.encode_exec(3, [(b"k", version)], [[b"SET", b"k", b"3"]]), stamper)
    assert reply is NullArray and db.get(b"k", 3) == b"2"
    reply = sm.apply(db, sm.encode_exec(4, [(b"k", db.version_of(b"k", 4))], [[b"SET", b"k", b"3"]]), stamper)
    assert db.get(b"k", 4) == b"3"


def test_evict_entry_removes_what_is_still_there_and_counts_it():
    entries = [
        sm.encode_command(1000, [b"SET", b"a", b"1"]),
        sm.encode_command(1001, [b"SET", b"b", b"2"]),
        sm.encode_evict(1002, [b"a", b"gone"]),
        sm.encode_evict(1003, [b"a"]),  # a second plan naming the same key: nothing left to do
    ]
    first, replies = _replay(entries)
    second, _ = _replay(entries)
    assert replies[2:] == [1, 0]
    assert first.peek(b"a", 1003) is None and first.peek(b"b", 1003) == b"2"
    assert first.evicted_keys == second.evicted_keys == 1
    assert first.dump() == second.dump()


def test_stamps_never_go_back():
    stamper = sm.Stamper()
    stamper.observe(10**15)
    assert stamper.next_ms() == 10**15
    assert stamper.next_ms() >= 10**15


def test_snapshot_recorded_an_uncommitted_membership():
    """A snapshot holds the membership at its applied index, not the engine's latest."""
    applied = Membership(voters=frozenset({"n1", "n2", "n3"}))
    uncommitted = Membership(voters=frozenset({"n1", "n2", "n3", "n4"}))
    compacted = []
    engine = SimpleNamespace(status=lambda: SimpleNamespace(membership=uncommitted),
                             membership_at={7: applied}.__getitem__, compact=compacted.append)
    machine = SimpleNamespace(dump=lambda: b"keys")
    loop = ReadyLoop(engine, machine, decode_membership=None, applied_index=7, applied_term=2)
    snapshot = loop.snapshot()
    assert snapshot.membership == applied and snapshot.index == 7 and snapshot.data == b"keys"
    loop.compacted(snapshot)
    assert compacted == [snapshot] and loop.snapshot_index == 7


class _RecordingTransport:
    def __init__(self):
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name):
        return None

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def test_invalidation_is_written_after_a_read_reply_already_known():
    """The read's old value was computed, its write callback had not run yet: the push waits for it."""
    from kvorum.server.connection import Connection
    from kvorum.server.state import ServerState
    from kvorum.settings import Settings

    async def scenario():
        state = ServerState(Settings())
        state.cluster = None
        client = Connection(state)
        transport = _RecordingTransport()
        client.connection_made(transport)
        loop = asyncio.get_running_loop()
        write_reply, read_reply, later = loop.create_future(), loop.create_future(), loop.create_future()
        client.replies.extend([write_reply, read_reply, later])
        write_reply.set_result(b"+OK\r\n")
        read_reply.set_result(b"$3\r\nold\r\n")  # done; _reply_ready would write it on the next turn
        client.write_push(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n")
        assert transport.written == [b"+OK\r\n$3\r\nold\r\n", b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"]
        assert list(client.replies) == [later]  # a reply not known yet does not hold the push back
        later.set_result(b":1\r\n")
        client._write_known_replies()
        assert transport.written[-1] == b":1\r\n" and client.waiting is None

    asyncio.run(scenario())


def test_replication_behaviour_is_declared_in_the_command_table():
    """Blind writes, WATCH-ending commands and leader-only state are flags of their declarations."""
    import kvorum.commands  # noqa: F401  (registers every command)
    from kvorum.commands.introspection import command_info
    from kvorum.commands.table import REPLICATION_FLAGS, TABLE

    blind = {name for name, cmd in TABLE.items() if cmd.blind is not None}
    assert blind == {"set", "setex", "psetex", "mset"}
    assert TABLE["set"].blind([b"set", b"k", b"v"]) and not TABLE["set"].blind([b"set", b"k", b"v", b"NX"])
    assert TABLE["setex"].blind([b"setex", b"k", b"10", b"v"])
    for ttl in (b"0", b"-1", b"01", b"+1", b"x", b"%d" % (10**12 + 1)):
        assert not TABLE["setex"].blind([b"setex", b"k", ttl, b"v"]), ttl
    assert TABLE["mset"].blind([b"mset", b"a", b"1"]) and not TABLE["mset"].blind([b"mset", b"a", b"1", b"b"])
    assert {n for n, c in TABLE.items() if "unwatches" in c.flags} == {"discard", "unwatch", "reset"}
    assert "leader_state" in TABLE["leaseget"].flags
    # COMMAND reports Redis' flags only.
    assert not {str(f) for f in command_info(TABLE["leaseget"])[2]} & REPLICATION_FLAGS
