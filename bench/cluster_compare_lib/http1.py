"""A minimal asyncio HTTP/1.1 client: one keep-alive connection, one request at a time.

Why not a library: aiohttp is not installed here and httpx is not either; each
would be a new dependency of the benchmark only, and both spend noticeably more
client CPU per request than this does. The benchmark client shares two cores
with the servers, so a lean client keeps the load generator from being what is
measured. It speaks exactly what etcd's gRPC gateway needs: POST with a JSON
body, responses framed by Content-Length or chunked transfer encoding.
"""

from __future__ import annotations

import asyncio

HEADER_BYTES_MAX = 16 * 1024
BODY_BYTES_MAX = 4 * 1024 * 1024


class HttpError(Exception):
    """The server answered with something this client cannot use."""


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` as JSON to `path`; return (status, response body).

        Any failure drops the connection, so that the next request opens a fresh one.
        """
        if self.writer is None:
            await self._connect()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self.writer.write(head + body)
            return await self._read_response()
        except BaseException:
            await self.close()
            raise

    async def _read_response(self) -> tuple[int, bytes]:
        reader = self.reader
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as e:
            raise HttpError("response header too long") from e
        if len(head) > HEADER_BYTES_MAX:
            raise HttpError("response header too long")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            length = int(headers.get("content-length", "0"))
            if length > BODY_BYTES_MAX:
                raise HttpError(f"response body of {length} bytes")
            body = await reader.readexactly(length)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        chunks = []
        total = 0
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            total += size
            if total > BODY_BYTES_MAX:
                raise HttpError("chunked response body too long")
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers are expected
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
