"""Wire helpers for the black-box server tests: raw-socket reads and unprocessed replies."""

from __future__ import annotations

import socket


def read_reply(sock: socket.socket, size: int = 65536) -> bytes:
    """Bytes until at least one full line arrives (or the peer closes)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(size)
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def call(client, *args):
    """Send a command and return the raw reply, without redis-py's reply callbacks."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


def text(value) -> str:
    """A reply as str, whichever way redis-py decoded it."""
    return value.decode() if isinstance(value, bytes) else value
