"""Helpers of the client tests (a module of its own: test files must not import `conftest`,
which names a different module in every test directory)."""

from __future__ import annotations

import pytest
import redis


def url_of(node) -> str:
    return f"redis://{node.host}:{node.port}"


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
