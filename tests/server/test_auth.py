"""requirepass, AUTH, HELLO AUTH, and protected mode."""

from __future__ import annotations

import socket

import pytest
import redis

from server_wire import read_reply, read_until_closed

PASSWORD = "s3cret"


@pytest.fixture
def locked(node_factory):
    return node_factory("--requirepass", PASSWORD)


@pytest.mark.parametrize("protocol", [3, 2])
def test_noauth_until_auth(locked, protocol):
    with locked.client(protocol=2) as r:
        with pytest.raises(redis.AuthenticationError):
            r.get("k")
    with locked.client(protocol=protocol, password=PASSWORD) as r:
        assert r.set("k", "v") is True
        assert r.get("k") == b"v"
    with locked.client(protocol=protocol, username="default", password=PASSWORD) as r:
        assert r.get("k") == b"v"


def test_noauth_error_text(locked):
    with locked.connect() as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        assert read_reply(sock) == b"-NOAUTH Authentication required.\r\n"
        sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n")
        assert read_reply(sock) == b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        sock.sendall(b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\ns3cret\r\n")
        assert read_reply(sock).startswith(b"-WRONGPASS")
        sock.sendall(b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$6\r\ns3cret\r\n")
        assert read_reply(sock) == b"+OK\r\n"
        sock.sendall(b"PING\r\n")
        assert read_reply(sock) == b"+PONG\r\n"


def test_hello_auth(locked):
    with locked.connect() as sock:
        sock.sendall(b"HELLO 3\r\n")
        assert read_reply(sock).startswith(b"-NOAUTH HELLO must be called with the client already authenticated")
        sock.sendall(b"HELLO 3 AUTH default s3cret SETNAME app\r\n")
        reply = read_reply(sock)
        while b"modules" not in reply:
            reply += read_reply(sock)
        assert reply.startswith(b"%7\r\n")
        sock.sendall(b"CLIENT GETNAME\r\n")
        assert read_reply(sock) == b"$3\r\napp\r\n"


def test_unauthenticated_clients_get_small_limits(locked):
    with locked.connect() as sock:
        sock.sendall(b"*20\r\n")
        assert read_until_closed(sock) == b"-ERR Protocol error: invalid multibulk length\r\n"


def test_auth_without_password_configured(kvorum_node):
    with kvorum_node.client() as r:
        with pytest.raises(redis.RedisError, match="AUTH <password> called without any password configured"):
            r.execute_command("AUTH", "x")
        assert r.execute_command("AUTH", "default", "anything") in (b"OK", True)


def test_config_set_requirepass(node_factory):
    node = node_factory()
    with node.client() as admin:
        assert admin.config_set("requirepass", PASSWORD) is True
        with node.client() as r:
            with pytest.raises(redis.AuthenticationError):
                r.ping()
        with node.client(password=PASSWORD) as r:
            assert r.ping() is True
        assert admin.ping() is True


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.skipif(_non_loopback_address() is None, reason="no non-loopback interface")
def test_protected_mode(node_factory):
    address = _non_loopback_address()
    node = node_factory("--bind", f"127.0.0.1 {address}")
    with socket.create_connection((address, node.port), timeout=10) as sock:
        sock.sendall(b"PING\r\n")
        reply = read_until_closed(sock)
    assert reply.startswith(b"-DENIED Redis is running in protected mode because protected mode is enabled")
    with node.client() as r:
        assert r.ping() is True
    open_node = node_factory("--bind", f"127.0.0.1 {address}", "--requirepass", PASSWORD)
    with redis.Redis(host=address, port=open_node.port, password=PASSWORD, socket_timeout=10) as r:
        assert r.ping() is True
    unprotected = node_factory("--bind", f"127.0.0.1 {address}", "--protected-mode", "no")
    with redis.Redis(host=address, port=unprotected.port, socket_timeout=10) as r:
        assert r.ping() is True
