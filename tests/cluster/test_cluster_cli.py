"""The command line against real clusters: a node whose ports are already taken."""

from __future__ import annotations

import socket

# A node that cannot listen exits in well under a second; the rest is process start-up.
LISTEN_FAILURE_EXIT_S_MAX = 5.0


def holding(port: int) -> socket.socket:
    """A socket listening on `port`, as another program's would be."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may still have TIME_WAIT entries
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_node_exits_at_once_when_its_client_or_bus_port_is_taken(cluster):
    """While the others run a leader that counts it as a peer, n3 cannot listen on either port."""
    node = cluster.node("n3")
    node.stop()
    for what, port in (("port", node.port), ("bus port", node.bus_port)):
        with holding(port):
            node.start()
            assert node.process.wait(timeout=LISTEN_FAILURE_EXIT_S_MAX) == 1
        log = node.log_path.read_text()
        assert f"Error: cannot listen on 127.0.0.1 {what} {port}: Address already in use\n" in log
        assert "Traceback" not in log
