"""Fixtures for the client tests: one real kvorum node for the session, and kvorum clients of it.

The node is tests/server's `Node` (`python -m kvorum server` on a free port). `client_factory`
builds `kvorum.Client`s that are closed at the end of the test; the keyspace is emptied before
each test that asks for `node`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from node_process import Node  # noqa: E402

import kvorum  # noqa: E402


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


def url_of(node) -> str:
    return f"redis://{node.host}:{node.port}"


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


def require(node, *commands: str) -> None:
    """Skip when the node does not implement `commands` yet (the server side lands in steps).

    Each command is sent with no arguments: a known one answers with an arity error, an
    unknown one with "unknown command" (or "unknown subcommand" for CLIENT TRACKING).
    """
    missing = []
    with node.client() as admin:
        for command in commands:
            try:
                admin.execute_command(*command.split())
            except redis.ResponseError as error:
                if "unknown" in str(error).lower():
                    missing.append(command)
    if missing:
        pytest.skip(f"this kvorum has no {', '.join(missing)} yet")
