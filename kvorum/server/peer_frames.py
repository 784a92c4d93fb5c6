"""Peer wire protocol: frames, the frame decoder and the handshake state table.

Theory of operation
-------------------
Nodes exchange consensus messages over TCP. This module is the sans-I/O half
of that link: it turns bytes into frames and frames into bytes, and it decides
whether a connection may carry messages. It owns no socket, no clock, no event
loop and no source of randomness (the transport passes nonces in), so every
rule here is tested by feeding it bytes.

A frame on the wire is a 4-byte big-endian body length followed by a msgpack
body. The body is a msgpack array whose first element is the `FrameKind`:

    HELLO      [1, version, cluster_id, sender_id, receiver_id, dialer_nonce]
    WELCOME    [2, version, node_id, acceptor_proof]
    REFUSE     [3, reason]
    BATCH      [4, [payload, payload, ...]]
    CHALLENGE  [5, acceptor_nonce]
    PROOF      [6, dialer_proof]

Each TCP connection carries messages one way, from the node that dialed it
(the dialer) to the node that accepted it (the acceptor). On a bus with a
cluster secret (the normal case) the handshake is a mutual challenge-response:

    dialer                                   acceptor
      | -- HELLO(version, cluster, me, you, -> |   checked before anything else
      |          dialer nonce)                 |
      | <- CHALLENGE(acceptor nonce) --------- |   or REFUSE(reason), then close
      | -- PROOF(dialer proof) --------------> |   checked against the secret
      | <- WELCOME(version, id, acceptor    -- |   or REFUSE(reason), then close
      |            proof)                      |
      | -- BATCH([payload, ...]) ------------> |   repeated; delivered in order

A proof is HMAC-SHA256 under the cluster secret over the role that makes it,
the cluster id, both node ids and both nonces (`handshake_proof`). Each side
draws its nonce fresh for the connection, so a recorded handshake replayed
later fails against the acceptor's new nonce, and the dialer, checking the
acceptor's proof before it sends a BATCH, never sends consensus messages to an
impostor on a peer's address. The role in the MAC keeps one side's proof from
being reflected as the other's. Proofs are compared with
`hmac.compare_digest`.

Without a secret (a bus for trusted networks only) the HELLO carries an empty
nonce, the acceptor answers WELCOME at once and WELCOME carries an empty
proof. A node with a secret and one without never talk: the acceptor refuses
the HELLO whose nonce says the dialer runs the other way, with a reason that
both sides log.

The dialer sends no BATCH before the WELCOME arrives, and the acceptor
delivers no payload before it has accepted the HELLO (and the PROOF, with a
secret). A HELLO from another cluster or addressed to another node is
refused, so two clusters never mix even when their addresses overlap. The
first frame stays a HELLO naming sender and receiver, which a proxy may read
to tell connections apart. Which frame may arrive in which state is the table
`_NEXT_STATE`; a frame missing from the table is the peer's fault
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
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Union

import msgpack

# 2: the HELLO carries a nonce, the WELCOME a proof; CHALLENGE and PROOF frames.
PROTOCOL_VERSION = 2

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

# Each side's nonce, in bytes: 256 bits, so that a nonce is never drawn twice.
NONCE_BYTES = 32
# An HMAC-SHA256 proof, in bytes.
PROOF_BYTES = hashlib.sha256().digest_size
# The cluster secret, in bytes: at least 128 bits of an operator's choosing,
# at most what any sane secret file holds.
SECRET_BYTES_MIN = 16
SECRET_BYTES_MAX = 4096

_DIALER_LABEL = b"kvorum bus dialer"
_ACCEPTOR_LABEL = b"kvorum bus acceptor"


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
    CHALLENGE = 5
    PROOF = 6


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of every connection, sent by the dialer."""

    version: int
    cluster_id: str
    sender_id: str
    receiver_id: str
    # NONCE_BYTES fresh bytes when the dialer has a cluster secret, empty without.
    nonce: bytes = b""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The acceptor's answer to an accepted HELLO."""

    version: int
    node_id: str
    # The acceptor's `handshake_proof` with a cluster secret, empty without.
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class Challenge:
    """The acceptor's answer to a HELLO it may accept once the dialer proves the secret."""

    nonce: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    """The dialer's `handshake_proof`, the answer to a CHALLENGE."""

    proof: bytes


