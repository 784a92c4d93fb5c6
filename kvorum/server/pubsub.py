"""Pub/sub: channels and patterns of one node (Redis' pubsub.c, without sharded channels).

Enough for tracking's RESP2 redirection (a connection subscribed to
`__redis__:invalidate`) and for applications that publish on one node.
Messages are not replicated or persisted: a subscriber receives what is
published on the node it is connected to while it is connected, as in Redis.

A client's subscriptions are `client.channels` and `client.patterns`; this
object keeps the reverse maps. Messages are written to the subscriber's
transport at once, a RESP3 push or a RESP2 array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvorum.protocol.encoder import encode
from kvorum.protocol.values import Push
from kvorum.store.glob import matcher

if TYPE_CHECKING:
    from kvorum.server.connection import Connection


class PubSub:
    def __init__(self) -> None:
        # channel -> subscribers; pattern -> subscribers.
        # Invariant: a client is in channels[c] iff c in client.channels (same for patterns).
        self.channels: dict[bytes, set[Connection]] = {}
        self.patterns: dict[bytes, set[Connection]] = {}

    def subscribe(self, client: Connection, channel: bytes, pattern: bool) -> bool:
        """Add a subscription; False when the client already had it."""
        mine = client.patterns if pattern else client.channels
        if channel in mine:
            return False
        mine.add(channel)
        subscribers = (self.patterns if pattern else self.channels).setdefault(channel, set())
        assert client not in subscribers
        subscribers.add(client)
        return True

    def unsubscribe(self, client: Connection, channel: bytes, pattern: bool) -> bool:
        """Drop a subscription; False when the client did not have it."""
        mine = client.patterns if pattern else client.channels
        if channel not in mine:
            return False
        mine.discard(channel)
        index = self.patterns if pattern else self.channels
        subscribers = index[channel]
        assert client in subscribers
        subscribers.discard(client)
        if not subscribers:
            del index[channel]
        return True

    def unsubscribe_all(self, client: Connection) -> None:
        for channel in list(client.channels):
            self.unsubscribe(client, channel, False)
        for pattern in list(client.patterns):
            self.unsubscribe(client, pattern, True)

    def publish(self, channel: bytes, message: bytes) -> int:
        """Send to every subscriber of the channel and of a matching pattern; how many received it."""
        received = 0
        for client in self.channels.get(channel, ()):
            client.write_push(encode(Push(["message", channel, message]), client.resp3))
            received += 1
        for pattern, clients in self.patterns.items():
            if matcher(pattern)(channel):
                for client in clients:
                    client.write_push(encode(Push(["pmessage", pattern, channel, message]), client.resp3))
                    received += 1
        return received
