#!/usr/bin/env python3
"""The Python floor: the leanest RESP server CPython can run, as a measuring stick.

bench/redis_compare measures this server next to redis-server and kvorum to show
the throughput and CPU cost that any CPython RESP server pays on this machine
before doing any real work: a uvloop event loop (asyncio's own when uvloop is not
installed), hiredis for request parsing, one dict for the data, and for each read
the replies of the whole batch joined and written with one transport.write.

It is not a server anybody should use. It answers only
  SET key value  -> +OK     (no options, no expiry, no versions, no memory limit)
  GET key        -> bulk reply, or $-1 when the key is missing
  PING           -> +PONG   (the benchmark's readiness probe)
  CONFIG GET p   -> p = ""  (redis-benchmark asks for save and appendonly at start and
                             warns unless it gets a name/value pair; an empty value is
                             what Redis gives for `save` when started with --save '')
and +OK to anything else, without looking at the arguments. Whatever kvorum does
beyond this (command table, argument checks, versions, TTLs, memory accounting,
...) is kvorum's own cost; what is below it is the language runtime's.

With --versioned the dict holds what kvorum keeps per key instead of the bare
value: a (value, version, access-clock tick) tuple, a new version from one
counter on every SET, and the bytes in use kept up to date, as kvorum's SET and
GET do for a key without TTL (the key-exists test for a TTL is left out). The
code is still one function with no command table: the difference to the plain
floor is the cost of the data model alone.

    python3 bench/python_floor_server.py --port P [--versioned]   # binds 127.0.0.1; SIGTERM/SIGINT stop it
"""

import argparse
import asyncio
import signal
import time

import hiredis

try:
    import uvloop
except ImportError:
    uvloop = None

OK = b"+OK\r\n"
NULL = b"$-1\r\n"
# kvorum's access clock ticks once a second (LRU_CLOCK_RESOLUTION_MS).
CLOCK_TICK_MS = 1000


def other_reply(command: bytes, request: list) -> bytes:
    """The reply to anything but GET and SET (rare: the benchmark's start and readiness probe)."""
    if command == b"PING":
        return b"+PONG\r\n"
    if command == b"CONFIG" and len(request) == 3 and request[1].upper() == b"GET":
        return b"*2\r\n$%d\r\n%b\r\n$0\r\n\r\n" % (len(request[2]), request[2])
    return OK


class FloorProtocol(asyncio.Protocol):
    def __init__(self, store: dict):
        self.store = store

    def connection_made(self, transport):
        self.transport = transport
        self.reader = hiredis.Reader()

    def data_received(self, data):
        reader = self.reader
        store = self.store
        try:
            reader.feed(data)
            out = []
            request = reader.gets()
            while request is not False:
                command = request[0].upper()
                if command == b"GET":
                    value = store.get(request[1])
                    out.append(NULL if value is None else b"$%d\r\n%b\r\n" % (len(value), value))
                elif command == b"SET":
                    store[request[1]] = request[2]
                    out.append(OK)
                else:
                    out.append(other_reply(command, request))
                request = reader.gets()
        except (hiredis.ProtocolError, IndexError, AttributeError, TypeError):
            # Not RESP arrays of bulk strings, or too few arguments: not worth
            # an error reply in a measuring stick; drop the connection.
            self.transport.close()
            return
        self.transport.write(b"".join(out))


class VersionedFloorProtocol(FloorProtocol):
    """The floor with kvorum's per-key state: (value, version, clock tick) and bytes in use."""

    version_last = 0
    used_bytes = 0

    def data_received(self, data):
        reader = self.reader
        store = self.store
        tick = int(time.time() * 1000) // CLOCK_TICK_MS
        cls = VersionedFloorProtocol
        try:
            reader.feed(data)
            out = []
            request = reader.gets()
            while request is not False:
                command = request[0].upper()
                if command == b"GET":
                    key = request[1]
                    entry = store.get(key)
                    if entry is None:
                        out.append(NULL)
                    else:
                        value = entry[0]
                        if entry[2] != tick:
                            store[key] = (value, entry[1], tick)
                        out.append(b"$%d\r\n%b\r\n" % (len(value), value))
                elif command == b"SET":
                    key = request[1]
                    value = request[2]
                    old = store.get(key)
                    cls.version_last = version = cls.version_last + 1
                    if old is None:
                        cls.used_bytes += len(key) + len(value)
                    else:
                        cls.used_bytes += len(value) - len(old[0])
                    store[key] = (value, version, tick)
                    out.append(OK)
                else:
                    out.append(other_reply(command, request))
                request = reader.gets()
        except (hiredis.ProtocolError, IndexError, AttributeError, TypeError):
            self.transport.close()
            return
        self.transport.write(b"".join(out))


async def serve(port: int, versioned: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    store: dict = {}
    protocol = VersionedFloorProtocol if versioned else FloorProtocol
    server = await loop.create_server(lambda: protocol(store), "127.0.0.1", port)
    await stop
    server.close()  # not wait_closed(): since 3.12 it would wait for every client


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--versioned", action="store_true",
                   help="keep (value, version, clock tick) per key and the bytes in use, as kvorum does")
    args = p.parse_args()
    (asyncio.run if uvloop is None else uvloop.run)(serve(args.port, args.versioned))


if __name__ == "__main__":
    main()
