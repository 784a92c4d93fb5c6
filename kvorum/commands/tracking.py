"""CLIENT TRACKING, CACHING, GETREDIR, TRACKINGINFO: client-side caching (Redis 7).

Connection commands; the tracking itself is `kvorum.server.tracking`. Options
and error texts follow Redis' clientCommand so that redis-py and other clients
see what they expect. docs/tracking.md has the guarantees.
"""

from __future__ import annotations

from kvorum.commands.connection import parse_int
from kvorum.commands.table import CommandContext, command
from kvorum.protocol.values import OK, SYNTAX, CommandError

# Prefixes one client may register in BCAST mode.
PREFIXES_PER_CLIENT_MAX = 1024


class ClientTracking:
    """One client's tracking options (CLIENT TRACKING ON ...)."""

    __slots__ = ("redirect", "bcast", "optin", "optout", "noloop", "prefixes", "caching", "redirect_broken")

    def __init__(self, redirect: int, bcast: bool, optin: bool, optout: bool, noloop: bool,
                 prefixes: list[bytes]):
        assert not (optin and optout)
        assert not prefixes or bcast
        self.redirect = redirect  # client id; 0 = the client itself
        self.bcast = bcast
        self.optin = optin
        self.optout = optout
        self.noloop = noloop
        self.prefixes = prefixes
        # CLIENT CACHING yes (True) / no (False) for the next command; None when not given.
        self.caching: bool | None = None
        self.redirect_broken = False

    def remembers(self) -> bool:
        """Whether the current command's keys go into the table."""
        if self.bcast:
            return False
        if self.optin:
            return self.caching is True
        if self.optout:
            return self.caching is not False
        return True

    def flags(self) -> list[str]:
        """CLIENT TRACKINGINFO flags."""
        flags = ["on"]
        for name, on in (("bcast", self.bcast), ("optin", self.optin), ("optout", self.optout),
                         ("caching-yes", self.caching is True), ("caching-no", self.caching is False),
                         ("noloop", self.noloop), ("broken_redirect", self.redirect_broken)):
            if on:
                flags.append(name)
        return flags


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _check_prefixes(existing: list[bytes], new: list[bytes]) -> None:
    """Prefixes of one client must not overlap (checkPrefixCollisionsOrReply)."""
    for i, prefix in enumerate(new):
        for other in existing:
            if prefix.startswith(other) or other.startswith(prefix):
                raise CommandError(f"ERR Prefix '{_text(prefix)}' overlaps with an existing prefix "
                                   f"'{_text(other)}'. Prefixes for a single client must not overlap.")
        for other in new[i + 1:]:
            if prefix.startswith(other) or other.startswith(prefix):
                raise CommandError(f"ERR Prefix '{_text(prefix)}' overlaps with another provided prefix "
                                   f"'{_text(other)}'. Prefixes for a single client must not overlap.")


# CLIENT TRACKING ON|OFF [REDIRECT client-id] [PREFIX prefix [PREFIX prefix ...]]
#   [BCAST] [OPTIN] [OPTOUT] [NOLOOP]
@command("tracking", container="client", arity=-3, flags="noscript loading stale", group="connection",
         summary="Controls server-assisted client-side caching for the connection.", since="6.0.0")
def client_tracking(ctx: CommandContext, argv: list[bytes]):
    client = ctx.client
    tracking = ctx.server.tracking
    redirect = 0
    bcast = optin = optout = noloop = False
    prefixes: list[bytes] = []
    j = 3
    while j < len(argv):
        option = argv[j].lower()
        more = j + 1 < len(argv)
        if option == b"redirect" and more:
            if redirect:
                raise CommandError("ERR A client can only redirect to a single other client")
            redirect = parse_int(argv[j + 1])
            if redirect not in ctx.server.clients:
                raise CommandError("ERR The client ID you want redirect to does not exist")
            j += 1
        elif option == b"bcast":
            bcast = True
        elif option == b"optin":
            optin = True
        elif option == b"optout":
            optout = True
        elif option == b"noloop":
            noloop = True
        elif option == b"prefix" and more:
            prefixes.append(argv[j + 1])
            j += 1
        else:
            raise CommandError(SYNTAX)
        j += 1
    mode = argv[2].lower()
    if mode == b"off":
        tracking.disable(client)
        return OK
    if mode != b"on":
        raise CommandError(SYNTAX)
    current = client.tracking
    if current is not None and current.bcast != bcast:
        raise CommandError("ERR You can't switch BCAST mode on/off before disabling tracking for this "
                           "client, and then re-enabling it with a different mode.")
    if bcast and (optin or optout):
        raise CommandError("ERR OPTIN and OPTOUT are not compatible with BCAST")
    if optin and optout:
        raise CommandError("ERR You can't use both OPTIN and OPTOUT")
    if current is not None and (current.optin != optin or current.optout != optout):
        raise CommandError("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this "
                           "client, and then re-enabling it with a different mode.")
    if prefixes and not bcast:
        raise CommandError("ERR PREFIX option requires BCAST mode to be enabled")
    existing = current.prefixes if current is not None else []
    _check_prefixes(existing, prefixes)
    if len(existing) + len(prefixes) > PREFIXES_PER_CLIENT_MAX:
        raise CommandError(f"ERR a client may track at most {PREFIXES_PER_CLIENT_MAX} prefixes")
    tracking.enable(client, ClientTracking(redirect, bcast, optin, optout, noloop, existing + prefixes))
    return OK


# CLIENT CACHING YES|NO
@command("caching", container="client", arity=3, flags="noscript loading stale", group="connection",
         summary="Instructs the server whether to track the keys in the next request.", since="6.0.0")
def client_caching(ctx: CommandContext, argv: list[bytes]):
    options = ctx.client.tracking
    if options is None:
        raise CommandError("ERR CLIENT CACHING can be called only when the client is in tracking mode "
                           "with OPTIN or OPTOUT mode enabled")
    answer = argv[2].lower()
    if answer == b"yes":
        if not options.optin:
            raise CommandError("ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.")
        options.caching = True
    elif answer == b"no":
        if not options.optout:
            raise CommandError("ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.")
        options.caching = False
    else:
        raise CommandError(SYNTAX)
    return OK


# CLIENT GETREDIR
@command("getredir", container="client", arity=2, flags="noscript loading stale", group="connection",
         summary="Returns the client ID to which the connection's tracking notifications are redirected.",
         since="6.0.0")
def client_getredir(ctx: CommandContext, argv: list[bytes]):
    options = ctx.client.tracking
    return -1 if options is None else options.redirect


# CLIENT TRACKINGINFO
@command("trackinginfo", container="client", arity=2, flags="noscript loading stale", group="connection",
         summary="Returns information about server-assisted client-side caching for the connection.",
         since="6.2.0")
def client_trackinginfo(ctx: CommandContext, argv: list[bytes]):
    options = ctx.client.tracking
    if options is None:
        return {"flags": ["off"], "redirect": -1, "prefixes": []}
    return {"flags": options.flags(), "redirect": options.redirect, "prefixes": list(options.prefixes)}
