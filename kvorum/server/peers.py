"""The process's peer hub: one transport for every replica group, payloads routed by group id.

Theory of operation
-------------------
A process hosts replica groups; all of them talk to their peers over the
process's single `PeerTransport` (one TCP connection per peer and direction,
whatever the number of groups). Every payload on it is an envelope:

    kind (1 byte) | group id (2 bytes, big-endian) | body

`ENGINE` bodies are the group's consensus messages, encoded by its engine's
codec; other kinds (snapshot chunks and their acknowledgements) are the
group driver's own. The hub decodes only the envelope header and hands the
body to the group registered under that id; a payload for a group this
process does not host is counted and dropped (the sender may know of a group
before this node does).

Addresses are per node, not per group: the hub keeps the union of what its
groups' rosters say and gives it to the transport. So are removals: a node the
cluster removed is refused at the handshake ("node n3 was removed from this
cluster"), and a node that hears this about itself shuts down, even if it
never received the log entries that removed it (it was down or cut off then).
"""

from __future__ import annotations

import enum
import logging
import struct
from typing import Callable, Protocol

from kvorum.server.peer_frames import SECRET_BYTES_MAX, SECRET_BYTES_MIN
from kvorum.server.peer_transport import Address, PeerTransport, TransportLimits

log = logging.getLogger("kvorum.peers")

# The words of a refusal that tell a node it was removed (peers refuse its connections).
REMOVED_PREFIX = "node"
REMOVED_SUFFIX = "was removed from this cluster"

_HEADER = struct.Struct(">BH")
HEADER_BYTES = _HEADER.size
GROUP_ID_MAX = 0xFFFF


class SecretError(ValueError):
    """The cluster secret settings cannot be used; the message says why."""


def load_cluster_secret(secret: str, secret_file: str) -> bytes:
    """The cluster secret from `cluster-secret` or `cluster-secret-file`; b"" when neither is set.

    A file's one trailing newline is not part of the secret (editors and
    `echo` add it). Raises SecretError for both settings at once, an
    unreadable file, or a secret outside SECRET_BYTES_MIN..SECRET_BYTES_MAX.
    """
    if secret and secret_file:
        raise SecretError("give either cluster-secret or cluster-secret-file, not both")
    if secret_file:
        try:
            with open(secret_file, "rb") as f:
                # One byte over the limit, plus a newline, is enough to tell "too long".
                value = f.read(SECRET_BYTES_MAX + 3)
        except OSError as exc:
            raise SecretError(f"cannot read cluster-secret-file {secret_file}: {exc.strerror or exc}") from None
        value = value.removesuffix(b"\n").removesuffix(b"\r")
        source = f"cluster-secret-file {secret_file}"
    else:
        value = secret.encode()
        source = "cluster-secret"
    if value and not SECRET_BYTES_MIN <= len(value) <= SECRET_BYTES_MAX:
        raise SecretError(f"{source} must hold {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes")
    if secret_file and not value:
        raise SecretError(f"{source} is empty")
    return value


class PayloadKind(enum.IntEnum):
    ENGINE = 0  # a consensus message
    SNAPSHOT_CHUNK = 1  # part of a snapshot image, leader -> follower
    SNAPSHOT_ACK = 2  # how much of it arrived, follower -> leader


class GroupEndpoint(Protocol):
    def on_peer_payload(self, sender: str, kind: PayloadKind, body: memoryview) -> None: ...

    def on_link_up(self, peer: str) -> None:
        """This node's connection to `peer` (re)opened: resume what was in flight to it."""


def envelope(kind: PayloadKind, group_id: int, body: bytes) -> bytes:
    assert 0 <= group_id <= GROUP_ID_MAX
    return _HEADER.pack(kind, group_id) + body


class PeerHub:
    """Routes peer payloads between the process's transport and its groups."""

    def __init__(self, node_id: str, cluster_id: str, bind: Address,
                 limits: TransportLimits = TransportLimits(), secret: bytes = b"") -> None:
        self.node_id = node_id
        self.groups: dict[int, GroupEndpoint] = {}
        self.addresses: dict[str, Address] = {}
        self.unknown_group_drops = 0
        # Nodes removed from the cluster: their connections are refused, which tells them so.
        self.removed: set[str] = set()
        # Called when a peer refuses this node as removed: (the peer's reason).
        self.on_removed: Callable[[str], None] = lambda reason: None
        self.transport = PeerTransport(node_id, cluster_id, bind, {}, self._on_payload, limits,
                                       on_link_change=self._link_changed, refuse_sender=self._refuse,
                                       on_refused=self._refused, secret=secret)

    def register(self, group_id: int, group: GroupEndpoint) -> None:
        assert group_id not in self.groups, group_id
        self.groups[group_id] = group

    def set_addresses(self, addresses: dict[str, Address]) -> None:
        """The bus address of every node some group talks to (this node's own is ignored)."""
        if addresses != self.addresses:
            self.addresses = dict(addresses)
            self.transport.set_peers(self.addresses)

    def set_removed(self, removed: set[str]) -> None:
        """Refuse these nodes from now on, and close the connections they already have."""
        for node_id in removed - self.removed:
            self.transport.drop_inbound(node_id)
        self.removed = set(removed)

    def _link_changed(self, peer: str, connected: bool) -> None:
        if connected:
            for group in self.groups.values():
                group.on_link_up(peer)

    def _refuse(self, sender: str) -> str | None:
        if sender in self.removed:
            return f"{REMOVED_PREFIX} {sender} {REMOVED_SUFFIX}"
        return None

    def _refused(self, peer: str, reason: str) -> None:
        if reason == f"{REMOVED_PREFIX} {self.node_id} {REMOVED_SUFFIX}":
            self.on_removed(f"{peer} says node {self.node_id} {REMOVED_SUFFIX}")

    def send(self, to: str, kind: PayloadKind, group_id: int, body: bytes) -> None:
        self.transport.send(to, envelope(kind, group_id, body))

    def _on_payload(self, sender: str, payload: bytes) -> None:
        if len(payload) < HEADER_BYTES:
            log.warning("payload of %d bytes from %s has no envelope", len(payload), sender)
            return
        kind, group_id = _HEADER.unpack_from(payload)
        group = self.groups.get(group_id)
        if group is None:
            self.unknown_group_drops += 1
            return
        try:
            kind = PayloadKind(kind)
        except ValueError:
            log.warning("payload of unknown kind %d from %s", kind, sender)
            return
        group.on_peer_payload(sender, kind, memoryview(payload)[HEADER_BYTES:])

    async def start(self) -> None:
        await self.transport.start()

    async def stop(self) -> None:
        await self.transport.stop()
