"""Connection commands: PING ECHO QUIT RESET HELLO AUTH SELECT CLIENT.

These act on the connection (`ctx.client`) and may read the server
(`ctx.server`); none touches the keyspace.
"""

from __future__ import annotations

import hmac

from kvorum.commands.table import CommandContext, command, container
from kvorum.protocol.parser import parse_strict_int
from kvorum.protocol.values import NOT_INTEGER, OK, PONG, SYNTAX, CommandError, SimpleString, Verbatim

# redis-py enables its client-side cache only for "redis" >= 7.4.0 (DESIGN.md §4).
SERVER_NAME = "redis"
REDIS_VERSION = "7.4.0"

WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
HELLO_NOAUTH = (
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO "
    "<proto> AUTH <user> <pass> option can be used to authenticate the client and select the "
    "RESP protocol version at the same time"
)
BAD_CLIENT_NAME = "ERR Client names cannot contain spaces, newlines or special characters."
DEFAULT_USER = b"default"


def parse_int(arg: bytes, error: str = NOT_INTEGER) -> int:
    """A 64-bit integer as Redis' string2ll reads it, or CommandError(error)."""
    value = parse_strict_int(arg)
    if value is None:
        raise CommandError(error)
    return value


def password_ok(server, username: bytes, password: bytes) -> bool:
    """The default user is the only user; it takes any password while none is set."""
    if username != DEFAULT_USER:
        return False
    required = server.settings.requirepass
    if not required:
        return True
    return hmac.compare_digest(password, required.encode())


def valid_client_name(name: bytes) -> bool:
    return all(0x21 <= c <= 0x7E for c in name)


