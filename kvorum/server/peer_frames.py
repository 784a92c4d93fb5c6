"""Peer wire protocol: frames, the frame decoder and the handshake state table.

Theory of operation
-------------------
Nodes exchange consensus messages over TCP. This module is the sans-I/O half
of that link: it turns bytes into frames and frames into bytes, and it decides
whether a connection may carry messages. It owns no socket, no clock and no
event loop, so every rule here is tested by feeding it bytes.

A frame on the wire is a 4-byte big-endian body length followed by a msgpack
body. The body is a msgpack array whose first element is the `FrameKind`:

    HELLO    [1, version, cluster_id, sender_id, receiver_id]
    WELCOME  [2, version, node_id]
    REFUSE   [3, reason]
    BATCH    [4, [payload, payload, ...]]

Each TCP connection carries messages one way, from the node that dialed it
(the dialer) to the node that accepted it (the acceptor):

    dialer                                   acceptor
      | -- HELLO(version, cluster, me, you) -> |   checked before anything else
      | <- WELCOME(version, acceptor id) ----- |   or REFUSE(reason), then close
      | -- BATCH([payload, ...]) ------------> |   repeated; delivered in order
      | -- BATCH(...) -----------------------> |

The dialer sends no BATCH before the WELCOME arrives, and the acceptor
delivers no payload before it has accepted a HELLO. A HELLO from another
cluster or addressed to another node is refused, so two clusters never mix
even when their addresses overlap. Which frame may arrive in which state is
the table `_NEXT_STATE`; a frame missing from the table is the peer's fault
(`RemoteProtocolError`) and ends the connection.

Payloads are opaque bytes: this layer never looks inside a consensus message.

Limits
------
`frame_bytes_max` bounds the body of one frame, in bytes. The decoder checks
it as soon as a frame's 4-byte header is in, before buffering the body, so a
peer announcing a larger frame is treated as broken without the node
allocating for it. A single payload may be at most
`payload_bytes_max(frame_bytes_max)` bytes, the frame limit less the batch
envelope; the transport refuses a larger one with `LocalProtocolError`,
since the caller is at fault.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

import msgpack

PROTOCOL_VERSION = 1

HEADER_BYTES = 4
_HEADER = struct.Struct(">I")

# msgpack spends at most 5 bytes of header on one bin value (bin32), and at
# most 7 bytes on the batch envelope: fixarray(2) + the kind + array32 header.
PAYLOAD_OVERHEAD_BYTES_MAX = 5
BATCH_ENVELOPE_BYTES_MAX = 7

# Largest frame body accepted from a peer, in bytes. Large enough for a Raft
# append of many entries or a snapshot chunk; small enough that a corrupt or
# hostile length prefix cannot make the node buffer gigabytes.
FRAME_BYTES_MAX_DEFAULT = 16 * 1024 * 1024

# Identifiers (cluster id, node ids) are short names; a longer one is a
# protocol error rather than something to log in full.
IDENTIFIER_BYTES_MAX = 256
REFUSE_REASON_BYTES_MAX = 1024


def payload_bytes_max(frame_bytes_max: int) -> int:
    """Largest single payload that fits in one BATCH frame of `frame_bytes_max`."""
    return frame_bytes_max - BATCH_ENVELOPE_BYTES_MAX - PAYLOAD_OVERHEAD_BYTES_MAX


def batch_cost_bytes(payload_bytes: int) -> int:
    """Upper bound of the bytes one payload adds to a BATCH body."""
    return payload_bytes + PAYLOAD_OVERHEAD_BYTES_MAX


class RemoteProtocolError(Exception):
    """The peer broke the protocol: the connection must be closed."""


class LocalProtocolError(Exception):
    """The local caller asked for something the protocol cannot carry."""


class FrameKind(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    REFUSE = 3
    BATCH = 4


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of every connection, sent by the dialer."""

    version: int
    cluster_id: str
    sender_id: str
    receiver_id: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """The acceptor's answer to an accepted HELLO."""

    version: int
    node_id: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """The acceptor's answer to a refused HELLO; the acceptor then closes."""

    reason: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Payloads in the order the sender queued them."""

    payloads: list[bytes]


Frame = Union[Hello, Welcome, Refuse, Batch]


def encode_frame(frame: Frame) -> bytes:
    """Header plus msgpack body for any frame."""
    if isinstance(frame, Batch):
        body = msgpack.packb([FrameKind.BATCH, frame.payloads])
    elif isinstance(frame, Hello):
        body = msgpack.packb(
            [FrameKind.HELLO, frame.version, frame.cluster_id, frame.sender_id, frame.receiver_id]
        )
    elif isinstance(frame, Welcome):
        body = msgpack.packb([FrameKind.WELCOME, frame.version, frame.node_id])
    else:
        assert isinstance(frame, Refuse), frame
        body = msgpack.packb([FrameKind.REFUSE, frame.reason])
    return _HEADER.pack(len(body)) + body


def _is_identifier(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= IDENTIFIER_BYTES_MAX


def _parse_hello(body: list) -> Hello:
    if len(body) != 5 or type(body[1]) is not int or not all(map(_is_identifier, body[2:])):
        raise RemoteProtocolError("malformed HELLO frame")
    return Hello(body[1], body[2], body[3], body[4])


def _parse_welcome(body: list) -> Welcome:
    if len(body) != 3 or type(body[1]) is not int or not _is_identifier(body[2]):
        raise RemoteProtocolError("malformed WELCOME frame")
    return Welcome(body[1], body[2])


def _parse_refuse(body: list) -> Refuse:
    if len(body) != 2 or type(body[1]) is not str or len(body[1]) > REFUSE_REASON_BYTES_MAX:
        raise RemoteProtocolError("malformed REFUSE frame")
    return Refuse(body[1])


def _parse_batch(body: list) -> Batch:
    if len(body) != 2 or type(body[1]) is not list:
        raise RemoteProtocolError("malformed BATCH frame")
    payloads = body[1]
    for payload in payloads:
        if type(payload) is not bytes:
            raise RemoteProtocolError("BATCH frame holds a payload that is not bytes")
    return Batch(payloads)


_PARSERS = {
    FrameKind.HELLO: _parse_hello,
    FrameKind.WELCOME: _parse_welcome,
    FrameKind.REFUSE: _parse_refuse,
    FrameKind.BATCH: _parse_batch,
}


def decode_body(data: bytes | bytearray | memoryview) -> Frame:
    """One frame from its msgpack body (without the length header)."""
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise RemoteProtocolError(f"frame body is not valid msgpack: {error}") from None
    if type(body) is not list or not body or type(body[0]) is not int:
        raise RemoteProtocolError("frame body is not an array starting with a kind")
    parse = _PARSERS.get(body[0])
    if parse is None:
        raise RemoteProtocolError(f"unknown frame kind {body[0]}")
    return parse(body)


class FrameDecoder:
    """Reassembles frames from byte chunks of any size and boundary.

    `feed(chunk)` returns the frames completed by the chunk, in order; a
    partial frame stays buffered until the rest arrives. The buffer never
    holds more than one header plus `frame_bytes_max` bytes of body plus one
    chunk. After a `RemoteProtocolError` the decoder stays broken: every later
    `feed` raises again, because the byte stream has lost its framing.
    """

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        assert frame_bytes_max > BATCH_ENVELOPE_BYTES_MAX + PAYLOAD_OVERHEAD_BYTES_MAX
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[Frame]:
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += chunk
        frames: list[Frame] = []
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= HEADER_BYTES:
                (body_bytes,) = _HEADER.unpack_from(buffer, offset)
                if body_bytes > self.frame_bytes_max:
                    raise RemoteProtocolError(
                        f"frame of {body_bytes} bytes exceeds frame_bytes_max={self.frame_bytes_max}"
                    )
                if body_bytes == 0:
                    raise RemoteProtocolError("empty frame")
                body_start = offset + HEADER_BYTES
                body_end = body_start + body_bytes
                if body_end > end:
                    break
                frames.append(decode_body(buffer[body_start:body_end]))
                offset = body_end
        except RemoteProtocolError as error:
            self._error = error
            self._buffer = bytearray()
            raise
        del buffer[:offset]
        return frames


class Role(enum.Enum):
    DIALER = "dialer"
    ACCEPTOR = "acceptor"


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"  # acceptor, nothing received yet
    AWAIT_WELCOME = "await-welcome"  # dialer, HELLO sent
    SENDING = "sending"  # dialer, welcomed: may send BATCH frames
    RECEIVING = "receiving"  # acceptor, HELLO accepted: delivers BATCH frames
    CLOSED = "closed"  # refused or broken; nothing more is read or sent


# Which frame may arrive in which state, and the state it leads to:
# (state, kind of the frame received) -> next state. A received frame whose
# pair is missing is a protocol error. Two checks of a frame's contents can
# close the connection instead of following the table: `check_hello` (a
# refused HELLO leads to CLOSED, not RECEIVING) and `_check_welcome` (the
# WELCOME must come from the node dialed, in this protocol version).
_NEXT_STATE = {
    (State.AWAIT_HELLO, FrameKind.HELLO): State.RECEIVING,
    (State.AWAIT_WELCOME, FrameKind.WELCOME): State.SENDING,
    (State.AWAIT_WELCOME, FrameKind.REFUSE): State.CLOSED,
    (State.RECEIVING, FrameKind.BATCH): State.RECEIVING,
}

_FRAME_KIND = {
    Hello: FrameKind.HELLO,
    Welcome: FrameKind.WELCOME,
    Refuse: FrameKind.REFUSE,
    Batch: FrameKind.BATCH,
}


def check_hello(hello: Hello, cluster_id: str, node_id: str) -> str | None:
    """Why `hello` must be refused by node `node_id` of `cluster_id`, or None to accept."""
    if hello.version != PROTOCOL_VERSION:
        return f"protocol version {hello.version} is not {PROTOCOL_VERSION}"
    if hello.cluster_id != cluster_id:
        return f"cluster id {hello.cluster_id!r} is not {cluster_id!r}"
    if hello.receiver_id != node_id:
        return f"addressed to node {hello.receiver_id!r}, this is {node_id!r}"
    if hello.sender_id == node_id:
        return f"sender claims this node's own id {node_id!r}"
    return None


@dataclass(frozen=True, slots=True)
class HelloAccepted:
    """The acceptor took a HELLO: write `reply` (a WELCOME) and start delivering."""

    hello: Hello
    reply: bytes


@dataclass(frozen=True, slots=True)
class HelloRefused:
    """The acceptor refused a HELLO: write `reply` (a REFUSE), then close."""

    hello: Hello
    reason: str
    reply: bytes


Event = Union[HelloAccepted, HelloRefused, Welcome, Refuse, Batch]


class Connection:
    """The sans-I/O state of one peer connection, from one end.

    The dialer writes the bytes of `start()`, then feeds what it reads to
    `receive_data` until a `Welcome` (state SENDING) or a `Refuse` (state
    CLOSED) comes out; from then on `encode_batch` frames its payloads. The
    acceptor feeds what it reads to `receive_data`: the HELLO comes out as
    `HelloAccepted` or `HelloRefused` carrying the reply to write, and every
    later BATCH as a `Batch`.
    """

    def __init__(
        self,
        role: Role,
        node_id: str,
        cluster_id: str,
        peer_id: str | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        refuse_sender=None,
    ) -> None:
        """`refuse_sender(sender_id) -> reason | None`: the acceptor's own reason to refuse a
        sender whose HELLO is otherwise valid (a node removed from the cluster)."""
        assert (role is Role.DIALER) == (peer_id is not None), "only a dialer knows its peer up front"
        self.refuse_sender = refuse_sender
        self.role = role
        self.node_id = node_id
        self.cluster_id = cluster_id
        # Invariant: an acceptor learns peer_id from the HELLO, before any payload.
        self.peer_id = peer_id
        self.state = State.AWAIT_WELCOME if role is Role.DIALER else State.AWAIT_HELLO
        self.frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max)

    def start(self) -> bytes:
        """The dialer's HELLO."""
        assert self.role is Role.DIALER and self.state is State.AWAIT_WELCOME
        return encode_frame(Hello(PROTOCOL_VERSION, self.cluster_id, self.node_id, self.peer_id))

    def receive_data(self, chunk: bytes) -> list[Event]:
        """Events for the frames completed by `chunk`, each allowed by the state table.

        Raises `RemoteProtocolError` when the peer broke the protocol; the
        connection is then CLOSED and must be dropped.
        """
        if self.state is State.CLOSED:
            raise RemoteProtocolError("data received on a closed connection")
        try:
            frames = self._decoder.feed(chunk)
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise
        events: list[Event] = []
        for frame in frames:
            state = self.state
            next_state = _NEXT_STATE.get((state, _FRAME_KIND[type(frame)]))
            if next_state is None:
                self.state = State.CLOSED
                raise RemoteProtocolError(f"{type(frame).__name__} frame not allowed in state {state.value}")
            if isinstance(frame, Hello):
                event = self._answer_hello(frame)
                self.state = next_state if isinstance(event, HelloAccepted) else State.CLOSED
            else:
                if isinstance(frame, Welcome):
                    self._check_welcome(frame)
                event = frame
                self.state = next_state
            events.append(event)
            assert self.role is Role.ACCEPTOR or self.state is not State.RECEIVING
            assert self.role is Role.DIALER or self.state is not State.SENDING
            if self.state is State.CLOSED:
                break
        return events

    def _answer_hello(self, hello: Hello) -> HelloAccepted | HelloRefused:
        self.peer_id = hello.sender_id
        reason = check_hello(hello, self.cluster_id, self.node_id)
        if reason is None and self.refuse_sender is not None:
            reason = self.refuse_sender(hello.sender_id)
        if reason is not None:
            return HelloRefused(hello, reason, encode_frame(Refuse(reason[:REFUSE_REASON_BYTES_MAX])))
        return HelloAccepted(hello, encode_frame(Welcome(PROTOCOL_VERSION, self.node_id)))

    def _check_welcome(self, welcome: Welcome) -> None:
        if welcome.version != PROTOCOL_VERSION or welcome.node_id != self.peer_id:
            self.state = State.CLOSED
            raise RemoteProtocolError(
                f"WELCOME from {welcome.node_id!r} with protocol version {welcome.version};"
                f" dialed {self.peer_id!r} with {PROTOCOL_VERSION}"
            )

    def encode_batch(self, payloads: list[bytes]) -> bytes:
        """One BATCH frame.

        The caller keeps the sum of `batch_cost_bytes` of its payloads within
        `frame_bytes_max - BATCH_ENVELOPE_BYTES_MAX`; a frame over the limit
        raises `LocalProtocolError` rather than reach a peer that would drop
        the connection for it.
        """
        assert self.state is State.SENDING, self.state
        frame = encode_frame(Batch(payloads))
        if len(frame) - HEADER_BYTES > self.frame_bytes_max:
            raise LocalProtocolError(
                f"batch of {len(frame) - HEADER_BYTES} bytes exceeds frame_bytes_max={self.frame_bytes_max}"
            )
        return frame