@dataclass(frozen=True, slots=True)
class Refuse:
    """The acceptor's answer to a refused HELLO; the acceptor then closes."""

    reason: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Payloads in the order the sender queued them."""

    payloads: list[bytes]


Frame = Union[Hello, Welcome, Refuse, Batch, Challenge, Proof]


def encode_frame(frame: Frame) -> bytes:
    """Header plus msgpack body for any frame."""
    if isinstance(frame, Batch):
        body = msgpack.packb([FrameKind.BATCH, frame.payloads])
    elif isinstance(frame, Hello):
        body = msgpack.packb(
            [FrameKind.HELLO, frame.version, frame.cluster_id, frame.sender_id, frame.receiver_id, frame.nonce]
        )
    elif isinstance(frame, Welcome):
        body = msgpack.packb([FrameKind.WELCOME, frame.version, frame.node_id, frame.proof])
    elif isinstance(frame, Challenge):
        body = msgpack.packb([FrameKind.CHALLENGE, frame.nonce])
    elif isinstance(frame, Proof):
        body = msgpack.packb([FrameKind.PROOF, frame.proof])
    else:
        assert isinstance(frame, Refuse), frame
        body = msgpack.packb([FrameKind.REFUSE, frame.reason])
    return _HEADER.pack(len(body)) + body


def _is_identifier(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= IDENTIFIER_BYTES_MAX


def _is_nonce(value: object) -> bool:
    return type(value) is bytes and len(value) in (0, NONCE_BYTES)


def _is_proof(value: object) -> bool:
    return type(value) is bytes and len(value) in (0, PROOF_BYTES)


def _parse_hello(body: list) -> Hello:
    # A version 1 HELLO has no nonce; it parses so that the acceptor can refuse
    # it for its version, which tells an operator more than "malformed".
    if len(body) == 5:
        body = [*body, b""]
    if (len(body) != 6 or type(body[1]) is not int or not all(map(_is_identifier, body[2:5]))
            or not _is_nonce(body[5])):
        raise RemoteProtocolError("malformed HELLO frame")
    return Hello(body[1], body[2], body[3], body[4], body[5])


def _parse_welcome(body: list) -> Welcome:
    if len(body) != 4 or type(body[1]) is not int or not _is_identifier(body[2]) or not _is_proof(body[3]):
        raise RemoteProtocolError("malformed WELCOME frame")
    return Welcome(body[1], body[2], body[3])


def _parse_challenge(body: list) -> Challenge:
    if len(body) != 2 or type(body[1]) is not bytes or len(body[1]) != NONCE_BYTES:
        raise RemoteProtocolError("malformed CHALLENGE frame")
    return Challenge(body[1])


def _parse_proof(body: list) -> Proof:
    if len(body) != 2 or type(body[1]) is not bytes or len(body[1]) != PROOF_BYTES:
        raise RemoteProtocolError("malformed PROOF frame")
    return Proof(body[1])


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
    FrameKind.CHALLENGE: _parse_challenge,
    FrameKind.PROOF: _parse_proof,
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
    AWAIT_HELLO = "await-hello"  # acceptor without a secret, nothing received yet
    AWAIT_HELLO_SECRET = "await-hello-secret"  # acceptor with a secret, nothing received yet
    AWAIT_PROOF = "await-proof"  # acceptor, HELLO checked and CHALLENGE sent
    AWAIT_WELCOME = "await-welcome"  # dialer without a secret, HELLO sent
    AWAIT_CHALLENGE = "await-challenge"  # dialer with a secret, HELLO sent
    AWAIT_WELCOME_SECRET = "await-welcome-secret"  # dialer, PROOF sent; the WELCOME must prove too
    SENDING = "sending"  # dialer, welcomed: may send BATCH frames
    RECEIVING = "receiving"  # acceptor, HELLO (and PROOF) accepted: delivers BATCH frames
    CLOSED = "closed"  # refused or broken; nothing more is read or sent


# Which frame may arrive in which state, and the state it leads to:
# (state, kind of the frame received) -> next state. A received frame whose
# pair is missing is a protocol error: a dialer with a secret takes no WELCOME
# before its CHALLENGE, so an acceptor cannot skip proving itself. The checks
# of a frame's contents can close the connection instead of following the
# table: `_answer_hello` and `_answer_proof` (a refusal leads to CLOSED) and
# `_check_welcome` (the WELCOME must come from the node dialed, in this
# protocol version, with the acceptor's proof when there is a secret).
_NEXT_STATE = {
    (State.AWAIT_HELLO, FrameKind.HELLO): State.RECEIVING,
    (State.AWAIT_HELLO_SECRET, FrameKind.HELLO): State.AWAIT_PROOF,
    (State.AWAIT_PROOF, FrameKind.PROOF): State.RECEIVING,
    (State.AWAIT_WELCOME, FrameKind.WELCOME): State.SENDING,
    (State.AWAIT_WELCOME, FrameKind.REFUSE): State.CLOSED,
    (State.AWAIT_CHALLENGE, FrameKind.CHALLENGE): State.AWAIT_WELCOME_SECRET,
    (State.AWAIT_CHALLENGE, FrameKind.REFUSE): State.CLOSED,
    (State.AWAIT_WELCOME_SECRET, FrameKind.WELCOME): State.SENDING,
    (State.AWAIT_WELCOME_SECRET, FrameKind.REFUSE): State.CLOSED,
    (State.RECEIVING, FrameKind.BATCH): State.RECEIVING,
}

_FRAME_KIND = {
    Hello: FrameKind.HELLO,
    Welcome: FrameKind.WELCOME,
    Refuse: FrameKind.REFUSE,
    Batch: FrameKind.BATCH,
    Challenge: FrameKind.CHALLENGE,
    Proof: FrameKind.PROOF,
}

# Reasons a handshake is refused for the secret; both ends log them.
SECRET_MISSING = "this node requires the cluster secret and the dialer has none"
SECRET_UNEXPECTED = "the dialer uses a cluster secret and this node has none"
SECRET_MISMATCH = "proof of the cluster secret does not match"


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


def handshake_proof(
    secret: bytes, role: Role, cluster_id: str, dialer_id: str, acceptor_id: str,
    dialer_nonce: bytes, acceptor_nonce: bytes,
) -> bytes:
    """HMAC-SHA256 under `secret` by which the node in `role` proves it holds the secret.

    It binds everything a replay or a relay could vary: who proves (so the
    dialer's proof is not the acceptor's), the cluster, both node ids and both
    connection nonces. msgpack frames each field with its length, so no two
    different inputs share an encoding.
    """
    assert len(dialer_nonce) == NONCE_BYTES and len(acceptor_nonce) == NONCE_BYTES
    label = _DIALER_LABEL if role is Role.DIALER else _ACCEPTOR_LABEL
    message = msgpack.packb([label, cluster_id, dialer_id, acceptor_id, dialer_nonce, acceptor_nonce])
    return hmac.new(secret, message, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class HelloChallenged:
    """The acceptor, with a secret, took a HELLO: write `reply` (a CHALLENGE), deliver nothing yet."""

    hello: Hello
    reply: bytes


@dataclass(frozen=True, slots=True)
class HelloAccepted:
    """The acceptor took a HELLO (and its PROOF): write `reply` (a WELCOME) and start delivering."""

    hello: Hello
    reply: bytes


@dataclass(frozen=True, slots=True)
class HelloRefused:
    """The acceptor refused a HELLO or its PROOF: write `reply` (a REFUSE), then close."""

    hello: Hello
    reason: str
    reply: bytes


@dataclass(frozen=True, slots=True)
class Challenged:
    """The dialer answered a CHALLENGE: write `reply` (a PROOF) and wait for the WELCOME."""

    reply: bytes


Event = Union[HelloChallenged, HelloAccepted, HelloRefused, Challenged, Welcome, Refuse, Batch]


class Connection:
    """The sans-I/O state of one peer connection, from one end.

    The dialer writes the bytes of `start()`, then feeds what it reads to
    `receive_data`; with a secret a `Challenged` comes out first, whose reply
    it writes; then a `Welcome` (state SENDING) or a `Refuse` (state CLOSED);
    from then on `encode_batch` frames its payloads. The acceptor feeds what
    it reads to `receive_data`: the HELLO comes out as `HelloAccepted`,
    `HelloRefused` or, with a secret, `HelloChallenged`, each carrying the
    reply to write; with a secret the PROOF then comes out as `HelloAccepted`
    or `HelloRefused`; every later BATCH as a `Batch`.

    `secret` is the cluster secret (empty: no authentication, for trusted
    networks only). `nonce` is this end's NONCE_BYTES drawn fresh for this
    connection by the caller; it is required with a secret and unused without.
    """

    def __init__(
        self,
        role: Role,
        node_id: str,
        cluster_id: str,
        peer_id: str | None = None,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
        refuse_sender=None,
        secret: bytes = b"",
        nonce: bytes = b"",
    ) -> None:
        """`refuse_sender(sender_id) -> reason | None`: the acceptor's own reason to refuse a
        sender whose HELLO is otherwise valid (a node removed from the cluster); with a secret
        it is asked only once the sender proved the secret."""
        assert (role is Role.DIALER) == (peer_id is not None), "only a dialer knows its peer up front"
        assert not secret or SECRET_BYTES_MIN <= len(secret) <= SECRET_BYTES_MAX, len(secret)
        assert not secret or len(nonce) == NONCE_BYTES, "a secret needs a fresh nonce"
        self.refuse_sender = refuse_sender
        self.role = role
        self.node_id = node_id
        self.cluster_id = cluster_id
        # Invariant: an acceptor learns peer_id from the HELLO, before any payload.
        self.peer_id = peer_id
        self.secret = secret
        self.nonce = nonce if secret else b""
        # The acceptor keeps the HELLO it challenged until the PROOF arrives (its nonce and
        # sender are in the proof); the dialer keeps the acceptor's nonce from the CHALLENGE
        # until it checks the WELCOME's proof.
        self._hello: Hello | None = None
        self._peer_nonce = b""
        if role is Role.DIALER:
            self.state = State.AWAIT_CHALLENGE if secret else State.AWAIT_WELCOME
        else:
            self.state = State.AWAIT_HELLO_SECRET if secret else State.AWAIT_HELLO
        self.frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max)

    def start(self) -> bytes:
        """The dialer's HELLO."""
        assert self.role is Role.DIALER and self.state in (State.AWAIT_WELCOME, State.AWAIT_CHALLENGE)
        return encode_frame(Hello(PROTOCOL_VERSION, self.cluster_id, self.node_id, self.peer_id, self.nonce))

    def receive_data(self, chunk: bytes) -> list[Event]:
        """Events for the frames completed by `chunk`, each allowed by the state table.

        Raises `RemoteProtocolError` when the peer broke the protocol (or, for a
        dialer, failed to prove the secret); the connection is then CLOSED and
        must be dropped.
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
            elif isinstance(frame, Proof):
                event = self._answer_proof(frame)
            elif isinstance(frame, Challenge):
                event = self._answer_challenge(frame)
            else:
                if isinstance(frame, Welcome):
                    self._check_welcome(frame)
                event = frame
            self.state = State.CLOSED if isinstance(event, HelloRefused) else next_state
            events.append(event)
            assert self.role is Role.ACCEPTOR or self.state not in (State.RECEIVING, State.AWAIT_PROOF)
            assert self.role is Role.DIALER or self.state is not State.SENDING
            if self.state is State.CLOSED:
                break
        return events

    def _refuse(self, hello: Hello, reason: str) -> HelloRefused:
        return HelloRefused(hello, reason, encode_frame(Refuse(reason[:REFUSE_REASON_BYTES_MAX])))

    def _answer_hello(self, hello: Hello) -> HelloChallenged | HelloAccepted | HelloRefused:
        self.peer_id = hello.sender_id
        reason = check_hello(hello, self.cluster_id, self.node_id)
        if reason is None and bool(self.secret) != bool(hello.nonce):
            reason = SECRET_MISSING if self.secret else SECRET_UNEXPECTED
        if reason is not None:
            return self._refuse(hello, reason)
        if self.secret:
            self._hello = hello
            return HelloChallenged(hello, encode_frame(Challenge(self.nonce)))
        return self._welcome(hello, b"")

    def _answer_proof(self, frame: Proof) -> HelloAccepted | HelloRefused:
        hello = self._hello
        assert hello is not None and self.secret
        expected = handshake_proof(
            self.secret, Role.DIALER, self.cluster_id, hello.sender_id, self.node_id, hello.nonce, self.nonce
        )
        if not hmac.compare_digest(frame.proof, expected):
            return self._refuse(hello, SECRET_MISMATCH)
        proof = handshake_proof(
            self.secret, Role.ACCEPTOR, self.cluster_id, hello.sender_id, self.node_id, hello.nonce, self.nonce
        )
        return self._welcome(hello, proof)

    def _welcome(self, hello: Hello, proof: bytes) -> HelloAccepted | HelloRefused:
        reason = None if self.refuse_sender is None else self.refuse_sender(hello.sender_id)
        if reason is not None:
            return self._refuse(hello, reason)
        return HelloAccepted(hello, encode_frame(Welcome(PROTOCOL_VERSION, self.node_id, proof)))

    def _answer_challenge(self, challenge: Challenge) -> Challenged:
        self._peer_nonce = challenge.nonce
        proof = handshake_proof(
            self.secret, Role.DIALER, self.cluster_id, self.node_id, self.peer_id, self.nonce, challenge.nonce
        )
        return Challenged(encode_frame(Proof(proof)))

    def _check_welcome(self, welcome: Welcome) -> None:
        if welcome.version != PROTOCOL_VERSION or welcome.node_id != self.peer_id:
            self.state = State.CLOSED
            raise RemoteProtocolError(
                f"WELCOME from {welcome.node_id!r} with protocol version {welcome.version};"
                f" dialed {self.peer_id!r} with {PROTOCOL_VERSION}"
            )
        if not self.secret:
            if welcome.proof:
                self.state = State.CLOSED
                raise RemoteProtocolError("WELCOME carries a proof, but this node has no cluster secret")
            return
        expected = handshake_proof(
            self.secret, Role.ACCEPTOR, self.cluster_id, self.node_id, self.peer_id, self.nonce, self._peer_nonce
        )
        if not hmac.compare_digest(welcome.proof, expected):
            self.state = State.CLOSED
            raise RemoteProtocolError(f"peer {self.peer_id!r} did not prove the cluster secret: {SECRET_MISMATCH}")

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