# PING [message]
@command("ping", arity=-1, flags="fast", group="connection", summary="Returns the server's liveliness response.")
def ping(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 2:
        raise CommandError("ERR wrong number of arguments for 'ping' command")
    return PONG if len(argv) == 1 else argv[1]


# ECHO message
@command("echo", arity=2, flags="fast", group="connection", summary="Returns the given string.")
def echo(ctx: CommandContext, argv: list[bytes]):
    return argv[1]


# QUIT
@command("quit", arity=-1, flags="noscript loading stale fast no_auth allow_busy", group="connection",
         summary="Closes the connection.")
def quit_(ctx: CommandContext, argv: list[bytes]):
    ctx.client.close_after_reply = True
    return OK


# RESET
@command("reset", arity=1, flags="noscript loading stale fast no_auth allow_busy unwatches", group="connection",
         summary="Resets the connection.", since="6.2.0")
def reset(ctx: CommandContext, argv: list[bytes]):
    client = ctx.client
    client.multi = None
    client.multi_failed = False
    ctx.server.unwatch_all(client)
    ctx.server.tracking.disable(client)
    ctx.server.pubsub.unsubscribe_all(client)
    client.db_index = 0
    client.resp3 = False
    client.name = b""
    client.no_evict = False
    client.set_authenticated(not ctx.server.auth_required())
    return SimpleString("RESET")


# HELLO [protover [AUTH username password] [SETNAME clientname]]
@command("hello", arity=-1, flags="noscript loading stale fast no_auth allow_busy", group="connection",
         summary="Handshakes with the Redis server.", since="6.0.0")
def hello(ctx: CommandContext, argv: list[bytes]):
    client = ctx.client
    version = 0
    if len(argv) >= 2:
        version = parse_int(argv[1], "ERR Protocol version is not an integer or out of range")
        if version < 2 or version > 3:
            raise CommandError("NOPROTO unsupported protocol version")
    credentials = None
    name = None
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        more = len(argv) - 1 - i
        if option == b"auth" and more >= 2:
            credentials = (argv[i + 1], argv[i + 2])
            i += 3
        elif option == b"setname" and more >= 1:
            name = argv[i + 1]
            i += 2
        else:
            raise CommandError(f"ERR Syntax error in HELLO option '{argv[i].decode('utf-8', 'replace')}'")
    if credentials is not None:
        if not password_ok(ctx.server, *credentials):
            raise CommandError(WRONGPASS)
        client.set_authenticated(True)
    if not client.authenticated:
        raise CommandError(HELLO_NOAUTH)
    if name is not None:
        if not valid_client_name(name):
            raise CommandError(BAD_CLIENT_NAME)
        client.name = name
    if version:
        client.resp3 = version == 3
    return {
        "server": SERVER_NAME,
        "version": REDIS_VERSION,
        "proto": 3 if client.resp3 else 2,
        "id": client.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }


# AUTH [username] password
@command("auth", arity=-2, flags="noscript loading stale fast no_auth allow_busy", group="connection",
         summary="Authenticates the connection.")
def auth(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    if len(argv) == 2:
        if not ctx.server.auth_required():
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the default user. "
                "Are you sure your configuration is correct?"
            )
        username, password = DEFAULT_USER, argv[1]
    else:
        username, password = argv[1], argv[2]
    if not password_ok(ctx.server, username, password):
        raise CommandError(WRONGPASS)
    ctx.client.set_authenticated(True)
    return OK


# SELECT index
@command("select", arity=2, flags="loading stale fast", group="connection",
         summary="Changes the selected database.")
def select(ctx: CommandContext, argv: list[bytes]):
    index = parse_int(argv[1], "ERR invalid DB index")
    if index != 0:
        raise CommandError("ERR DB index is out of range")
    ctx.client.db_index = 0
    return OK


container("client", group="connection", summary="A container for client connection commands.",
          since="2.4.0")


# CLIENT ID
@command("id", container="client", arity=2, flags="noscript loading stale", group="connection",
         summary="Returns the unique client ID of the connection.", since="5.0.0")
def client_id(ctx: CommandContext, argv: list[bytes]):
    return ctx.client.id


# CLIENT SETNAME connection-name
@command("setname", container="client", arity=3, flags="noscript loading stale", group="connection",
         summary="Sets the connection name.", since="2.6.9")
def client_setname(ctx: CommandContext, argv: list[bytes]):
    if not valid_client_name(argv[2]):
        raise CommandError(BAD_CLIENT_NAME)
    ctx.client.name = argv[2]
    return OK


# CLIENT GETNAME
@command("getname", container="client", arity=2, flags="noscript loading stale", group="connection",
         summary="Returns the name of the connection.", since="2.6.9")
def client_getname(ctx: CommandContext, argv: list[bytes]):
    return ctx.client.name or None


# CLIENT SETINFO <LIB-NAME libname | LIB-VER libver>
@command("setinfo", container="client", arity=4, flags="noscript loading stale", group="connection",
         summary="Sets information specific to the client or connection.", since="7.2.0")
def client_setinfo(ctx: CommandContext, argv: list[bytes]):
    attribute = argv[2].lower()
    value = argv[3]
    if attribute not in (b"lib-name", b"lib-ver"):
        raise CommandError(f"ERR Unrecognized option '{argv[2].decode('utf-8', 'replace')}'")
    if not valid_client_name(value) and value:
        raise CommandError(f"ERR {attribute.decode()} cannot contain spaces, newlines or special characters.")
    if attribute == b"lib-name":
        ctx.client.lib_name = value
    else:
        ctx.client.lib_ver = value
    return OK


# CLIENT NO-EVICT ON|OFF
@command("no-evict", container="client", arity=3, flags="admin noscript loading stale", group="connection",
         summary="Sets the client eviction mode of the connection.", since="7.0.0")
def client_no_evict(ctx: CommandContext, argv: list[bytes]):
    mode = argv[2].lower()
    if mode not in (b"on", b"off"):
        raise CommandError(SYNTAX)
    ctx.client.no_evict = mode == b"on"
    return OK


def client_flags(client) -> str:
    flags = ""
    if client.multi is not None:
        flags += "x"
    if client.no_evict:
        flags += "e"
    if client.close_after_reply:
        flags += "c"
    if client.channels or client.patterns:
        flags += "P"
    tracking = client.tracking
    if tracking is not None:
        flags += "t"
        if tracking.bcast:
            flags += "B"
        if tracking.redirect_broken:
            flags += "R"
    return flags or "N"


def client_line(client, now_ms: int) -> str:
    """One CLIENT LIST / CLIENT INFO line, in Redis 7's field order."""
    multi = -1 if client.multi is None else len(client.multi)
    redirect = -1 if client.tracking is None else client.tracking.redirect
    return (
        f"id={client.id} addr={client.addr} laddr={client.laddr} fd={client.fd} "
        f"name={client.name.decode('utf-8', 'replace')} age={(now_ms - client.created_ms) // 1000} "
        f"idle={(now_ms - client.last_ms) // 1000} flags={client_flags(client)} db={client.db_index} "
        f"sub={len(client.channels)} psub={len(client.patterns)} ssub=0 multi={multi} watch={len(client.watched)} "
        f"qbuf={client.parser.buffered_bytes()} qbuf-free=0 "
        f"argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={client.output_buffer_bytes()} "
        f"tot-mem=0 events=r cmd={client.last_command.decode('utf-8', 'replace').lower()} user=default "
        f"redir={redirect} resp={3 if client.resp3 else 2} lib-name={client.lib_name.decode('utf-8', 'replace')} "
        f"lib-ver={client.lib_ver.decode('utf-8', 'replace')}\n"
    )


# CLIENT INFO
@command("info", container="client", arity=2, flags="noscript loading stale", group="connection",
         summary="Returns information about the connection.", since="6.2.0")
def client_info(ctx: CommandContext, argv: list[bytes]):
    return Verbatim(client_line(ctx.client, ctx.now_ms))


# CLIENT LIST [TYPE NORMAL|MASTER|REPLICA|PUBSUB] [ID client-id [client-id ...]]
@command("list", container="client", arity=-2, flags="admin noscript loading stale", group="connection",
         summary="Lists open connections.", since="2.4.0")
def client_list(ctx: CommandContext, argv: list[bytes]):
    clients = list(ctx.server.clients.values())
    i = 2
    while i < len(argv):
        option = argv[i].lower()
        if option == b"type" and i + 1 < len(argv):
            kind = argv[i + 1].lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                raise CommandError(f"ERR Unknown client type '{argv[i + 1].decode('utf-8', 'replace')}'")
            if kind != b"normal":
                clients = []
            i += 2
        elif option == b"id" and i + 1 < len(argv):
            ids = {parse_int(arg, "ERR Invalid client ID") for arg in argv[i + 1:]}
            clients = [c for c in clients if c.id in ids]
            i = len(argv)
        else:
            raise CommandError(SYNTAX)
    return Verbatim("".join(client_line(c, ctx.now_ms) for c in clients))


# CLIENT KILL ip:port
# CLIENT KILL [ID client-id] [TYPE NORMAL|MASTER|SLAVE|REPLICA|PUBSUB] [USER username]
#             [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no] [MAXAGE maxage] ...
@command("kill", container="client", arity=-3, flags="admin noscript loading stale", group="connection",
         summary="Terminates open connections.", since="2.4.0")
def client_kill(ctx: CommandContext, argv: list[bytes]):
    me = ctx.client
    if len(argv) == 3:
        address = argv[2].decode("utf-8", "replace")
        victims = [c for c in ctx.server.clients.values() if c.addr == address]
        if not victims:
            raise CommandError("ERR No such client")
        _kill(me, victims)
        return OK
    tests = []
    skip_me = True
    args = argv[2:]
    if len(args) % 2:
        raise CommandError(SYNTAX)
    for option, value in zip(args[::2], args[1::2]):
        option = option.lower()
        text = value.decode("utf-8", "replace")
        if option == b"id":
            wanted = parse_int(value, "ERR client-id should be greater than 0")
            if wanted <= 0:
                raise CommandError("ERR client-id should be greater than 0")
            tests.append(lambda c, wanted=wanted: c.id == wanted)
        elif option == b"type":
            kind = value.lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                raise CommandError(f"ERR Unknown client type '{text}'")
            tests.append(lambda c, normal=kind == b"normal": normal)
        elif option == b"user":
            tests.append(lambda c, user=value: user == DEFAULT_USER)
        elif option == b"addr":
            tests.append(lambda c, addr=text: c.addr == addr)
        elif option == b"laddr":
            tests.append(lambda c, laddr=text: c.laddr == laddr)
        elif option == b"skipme":
            if value.lower() not in (b"yes", b"no"):
                raise CommandError(SYNTAX)
            skip_me = value.lower() == b"yes"
        elif option == b"maxage":
            age_s = parse_int(value)
            tests.append(lambda c, age_s=age_s: (ctx.now_ms - c.created_ms) // 1000 >= age_s)
        else:
            raise CommandError(SYNTAX)
    victims = [
        c for c in ctx.server.clients.values()
        if all(test(c) for test in tests) and not (skip_me and c is me)
    ]
    _kill(me, victims)
    return len(victims)


def _kill(me, victims) -> None:
    for victim in victims:
        if victim is me:
            me.close_after_reply = True
        else:
            victim.kill()


# CLIENT HELP
@command("help", container="client", arity=2, flags="loading stale", group="connection",
         summary="Returns helpful text about the different subcommands.", since="5.0.0")
def client_help(ctx: CommandContext, argv: list[bytes]):
    return [
        SimpleString("CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"),
        SimpleString("ID, SETNAME <name>, GETNAME, SETINFO <LIB-NAME|LIB-VER> <value>, INFO,"),
        SimpleString("LIST [TYPE <type>] [ID <id> ...], KILL <ip:port> | KILL <option> <value> ...,"),
        SimpleString("NO-EVICT <ON|OFF>, TRACKING <ON|OFF> [REDIRECT <id>] [PREFIX <prefix> ...] [BCAST]"),
        SimpleString("[OPTIN] [OPTOUT] [NOLOOP], CACHING <YES|NO>, GETREDIR, TRACKINGINFO, HELP"),
    ]

