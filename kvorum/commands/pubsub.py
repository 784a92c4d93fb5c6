"""Pub/sub commands: SUBSCRIBE UNSUBSCRIBE PSUBSCRIBE PUNSUBSCRIBE PUBLISH.

Connection commands (they use `ctx.client` and the node's `ctx.server.pubsub`,
see `kvorum.server.pubsub`). A (un)subscribe answers one message per channel,
as Redis does: RESP3 pushes, RESP2 arrays.
"""

from __future__ import annotations

from kvorum.commands.table import CommandContext, command
from kvorum.protocol.encoder import encode
from kvorum.protocol.values import CommandError, Push, RawReply

# Channels plus patterns one client may subscribe to.
SUBSCRIPTIONS_PER_CLIENT_MAX = 65536


def _confirmations(ctx: CommandContext, kind: str, names: list, pattern: bool, subscribe: bool) -> RawReply:
    client = ctx.client
    pubsub = ctx.server.pubsub
    parts = []
    for name in names:
        if name is not None:
            if subscribe:
                pubsub.subscribe(client, name, pattern)
            else:
                pubsub.unsubscribe(client, name, pattern)
        count = len(client.channels) + len(client.patterns)
        parts.append(encode(Push([kind, name, count]), client.resp3))
    return RawReply(b"".join(parts))


def _subscribe(ctx: CommandContext, argv: list[bytes], kind: str, pattern: bool) -> RawReply:
    client = ctx.client
    if len(client.channels) + len(client.patterns) + len(argv) - 1 > SUBSCRIPTIONS_PER_CLIENT_MAX:
        raise CommandError(f"ERR a client may hold at most {SUBSCRIPTIONS_PER_CLIENT_MAX} subscriptions")
    return _confirmations(ctx, kind, argv[1:], pattern, subscribe=True)


def _unsubscribe(ctx: CommandContext, argv: list[bytes], kind: str, pattern: bool) -> RawReply:
    client = ctx.client
    names = argv[1:] or sorted(client.patterns if pattern else client.channels) or [None]
    return _confirmations(ctx, kind, names, pattern, subscribe=False)


# SUBSCRIBE channel [channel ...]
@command("subscribe", arity=-2, flags="pubsub noscript loading stale", group="pubsub",
         summary="Listens for messages published to channels.", since="2.0.0",
         complexity="O(N) where N is the number of channels to subscribe to.")
def subscribe(ctx: CommandContext, argv: list[bytes]):
    return _subscribe(ctx, argv, "subscribe", pattern=False)


# UNSUBSCRIBE [channel [channel ...]]
@command("unsubscribe", arity=-1, flags="pubsub noscript loading stale", group="pubsub",
         summary="Stops listening to messages posted to channels.", since="2.0.0",
         complexity="O(N) where N is the number of channels to unsubscribe.")
def unsubscribe(ctx: CommandContext, argv: list[bytes]):
    return _unsubscribe(ctx, argv, "unsubscribe", pattern=False)


# PSUBSCRIBE pattern [pattern ...]
@command("psubscribe", arity=-2, flags="pubsub noscript loading stale", group="pubsub",
         summary="Listens for messages published to channels that match one or more patterns.",
         since="2.0.0", complexity="O(N) where N is the number of patterns to subscribe to.")
def psubscribe(ctx: CommandContext, argv: list[bytes]):
    return _subscribe(ctx, argv, "psubscribe", pattern=True)


# PUNSUBSCRIBE [pattern [pattern ...]]
@command("punsubscribe", arity=-1, flags="pubsub noscript loading stale", group="pubsub",
         summary="Stops listening to messages published to channels that match one or more patterns.",
         since="2.0.0", complexity="O(N) where N is the number of patterns to unsubscribe.")
def punsubscribe(ctx: CommandContext, argv: list[bytes]):
    return _unsubscribe(ctx, argv, "punsubscribe", pattern=True)


# PUBLISH channel message
@command("publish", arity=3, flags="pubsub loading stale fast may_replicate", group="pubsub",
         summary="Posts a message to a channel.", since="2.0.0",
         complexity="O(N+M) where N is the number of clients subscribed to the receiving channel and "
                    "M is the total number of subscribed patterns (by any client).")
def publish(ctx: CommandContext, argv: list[bytes]):
    return ctx.server.pubsub.publish(argv[1], argv[2])
