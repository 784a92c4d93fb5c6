"""The admin HTTP port: health checks, Prometheus metrics and the dashboard.

Theory of operation
-------------------
A deliberately small HTTP/1.1 server on the node's own event loop (asyncio
streams; no framework), for operators' tools rather than clients: one
request per connection, answered with `Connection: close`. Only GET and HEAD
of the paths in ROUTES exist; a request carries no body. Everything is
bounded: the request head (REQUEST_HEAD_BYTES_MAX, else 431), the time to
send it (REQUEST_TIMEOUT_S, else the connection is dropped), the time to
write the answer (WRITE_TIMEOUT_S), and the connections served at once
(CONNECTIONS_MAX, past which a new one is closed at once).

It is off unless `admin-port` is set, and listens on `admin-bind`, loopback
by default: /metrics names every command and key counts, which is nobody
else's business. The views it serves are `kvorum.server.metrics`; the
dashboard page is `kvorum.server.dashboard`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from kvorum.server import dashboard, metrics
from kvorum.server.peer_transport import ListenError

if TYPE_CHECKING:
    from kvorum.server.state import ServerState

log = logging.getLogger("kvorum.admin")

REQUEST_HEAD_BYTES_MAX = 8192
REQUEST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
CONNECTIONS_MAX = 64

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}

# An answer: (status, content type, body).
Answer = tuple[int, str, bytes]


def _json(status: int, value) -> Answer:
    return status, "application/json", json.dumps(value).encode() + b"\n"


def _live(state: ServerState) -> Answer:
    return _json(200, {"status": "live"})


async def _ready(state: ServerState) -> Answer:
    ready, reason = await metrics.readiness_settled(state)
    return _json(200 if ready else 503, {"status": "ready" if ready else "not ready", "reason": reason})


def _metrics(state: ServerState) -> Answer:
    return 200, CONTENT_TYPE_LATEST, metrics.exposition(state.metrics_registry)


def _overview(state: ServerState) -> Answer:
    return _json(200, metrics.overview(state))


def _page(state: ServerState) -> Answer:
    return 200, "text/html; charset=utf-8", dashboard.PAGE


# A route answers at once, or (readiness) is a coroutine function that may wait a little.
ROUTES: dict[str, Callable[[ServerState], Answer | Awaitable[Answer]]] = {
    "/health/live": _live,
    "/health/ready": _ready,
    "/metrics": _metrics,
    "/api/overview": _overview,
    "/": _page,
}


class AdminServer:
    """Serves ROUTES for one node until `close()`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.server: asyncio.Server | None = None
        self.connections = 0
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        try:
            self.server = await asyncio.start_server(self._serve, host, port, limit=REQUEST_HEAD_BYTES_MAX,
                                                     reuse_address=True)
        except OSError as exc:
            raise ListenError.of(host, "admin-port", port, exc) from exc
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("admin HTTP on %s port %d (/health/live, /health/ready, /metrics, /)", host, self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= CONNECTIONS_MAX:
            writer.close()
            return
        self.connections += 1
        try:
            answer, head_only = await self._answer(reader)
            if answer is not None:
                writer.write(_encode(answer, head_only))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Answer | None, bool]:
        """The answer to the connection's request (None: drop it without one), and whether HEAD asked."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return _json(431, {"error": f"request head over {REQUEST_HEAD_BYTES_MAX} bytes"}), False
        except asyncio.IncompleteReadError:
            return None, False
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _json(400, {"error": "not an HTTP/1.x request line"}), False
        method, target, _version = parts
        path = target.split("?", 1)[0]
        route = ROUTES.get(path)
        if route is None:
            return _json(404, {"error": f"no such path: {path[:200]}", "paths": sorted(ROUTES)}), False
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "only GET and HEAD"}), False
        answer = route(self.state)
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer, method == "HEAD"


def _encode(answer: Answer, head_only: bool) -> bytes:
    status, content_type, body = answer
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode() + (b"" if head_only else body)
