"""The fault-injecting proxy itself, with plain sockets: pass, drop (black hole and reset), heal, HELLO routing."""

from __future__ import annotations

import socket
import threading

import pytest

from kvorum.server.peer_frames import NONCE_BYTES, PROTOCOL_VERSION, Connection, Hello, Role, encode_frame
from netproxy import ANY, RESET, NetProxy

TIMEOUT_S = 2.0


@pytest.fixture
def echo():
    """A threaded echo server on a free loopback port; closed with every connection at the end."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        threads = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                break
            conns.append(conn)
            t = threading.Thread(target=serve, args=(conn,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(TIMEOUT_S)

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        acceptor.join(TIMEOUT_S)
        assert not acceptor.is_alive()


@pytest.fixture
def proxy():
    with NetProxy() as p:
        yield p
    assert not p._thread.is_alive()


def dial(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)


def echoes(sock: socket.socket, data: bytes = b"ping") -> bool:
    """True if `data` comes back; False on a timeout, EOF or reset."""
    try:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(len(data) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == data
    except OSError:
        return False


def test_pass_forwards_both_ways(proxy, echo):
    port = proxy.add_link("a", "b", echo)
    with dial(port) as s:
        assert echoes(s, b"x" * 200_000)
    assert proxy.links[("a", "b")].connections == 1


def test_drop_closes_open_connections_and_blackholes_new_ones(proxy, echo):
    port = proxy.add_link("a", "b", echo)
    with dial(port) as old:
        assert echoes(old)
        proxy.drop([("a", "b")])
        assert proxy.cut_links() == [("a", "b")]
        assert not echoes(old)
    with dial(port) as new:  # accepted, but nothing comes back
        new.settimeout(0.3)
        assert not echoes(new)
        proxy.heal()
        new.settimeout(TIMEOUT_S)
        assert new.recv(1) == b""  # healing closes black-holed connections: the dialer redials
    with dial(port) as healed:
        assert echoes(healed)
    assert proxy.cut_links() == []


def test_drop_with_reset_closes_new_connections_at_once(proxy, echo):
    port = proxy.add_link("a", "b", echo)
    proxy.drop([("a", "b")], how=RESET)
    with dial(port) as s:
        assert not echoes(s)
    proxy.heal([("a", "b")])
    with dial(port) as s:
        assert echoes(s)


def test_links_are_directed(proxy, echo):
    ab = proxy.add_link("a", "b", echo)
    ba = proxy.add_link("b", "a", echo)
    proxy.drop([("a", "b")])
    with dial(ba) as s:
        assert echoes(s)
    with dial(ab) as s:
        s.settimeout(0.3)
        assert not echoes(s)
    proxy.split({"a"}, {"b"})
    assert proxy.cut_links() == [("a", "b"), ("b", "a")]
    proxy.heal()
    proxy.isolate("b")
    assert proxy.cut_links() == [("a", "b"), ("b", "a")]
    assert proxy.links[("a", "b")].cuts == 2 and proxy.links[("b", "a")].cuts == 2


def test_close_stops_listeners_and_thread(echo):
    proxy = NetProxy()
    port = proxy.add_link("a", "b", echo)
    open_conn = dial(port)
    assert echoes(open_conn)
    proxy.close()
    assert not proxy._thread.is_alive()
    assert not echoes(open_conn)
    open_conn.close()
    with pytest.raises(OSError):
        dial(port).close()


def test_a_connection_belongs_to_the_link_its_hello_names(proxy, echo):
    """A node that dials through another node's listener is cut with its own links."""
    ab = proxy.add_link("a", "b", echo)
    proxy.add_link("b", "a", echo)
    assert proxy.add_dialer("c") == [("c", "a"), ("c", "b")]
    hello = encode_frame(Hello(PROTOCOL_VERSION, "kvorum", "c", "b"))
    proxy.drop([("a", "b")])
    with dial(ab) as s:  # c, through a's listener: on link (c, b), which passes
        assert echoes(s, hello)
    proxy.heal()
    proxy.drop([("c", "b")])
    with dial(ab) as s:
        s.settimeout(0.3)
        assert not echoes(s, hello)
    assert proxy.links[("c", "b")].connections == 2 and proxy.links[("a", "b")].connections == 0
    with dial(ab) as s:  # not a HELLO, or one addressed elsewhere: the listener's link, which passes
        assert echoes(s, encode_frame(Hello(PROTOCOL_VERSION, "kvorum", "c", "a")))
    assert proxy.links[("a", "b")].connections == 1


def test_a_joined_nodes_one_listener_carries_every_link_into_it(proxy, echo):
    """Each connection to the listener is on the link its HELLO names; cutting one leaves the others."""
    proxy.add_link("a", "b", echo)
    proxy.add_link("b", "a", echo)
    port = proxy.add_node("c", echo)
    assert {("a", "c"), ("b", "c"), ("c", "a"), ("c", "b"), (ANY, "c")} <= set(proxy.links)
    from_a = encode_frame(Hello(PROTOCOL_VERSION, "kvorum", "a", "c"))
    from_b = encode_frame(Hello(PROTOCOL_VERSION, "kvorum", "b", "c"))
    proxy.split({"a"}, {"b", "c"})
    assert proxy.cut_links() == [("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")]
    with dial(port) as s:
        assert echoes(s, from_b)
    with dial(port) as s:
        s.settimeout(0.3)
        assert not echoes(s, from_a)
    proxy.heal()
    with dial(port) as s:
        assert echoes(s, from_a)
    assert proxy.links[("a", "c")].connections == 2 and proxy.links[("b", "c")].connections == 1
    assert proxy.add_node("d", echo) != port and ("c", "d") in proxy.links and ("d", "c") in proxy.links
    assert proxy.cuts() == 4


def test_a_hello_with_a_nonce_still_names_its_link(proxy, echo):
    """A dialer with a cluster secret opens with the same HELLO, plus its nonce."""
    ab = proxy.add_link("a", "b", echo)
    proxy.add_link("b", "a", echo)
    proxy.add_dialer("c")
    dialer = Connection(Role.DIALER, "c", "kvorum", "b", secret=b"s" * 32, nonce=b"n" * NONCE_BYTES)
    hello = dialer.start()
    proxy.drop([("c", "b")])
    with dial(ab) as s:
        s.settimeout(0.3)
        assert not echoes(s, hello)
    assert proxy.links[("c", "b")].connections == 1 and proxy.links[("a", "b")].connections == 0
