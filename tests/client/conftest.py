"""Fixtures for the client tests: one real kvorum node for the session, and kvorum clients of it.

The node is tests/server's `Node` (`python -m kvorum server` on a free port). `client_factory`
builds `kvorum.Client`s that are closed at the end of the test; the keyspace is emptied before
each test that asks for `node`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from node_process import Node  # noqa: E402

import kvorum  # noqa: E402
from client_support import url_of  # noqa: E402


@pytest.fixture(scope="session")
def session_node():
    node = Node()
    yield node
    node.stop()


@pytest.fixture
def node(session_node):
    with session_node.client() as admin:
        admin.flushall()
    return session_node


@pytest.fixture
def client_factory(node):
    clients = []

    def make(near_cache=None, **kwargs) -> kvorum.Client:
        kwargs.setdefault("socket_timeout", 10)
        client = kvorum.Client(url_of(node), near_cache=near_cache, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
