"""Fixtures for the black-box server tests: real nodes, redis-py clients (RESP3 and RESP2), raw sockets.

`kvorum_node` is one node for the whole session (default settings); tests that
need their own settings start nodes with `node_factory(*flags)`, which stops
them at the end of the test.
"""

from __future__ import annotations

import pytest

from node_process import Node


@pytest.fixture(scope="session")
def kvorum_node():
    node = Node()
    yield node
    node.stop()


@pytest.fixture
def node_factory():
    nodes: list[Node] = []

    def start(*flags: str, **kwargs) -> Node:
        node = Node(*flags, **kwargs)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
def r(request, kvorum_node):
    """A redis-py client of the shared node, in each protocol, on an empty keyspace."""
    client = kvorum_node.client(protocol=request.param)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def raw(kvorum_node):
    """A raw socket to the shared node."""
    sock = kvorum_node.connect()
    yield sock
    sock.close()
