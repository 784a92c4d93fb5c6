"""One-shot RESP commands over a plain socket, for setting clusters up (not for the load)."""

from __future__ import annotations

import socket

import hiredis

REPLY_TIMEOUT_S = 2.0
REPLY_BYTES_MAX = 1024 * 1024


def resp_call(port: int, *args: bytes):
    """Send one command to 127.0.0.1:port and return its parsed reply (errors as ReplyError objects)."""
    request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    reader = hiredis.Reader()
    received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S) as s:
        s.sendall(request)
        while True:
            data = s.recv(65536)
            if not data:
                raise ConnectionError(f"port {port} closed the connection before replying")
            received += len(data)
            if received > REPLY_BYTES_MAX:
                raise ValueError(f"reply from port {port} longer than {REPLY_BYTES_MAX} bytes")
            reader.feed(data)
            reply = reader.gets()
            if reply is not False:
                return reply
