"""One PySyncObj replica with a replicated dict, serving SET over a small RESP front end.

Run by pysyncobj_cluster, three at a time:

    python pysyncobj_node.py --raft 127.0.0.1:P1 --partners 127.0.0.1:P2,127.0.0.1:P3 \
        --port D1 --journal DIR/journal --sync msync --batch on

Theory of operation. The replica is a plain SyncObj whose only consumer is
PySyncObj's own ReplDict, with journalFile set, appendEntriesUseBatch as --batch
says, and PySyncObj's other settings at their defaults; it runs PySyncObj's
tick thread (autoTick) as any application would. The main thread runs an asyncio server speaking the part of RESP that
redis-py needs (HELLO, CLIENT, PING, SET, and ROLE, which answers +leader or
+follower so the benchmark can find the leader), so PySyncObj is driven by the
very client that drives kvorum. SET calls ReplDict.set with a callback; PySyncObj
calls it from its tick thread once the entry is committed and applied on this
replica, and the reply is handed back to the event loop. Replies on one
connection leave in request order.

Durability. PySyncObj writes its journal through mmap and never syncs it: an
acknowledged write can be lost if the machine stops, unlike etcd and kvorum,
which fsync before acknowledging. `--sync msync` (the default) closes that gap
with group commit: the journal notes that it has unsynced entries, and the
transport syncs it (mmap.flush, i.e. msync MS_SYNC) before sending any message,
so a leader's entries are on disk before it asks followers to append them, and
a follower's before it answers. That is the minimum Raft needs, done once per
batch of messages. `--sync none` runs PySyncObj as shipped. In both modes the
term and vote file is written without fsync, as PySyncObj does; elections are
rare and do not affect the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal

import hiredis
import pysyncobj.syncobj
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict
from pysyncobj.journal import FileJournal
from pysyncobj.transport import TCPTransport

try:
    import uvloop
except ImportError:
    uvloop = None

PENDING_PER_CONNECTION_MAX = 1024  # replies a connection may have outstanding before it is dropped


class SyncedJournal(FileJournal):
    """PySyncObj's file journal, plus a dirty flag and a sync() that msyncs once per batch."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.dirty = False

    def add(self, command, idx, term):
        super().add(command, idx, term)
        self.dirty = True

    def clear(self):
        super().clear()
        self.dirty = True

    def deleteEntriesFrom(self, entryFrom):
        super().deleteEntriesFrom(entryFrom)
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            self.flush()


# The journal of this process's one SyncObj, for the transport to sync.
journal: SyncedJournal | None = None


class SyncingTransport(TCPTransport):
    """PySyncObj's TCP transport, syncing the journal before every message leaves."""

    def send(self, node, message):
        journal.sync()
        return super().send(node, message)


def create_synced_journal(path):
    global journal
    assert path is not None, "--sync msync needs a journal file"
    journal = SyncedJournal(path)
    return journal


class RespConnection(asyncio.Protocol):
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        # Replies in request order: each slot is None until its reply is known.
        self.pending: collections.deque[list] = collections.deque()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                request = self.reader.gets()
            except hiredis.ProtocolError:
                self.transport.close()
                return
            if request is False:
                break
            if len(self.pending) >= PENDING_PER_CONNECTION_MAX:
                self.transport.close()
                return
            slot = [None]
            self.pending.append(slot)
            self.dispatch(request, slot)
        self.flush()

    def dispatch(self, request, slot: list) -> None:
        if not isinstance(request, list) or not request:
            slot[0] = b"-ERR expected an array of bulk strings\r\n"
            return
        name = request[0].upper()
        if name == b"SET" and len(request) == 3:
            self.node.set(request[1], request[2], self, slot)
        elif name == b"PING":
            slot[0] = b"+PONG\r\n"
        elif name == b"ROLE":
            slot[0] = b"+leader\r\n" if self.node.sync_obj._isLeader() else b"+follower\r\n"
        elif name == b"HELLO":
            proto = b"3" if len(request) > 1 and request[1] == b"3" else b"2"
            slot[0] = (b"%2\r\n$6\r\nserver\r\n$9\r\npysyncobj\r\n$5\r\nproto\r\n:" + proto + b"\r\n"
                       if proto == b"3" else b"*4\r\n$6\r\nserver\r\n$9\r\npysyncobj\r\n$5\r\nproto\r\n:2\r\n")
        elif name == b"CLIENT":
            slot[0] = b"+OK\r\n"
        else:
            slot[0] = b"-ERR unknown command or wrong number of arguments\r\n"

    def complete(self, slot: list, reply: bytes) -> None:
        slot[0] = reply
        self.flush()

    def flush(self) -> None:
        out = []
        while self.pending and self.pending[0][0] is not None:
            out.append(self.pending.popleft()[0])
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class Node:
    def __init__(self, args) -> None:
        conf = SyncObjConf(journalFile=args.journal, appendEntriesUseBatch=args.batch == "on")
        transport_class = TCPTransport
        if args.sync == "msync":
            pysyncobj.syncobj.createJournal = create_synced_journal
            transport_class = SyncingTransport
        self.data = ReplDict()
        self.sync_obj = SyncObj(args.raft, args.partners, conf=conf, consumers=[self.data],
                                transportClass=transport_class)
        self.loop: asyncio.AbstractEventLoop | None = None

    def set(self, key: bytes, value: bytes, conn: RespConnection, slot: list) -> None:
        loop = self.loop

        def on_applied(result, error) -> None:
            # Runs on PySyncObj's tick thread.
            reply = b"+OK\r\n" if error == 0 else b"-ERR pysyncobj fail reason %d\r\n" % error
            loop.call_soon_threadsafe(conn.complete, slot, reply)

        self.data.set(key, value, callback=on_applied)

    async def serve(self, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, stop.set)
        server = await self.loop.create_server(lambda: RespConnection(self), "127.0.0.1", port)
        async with server:
            await stop.wait()
        self.sync_obj.destroy()


def main() -> None:
    p = argparse.ArgumentParser(description="one PySyncObj replica serving SET over RESP")
    p.add_argument("--raft", required=True, help="host:port of this replica's Raft transport")
    p.add_argument("--partners", required=True, help="comma-separated host:port of the other replicas")
    p.add_argument("--port", type=int, required=True, help="RESP port on 127.0.0.1")
    p.add_argument("--journal", required=True, help="journal file (PySyncObj's journalFile)")
    p.add_argument("--sync", choices=("msync", "none"), default="msync",
                   help="msync: group-commit the journal before sending (default); none: as shipped")
    p.add_argument("--batch", choices=("on", "off"), default="on",
                   help="PySyncObj's appendEntriesUseBatch (default on, as in PySyncObj; off: send entries at once)")
    args = p.parse_args()
    args.partners = [x for x in args.partners.split(",") if x]
    node = Node(args)
    if uvloop is not None:
        uvloop.run(node.serve(args.port))
    else:
        asyncio.run(node.serve(args.port))


if __name__ == "__main__":
    main()
