"""A fault-injecting TCP proxy for cutting traffic between cluster nodes without a packet filter.

One `NetProxy` runs an asyncio loop in a background thread of the test
process. Each directed link (`src`, `dst`) between the nodes a cluster starts
with gets its own loopback listener that forwards to `dst`'s real address;
node `src` is told (through its `--peers` list) that `dst`'s bus port is that
listener, so everything `src` dials to `dst` goes through the link and
nothing else does. A node that joins later gets one listener for every link
into it (`add_node`): it binds its real bus port and announces the listener's
(`--cluster-announce-bus-port`), so every member dials it through the proxy.

kvorum's peer transport sends a node's messages only on connections that node
dialed (the reverse direction of such a connection carries just the WELCOME
or REFUSE of the handshake), so cutting link (A, B) cuts exactly what A sends
to B, and cutting both (A, B) and (B, A) separates the two nodes.

A connection belongs to the link its first frame names: the proxy reads the
dialer's HELLO (sender and receiver ids) before it forwards anything, so a
node that dials through a listener made for another node is still on its own
link, and a joined node's one listener carries the links from every node.
Dialing through another node's listener happens once address books travel: a
node that joined later gets its member list from the leader, and a snapshot
installed from the leader carries the leader's addresses. `add_dialer`
registers the links of a node that joined after the listeners were made;
`add_node` does that and registers the links into it. A connection whose
first frame is not a HELLO naming a registered link stays on the listener's
link ((`ANY`, node) for a joined node's listener).

Per link:

- `pass`: bytes flow both ways.
- `drop`: every open connection of the link is aborted at once, and new ones
  are black-holed (accepted, read and discarded, never forwarded: the dialer
  sees a peer that never answers its handshake) or, with `how="reset"`,
  closed as soon as their first frame is in. Once `drop` returns, no byte
  crosses the link.
- `heal`: back to `pass`; black-holed connections are closed so the dialer
  redials at once.

Control calls come from any thread and return when the loop has applied
them. `close()` (also on leaving the `with` block) stops the listeners,
aborts every connection and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from kvorum.server.peer_frames import HEADER_BYTES, Hello, RemoteProtocolError, decode_body

HOST = "127.0.0.1"
CONTROL_TIMEOUT_S = 10.0
READ_BYTES = 64 * 1024
DIAL_TIMEOUT_S = 2.0
# A first frame longer than this is not a HELLO (which holds a version, three short ids and a nonce).
HELLO_BYTES_MAX = 1024

PASS, DROP = "pass", "drop"
ANY = "*"  # the source of a joined node's listener link: connections whose HELLO names no registered link
BLACKHOLE, RESET = "blackhole", "reset"


class _Link:
    """One directed link: its state, its connections and, if it has one, its listener."""

    def __init__(self, src: str, dst: str, target: tuple[str, int]) -> None:
        self.src = src
        self.dst = dst
        self.target = target
        self.state = PASS
        self.how = BLACKHOLE
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()  # both ends of forwarded connections
        self.holes: set[asyncio.StreamWriter] = set()  # black-holed connections
        self.connections = 0  # accepted, for tests
        self.cuts = 0  # times this link went from pass to drop

    def abort(self, writers: set[asyncio.StreamWriter]) -> None:
        for writer in list(writers):
            writer.transport.abort()
        writers.clear()


class NetProxy:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.links: dict[tuple[str, str], _Link] = {}
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._thread.start()
        self._closed = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CONTROL_TIMEOUT_S)

    def __enter__(self) -> NetProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Links.

    def add_link(self, src: str, dst: str, target: tuple[str, int]) -> int:
        """Listen for link (src, dst), forwarding to `target`; returns the listener's port."""
        assert (src, dst) not in self.links, (src, dst)
        link = self.links[(src, dst)] = _Link(src, dst, target)
        return self._call(self._listen(link))

    async def _listen(self, link: _Link) -> int:
        link.server = await asyncio.start_server(lambda r, w: self._accepted(link, r, w), HOST, 0)
        link.port = link.server.sockets[0].getsockname()[1]
        return link.port

    def add_dialer(self, src: str) -> list[tuple[str, str]]:
        """Links from `src`, a node that joined after the listeners were made, to every node they lead to.

        `src` dials through whichever listeners its address book names (it got
        the book from another node); its HELLO puts each connection on link
        (src, dst). Returns the links added.
        """
        targets = self._targets()
        added = [(src, dst) for dst in sorted(targets) if dst != src and (src, dst) not in self.links]
        for pair in added:
            self.links[pair] = _Link(*pair, targets[pair[1]])
        return added

    def add_node(self, node: str, target: tuple[str, int]) -> int:
        """One listener for every link into `node` (a node that joins), forwarding to `target`; its port.

        Registers link (src, node) for every node the proxy knows, all served by
        that listener (each connection's HELLO names its link), and `node`'s own
        links out (`add_dialer`). `node` announces the port as its bus port.
        """
        assert node != ANY and not any(node in pair for pair in self.links), node
        sources = sorted({end for pair in self.links for end in pair} - {ANY})
        listener = self.links[(ANY, node)] = _Link(ANY, node, target)
        port = self._call(self._listen(listener))
        for src in sources:
            self.links[(src, node)] = _Link(src, node, target)
        self.add_dialer(node)
        return port

    def _targets(self) -> dict[str, tuple[str, int]]:
        """Every node a listener leads to: its real address."""
        return {link.dst: link.target for link in list(self.links.values()) if link.server is not None}

    def port(self, src: str, dst: str) -> int:
        return self.links[(src, dst)].port

    def node_links(self) -> list[_Link]:
        """The links between nodes (not the listener links of joined nodes, which carry no node's traffic)."""
        return [link for link in self.links.values() if link.src != ANY]

    # Faults.

    def drop(self, pairs: Iterable[tuple[str, str]], how: str = BLACKHOLE) -> None:
        """Cut the directed links `pairs` (see the module doc for `how`)."""
        assert how in (BLACKHOLE, RESET), how
        self._call(self._set([self.links[p] for p in pairs], DROP, how))

    def heal(self, pairs: Iterable[tuple[str, str]] | None = None) -> None:
        """Let traffic pass again on `pairs`, or on every link."""
        links = list(self.links.values()) if pairs is None else [self.links[p] for p in pairs]
        self._call(self._set(links, PASS, BLACKHOLE))

    async def _set(self, links: list[_Link], state: str, how: str) -> None:
        for link in links:
            if state == DROP and link.state == PASS:
                link.cuts += 1
            link.state, link.how = state, how
            link.abort(link.writers if state == DROP else link.holes)

    def isolate(self, node: str, how: str = BLACKHOLE) -> None:
        """Cut `node` from every other node, both ways."""
        self.drop([p for p in self.links if node in p], how)

    def split(self, *groups: Iterable[str], how: str = BLACKHOLE) -> None:
        """Cut every link between nodes of different groups, both ways."""
        side = {node: i for i, group in enumerate(groups) for node in group}
        self.drop([(a, b) for a, b in self.links if a != ANY and side.get(a) != side.get(b)], how)

    def cut_links(self) -> list[tuple[str, str]]:
        return sorted(p for p, link in self.links.items() if link.state == DROP)

    def cuts(self) -> int:
        """Times a link between nodes went from pass to drop."""
        return sum(link.cuts for link in self.node_links())

    # Forwarding.

    def _accepted(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self.loop.create_task(self._serve(link, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _first_frame(self, listener: _Link, reader: asyncio.StreamReader) -> tuple[_Link, bytes]:
        """The link the dialer's first frame names (else the listener's), and the bytes read."""
        head = b""
        try:
            head = await reader.readexactly(HEADER_BYTES)
            body_bytes = int.from_bytes(head, "big")
            if not 0 < body_bytes <= HELLO_BYTES_MAX:
                return listener, head
            body = await reader.readexactly(body_bytes)
        except asyncio.IncompleteReadError as eof:  # the dialer closed first: forward what came
            return listener, head + eof.partial
        try:
            frame = decode_body(body)
        except RemoteProtocolError:
            return listener, head + body
        link = listener
        if isinstance(frame, Hello) and frame.receiver_id == listener.dst:
            link = self.links.get((frame.sender_id, frame.receiver_id), listener)
        return link, head + body

    async def _serve(self, listener: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            link, first = await self._first_frame(listener, reader)
        except OSError:
            writer.transport.abort()
            return
        link.connections += 1
        if link.state == DROP:
            await self._hole(link, reader, writer)
            return
        link.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*link.target), DIAL_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            link.writers.discard(writer)
            writer.transport.abort()
            return
        if writer not in link.writers:  # the link was cut while dialing
            up_writer.transport.abort()
            return
        link.writers.add(up_writer)
        up_writer.write(first)
        await asyncio.gather(self._pump(link, reader, up_writer), self._pump(link, up_reader, writer))
        for w in (writer, up_writer):
            link.writers.discard(w)
            w.transport.abort()

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(READ_BYTES):
                if writer not in link.writers:
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        if writer in link.writers and writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()

    async def _hole(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if link.how == RESET:
            writer.transport.abort()
            return
        link.holes.add(writer)
        try:
            while await reader.read(READ_BYTES):
                if writer not in link.holes:
                    break
        except OSError:
            pass
        link.holes.discard(writer)
        writer.transport.abort()

    # Teardown.

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CONTROL_TIMEOUT_S)
            self.loop.close()

    async def _shutdown(self) -> None:
        for link in self.links.values():
            if link.server is not None:
                link.server.close()
            link.abort(link.writers)
            link.abort(link.holes)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CONTROL_TIMEOUT_S)
        for link in self.links.values():
            if link.server is not None:
                await link.server.wait_closed()


def proxied_peers(cluster, proxy: NetProxy) -> None:
    """Route every peer link of `cluster` through `proxy`, before its nodes start.

    Each node keeps its own entry (its real bus port, which it listens on); the
    other nodes' bus ports in its --peers list are the listeners of its
    outgoing links. Client ports are untouched, so -MOVED still names them.
    """
    for src, dst in itertools.permutations(cluster.nodes, 2):
        proxy.add_link(src.id, dst.id, (HOST, dst.bus_port))
    for node in cluster.nodes:
        node.peers = ",".join(
            f"{n.id}@{HOST}:{n.port}@{n.bus_port if n is node else proxy.port(node.id, n.id)}"
            for n in cluster.nodes)


@contextlib.contextmanager
def partitionable_cluster(directory: Path, **kwargs) -> Iterator[tuple[object, NetProxy]]:
    """A started `LocalCluster` (3 nodes unless `size` says otherwise) whose peer links go through one `NetProxy`.

    Nodes and proxy are torn down on exit, also when the body or the start fails.
    """
    from harness import LocalCluster

    with NetProxy() as proxy:
        cluster = LocalCluster(directory, **kwargs)
        try:
            proxied_peers(cluster, proxy)
            cluster.start()
            yield cluster, proxy
        finally:
            cluster.stop()


def direct_links(cluster) -> list[tuple[str, str]]:
    """Links (src, dst) between live members that bypass the proxy: src's address book has dst's own bus port.

    Only a node the cluster started with can be dialed that way: its own entry
    in its --peers list is its real bus port (the one it binds), and a node
    that copies its address book (a joining node's member list comes from the
    leader, and so do the addresses in an installed snapshot) copies that
    entry. A node that joined announced a proxy listener, so every member
    dials it through the proxy.
    """
    real = {n.id: n.bus_port for n in cluster.nodes}
    direct = []
    for node in cluster.nodes:
        if not node.alive or node.paused:
            continue
        with node.client(socket_timeout=2, decode_responses=True) as r:
            rows = r.execute_command("CLUSTER", "MEMBERS")
        direct += [(node.id, row[0]) for row in rows if row[0] != node.id and real.get(row[0]) == int(row[3])]
    return sorted(direct)
