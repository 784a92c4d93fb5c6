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
groups' rosters say and gives it to the transport.
"""

from __future__ import annotations

import enum
import logging
import struct
from typing import Protocol

from kvorum.server.peer_transport import Address, PeerTransport, TransportLimits

log = logging.getLogger("kvorum.peers")

_HEADER = struct.Struct(">BH")
HEADER_BYTES = _HEADER.size
GROUP_ID_MAX = 0xFFFF


class PayloadKind(enum.IntEnum):
    ENGINE = 0  # a consensus message
    SNAPSHOT_CHUNK = 1  # part of a snapshot image, leader -> follower
    SNAPSHOT_ACK = 2  # how much of it arrived, follower -> leader


class GroupEndpoint(Protocol):
    def on_peer_payload(self, sender: str, kind: PayloadKind, body: memoryview) -> None: ...


def envelope(kind: PayloadKind, group_id: int, body: bytes) -> bytes:
    assert 0 <= group_id <= GROUP_ID_MAX
    return _HEADER.pack(kind, group_id) + body


class PeerHub:
    """Routes peer payloads between the process's transport and its groups."""

    def __init__(self, node_id: str, cluster_id: str, bind: Address,
                 limits: TransportLimits = TransportLimits()) -> None:
        self.node_id = node_id
        self.groups: dict[int, GroupEndpoint] = {}
        self.addresses: dict[str, Address] = {}
        self.unknown_group_drops = 0
        self.transport = PeerTransport(node_id, cluster_id, bind, {}, self._on_payload, limits)

    def register(self, group_id: int, group: GroupEndpoint) -> None:
        assert group_id not in self.groups, group_id
        self.groups[group_id] = group

    def set_addresses(self, addresses: dict[str, Address]) -> None:
        """The bus address of every node some group talks to (this node's own is ignored)."""
        if addresses != self.addresses:
            self.addresses = dict(addresses)
            self.transport.set_peers(self.addresses)

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
