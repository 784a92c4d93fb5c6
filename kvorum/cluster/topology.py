"""Who is in the cluster: node ids and their client and bus addresses, parsed from --peers.

`--peers n1@127.0.0.1:7001,n2@127.0.0.1:7002` names every voter of the one
partition with its RESP address; peer (bus) traffic goes to the client port
plus BUS_PORT_OFFSET, as in Redis Cluster, unless a peer is written
`id@host:port@busport`. Every node must be given the same list.
"""

from __future__ import annotations

from dataclasses import dataclass

BUS_PORT_OFFSET = 10000
NODES_MAX = 7  # voters of one partition; Raft groups larger than this only slow commits down


@dataclass(frozen=True, slots=True)
class NodeAddress:
    id: str
    host: str
    port: int  # RESP clients
    bus_port: int  # peer transport

    @property
    def client_addr(self) -> str:
        return f"{self.host}:{self.port}"


class TopologyError(ValueError):
    """A --peers value that does not describe a cluster (operator error)."""


def _port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise TopologyError(f"{what} {text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise TopologyError(f"{what} {port} is out of range")
    return port


def parse_peers(spec: str, bus_port_self: int = 0, node_id: str = "") -> dict[str, NodeAddress]:
    """Parse `id@host:port[@busport],...`; `bus_port_self` overrides this node's bus port."""
    nodes: dict[str, NodeAddress] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        pieces = item.split("@")
        if len(pieces) not in (2, 3) or not pieces[0]:
            raise TopologyError(f"peer {item!r} is not id@host:port[@busport]")
        node, addr = pieces[0], pieces[1]
        host, sep, port_text = addr.rpartition(":")
        if not sep or not host:
            raise TopologyError(f"peer {item!r} has no host:port")
        port = _port(port_text, "port")
        bus = _port(pieces[2], "bus port") if len(pieces) == 3 else port + BUS_PORT_OFFSET
        if node == node_id and bus_port_self:
            bus = bus_port_self
        if bus >= 65536:
            raise TopologyError(f"peer {item!r}: bus port {bus} is out of range; give one with @busport")
        if node in nodes:
            raise TopologyError(f"peer {node!r} is listed twice")
        nodes[node] = NodeAddress(node, host, port, bus)
    if len(nodes) > NODES_MAX:
        raise TopologyError(f"at most {NODES_MAX} nodes per partition, got {len(nodes)}")
    if node_id and nodes and node_id not in nodes:
        raise TopologyError(f"--node-id {node_id!r} is not in --peers")
    return nodes
