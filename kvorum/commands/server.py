"""Server commands: INFO CONFIG SLOWLOG TIME LASTSAVE ROLE SHUTDOWN.

DBSIZE, FLUSHDB and FLUSHALL live with the keyspace commands (`keys.py`).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time

from kvorum import __version__
from kvorum.commands.connection import REDIS_VERSION
from kvorum.commands.table import CommandContext, command, container
from kvorum.protocol.parser import parse_strict_int
from kvorum.protocol.values import OK, SYNTAX, CommandError, RawReply, SimpleString, Verbatim
from kvorum.settings import SETTINGS, SettingError, get_value, parse_value
from kvorum.store.glob import stringmatch

DEFAULT_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu", "cluster",
                    "keyspace", "kvorum")
# As in Redis, the per-command and per-error sections come with INFO ALL (or by name), not by default.
ALL_SECTIONS = DEFAULT_SECTIONS[:7] + ("commandstats", "errorstats", "latencystats") + DEFAULT_SECTIONS[7:]
# latency-tracking-info-percentiles' default in Redis 7.
LATENCY_PERCENTILES = (50.0, 99.0, 99.9)


def human_bytes(n: int) -> str:
    """Redis' bytesToHuman: 1023B, 1.00K, 1.50M, 2.00G."""
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n}B"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _section_server(server, now_ms: int) -> dict:
    uptime_s = int(time.monotonic() - server.started_monotonic_s)
    return {
        "redis_version": REDIS_VERSION,
        "redis_git_sha1": "00000000",
        "redis_git_dirty": 0,
        "redis_mode": "standalone",
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "arch_bits": 64 if sys.maxsize > 2**32 else 32,
        "multiplexing_api": server.event_loop_name,
        "process_id": os.getpid(),
        "run_id": server.run_id,
        "tcp_port": server.port,
        "server_time_usec": now_ms * 1000,
        "uptime_in_seconds": uptime_s,
        "uptime_in_days": uptime_s // 86400,
        "hz": server.settings.hz,
        "executable": sys.executable,
        "config_file": server.settings.config_file,
        "kvorum_version": __version__,
    }


def _section_clients(server, now_ms: int) -> dict:
    return {
        "connected_clients": len(server.clients),
        "maxclients": server.settings.maxclients,
        "blocked_clients": 0,
        "tracking_clients": len(server.tracking.clients),
        "watching_clients": sum(1 for c in server.clients.values() if c.watched),
        "total_watched_keys": len(server.watchers),
    }


def _section_memory(server, now_ms: int) -> dict:
    used = server.db.used_memory()
    rss = _rss_bytes()
    maxmemory = server.settings.maxmemory_bytes
    return {
        "used_memory": used,
        "used_memory_human": human_bytes(used),
        "used_memory_rss": rss,
        "used_memory_rss_human": human_bytes(rss),
        "maxmemory": maxmemory,
        "maxmemory_human": human_bytes(maxmemory),
        "maxmemory_policy": server.settings.maxmemory_policy,
        "mem_fragmentation_ratio": f"{rss / used:.2f}" if used else "0.00",
    }


def _section_persistence(server, now_ms: int) -> dict:
    return {
        "loading": 0,
        "async_loading": 0,
        "rdb_changes_since_last_save": server.dirty,
        "rdb_bgsave_in_progress": 0,
        "rdb_last_save_time": int(server.started_s),
        "rdb_last_bgsave_status": "ok",
        "aof_enabled": 0,
        "aof_rewrite_in_progress": 0,
        "aof_last_write_status": "ok",
    }


def _section_stats(server, now_ms: int) -> dict:
    stats = server.stats
    db = server.db
    return {
        "total_connections_received": stats.connections_received,
        "total_commands_processed": stats.commands_processed,
        "instantaneous_ops_per_sec": stats.ops_per_sec,
        "total_net_input_bytes": stats.net_input_bytes,
        "total_net_output_bytes": stats.net_output_bytes,
        "rejected_connections": stats.rejected_connections,
        "expired_keys": db.expired_keys,
        "evicted_keys": db.evicted_keys,
        "keyspace_hits": db.keyspace_hits,
        "keyspace_misses": db.keyspace_misses,
        "pubsub_channels": len(server.pubsub.channels),
        "pubsub_patterns": len(server.pubsub.patterns),
        "tracking_total_keys": len(server.tracking.table),
        "tracking_total_prefixes": len(server.tracking.prefixes),
        "total_error_replies": stats.error_replies,
    }


def _section_replication(server, now_ms: int) -> dict:
    if server.cluster is not None:
        return server.cluster.replication_info()
    return {
        "role": "master",
        "connected_slaves": 0,
        "master_failover_state": "no-failover",
        "master_replid": server.run_id,
        "master_repl_offset": 0,
    }


def _section_cpu(server, now_ms: int) -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "used_cpu_sys": f"{usage.ru_stime:.6f}",
        "used_cpu_user": f"{usage.ru_utime:.6f}",
    }


def _section_cluster(server, now_ms: int) -> dict:
    return {"cluster_enabled": 0 if server.cluster is None else 1}


def _section_commandstats(server, now_ms: int) -> dict:
    out = {}
    for name, stat in sorted(server.command_stats.items()):
        if stat.calls or stat.rejected or stat.failed:
            usec_per_call = stat.ns / 1000 / stat.calls if stat.calls else 0.0
            out[f"cmdstat_{name}"] = (f"calls={stat.calls},usec={stat.ns // 1000},usec_per_call={usec_per_call:.2f},"
                                      f"rejected_calls={stat.rejected},failed_calls={stat.failed}")
    return out


def _section_errorstats(server, now_ms: int) -> dict:
    return {f"errorstat_{prefix}": f"count={count}" for prefix, count in sorted(server.stats.errors.counts.items())}


def _section_latencystats(server, now_ms: int) -> dict:
    out = {}
    for name, stat in sorted(server.command_stats.items()):
        if stat.calls:
            out[f"latency_percentiles_usec_{name}"] = ",".join(
                f"p{percent:g}={stat.percentile_us(percent):.3f}" for percent in LATENCY_PERCENTILES)
    return out


def _section_keyspace(server, now_ms: int) -> dict:
    keys = len(server.db)
    if not keys:
        return {}
    return {"db0": f"keys={keys},expires={server.db.expires_count()},avg_ttl=0"}


def _section_kvorum(server, now_ms: int) -> dict:
    settings = server.settings
    return {
        "kvorum_version": __version__,
        "kvorum_mode": "single-node" if server.cluster is None else "replicated",
        "event_loop": server.event_loop_name,
        "python_version": platform.python_version(),
        "dirty_writes": server.dirty,
        "proto_max_bulk_len": settings.proto_max_bulk_len_bytes,
        "proto_max_multibulk_len": settings.proto_max_multibulk_len,
        "proto_inline_max_size": settings.proto_inline_max_size_bytes,
        "client_query_buffer_limit": settings.client_query_buffer_limit_bytes,
    }


SECTIONS = {
    "server": ("Server", _section_server),
    "clients": ("Clients", _section_clients),
    "memory": ("Memory", _section_memory),
    "persistence": ("Persistence", _section_persistence),
    "stats": ("Stats", _section_stats),
    "replication": ("Replication", _section_replication),
    "cpu": ("CPU", _section_cpu),
    "commandstats": ("Commandstats", _section_commandstats),
    "errorstats": ("Errorstats", _section_errorstats),
    "latencystats": ("Latencystats", _section_latencystats),
    "cluster": ("Cluster", _section_cluster),
    "keyspace": ("Keyspace", _section_keyspace),
    "kvorum": ("Kvorum", _section_kvorum),
}


def info_text(server, sections: list[str], now_ms: int) -> str:
    chunks = []
    for name in sections:
        title, build = SECTIONS[name]
        lines = [f"# {title}"] + [f"{key}:{value}" for key, value in build(server, now_ms).items()]
        chunks.append("\r\n".join(lines) + "\r\n")
    return "\r\n".join(chunks)


# INFO [section [section ...]]
@command("info", arity=-1, flags="loading stale", group="server",
         summary="Returns information and statistics about the server.")
def info(ctx: CommandContext, argv: list[bytes]):
    wanted: list[str] = []
    if len(argv) == 1:
        wanted = list(DEFAULT_SECTIONS)
    for arg in argv[1:]:
        name = arg.decode("utf-8", "replace").lower()
        if name in ("all", "everything", "default"):
            group = ALL_SECTIONS if name != "default" else DEFAULT_SECTIONS
            wanted.extend(s for s in group if s not in wanted)
        elif name in SECTIONS and name not in wanted:
            wanted.append(name)
    return Verbatim(info_text(ctx.server, wanted, ctx.now_ms))


container("config", group="server", summary="A container for server configuration commands.", since="2.0.0")


# CONFIG GET parameter [parameter ...]
@command("get", container="config", arity=-3, flags="admin noscript loading stale", group="server",
         summary="Returns the effective values of configuration parameters.", since="2.0.0")
def config_get(ctx: CommandContext, argv: list[bytes]):
    reply: dict[bytes, bytes] = {}
    for pattern in argv[2:]:
        pattern = pattern.lower()
        for name, setting in SETTINGS.items():
            key = name.encode()
            if key not in reply and stringmatch(pattern, key):
                reply[key] = get_value(ctx.server.settings, setting).encode()
    return reply


# CONFIG SET parameter value [parameter value ...]
@command("set", container="config", arity=-4, flags="admin noscript loading stale", group="server",
         summary="Sets configuration parameters in-flight.", since="2.0.0")
def config_set(ctx: CommandContext, argv: list[bytes]):
    if len(argv) % 2:
        raise CommandError("ERR wrong number of arguments for 'config|set' command")
    changes = []
    seen = set()
    for raw_name, raw_value in zip(argv[2::2], argv[3::2]):
        name = raw_name.decode("utf-8", "replace").lower()
        setting = SETTINGS.get(name)
        if setting is None:
            raise CommandError(f"ERR Unknown option or number of arguments for CONFIG SET - '{name}'")
        if name in seen:
            raise CommandError(f"ERR CONFIG SET failed (possibly related to argument '{name}') - duplicate parameter")
        seen.add(name)
        if not setting.mutable:
            raise CommandError(f"ERR CONFIG SET failed (possibly related to argument '{name}') - "
                               "can't set immutable config")
        try:
            value = parse_value(setting, raw_value.decode("utf-8", "surrogateescape"))
        except SettingError as exc:
            raise CommandError(f"ERR CONFIG SET failed (possibly related to argument '{name}') - {exc}") from None
        changes.append((setting.field, value))
    for field, value in changes:
        ctx.server.apply_setting(field, value)
    return OK


# CONFIG RESETSTAT
@command("resetstat", container="config", arity=2, flags="admin noscript loading stale", group="server",
         summary="Resets the server's statistics.", since="2.0.0")
def config_resetstat(ctx: CommandContext, argv: list[bytes]):
    ctx.server.reset_stats()
    return OK


container("slowlog", group="server", summary="A container for slow log commands.", since="2.2.12")


# SLOWLOG GET [count]
@command("get", container="slowlog", arity=-2, flags="admin loading stale", group="server",
         summary="Returns the slow log's entries.", since="2.2.12", complexity="O(N)")
def slowlog_get(ctx: CommandContext, argv: list[bytes]):
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    count = 10
    if len(argv) == 3:
        count = parse_strict_int(argv[2])
        if count is None or count < -1:
            raise CommandError("ERR count should be greater than or equal to -1")
    entries = ctx.server.slowlog.entries
    if count == -1:
        count = len(entries)
    return [entry for _, entry in zip(range(count), entries)]


# SLOWLOG LEN
@command("len", container="slowlog", arity=2, flags="admin loading stale", group="server",
         summary="Returns the number of entries in the slow log.", since="2.2.12")
def slowlog_len(ctx: CommandContext, argv: list[bytes]):
    return len(ctx.server.slowlog.entries)


# SLOWLOG RESET
@command("reset", container="slowlog", arity=2, flags="admin loading stale", group="server",
         summary="Clears all entries from the slow log.", since="2.2.12")
def slowlog_reset(ctx: CommandContext, argv: list[bytes]):
    ctx.server.slowlog.reset()
    return OK


# SLOWLOG HELP
@command("help", container="slowlog", arity=2, flags="loading stale", group="server",
         summary="Shows helpful text about the different subcommands.", since="6.2.0")
def slowlog_help(ctx: CommandContext, argv: list[bytes]):
    return [SimpleString(line) for line in (
        "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET [<count>]",
        "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
        "    Entries are made of:",
        "    id, timestamp, time in microseconds, arguments array, client IP and port,",
        "    client name",
        "LEN",
        "    Return the length of the slowlog.",
        "RESET",
        "    Reset the slowlog.",
        "HELP",
        "    Print this help.",
    )]


# TIME
@command("time", arity=1, flags="loading stale fast", group="server", summary="Returns the server time.",
         since="2.6.0")
def time_(ctx: CommandContext, argv: list[bytes]):
    now_us = time.time_ns() // 1000
    return [str(now_us // 1_000_000).encode(), str(now_us % 1_000_000).encode()]


# LASTSAVE
@command("lastsave", arity=1, flags="loading stale fast", group="server",
         summary="Returns the Unix timestamp of the last successful save to disk.")
def lastsave(ctx: CommandContext, argv: list[bytes]):
    return int(ctx.server.started_s)


# ROLE
@command("role", arity=1, flags="noscript loading stale fast", group="server",
         summary="Returns the replication role.", since="2.8.12")
def role(ctx: CommandContext, argv: list[bytes]):
    if ctx.server.cluster is not None:
        return ctx.server.cluster.role_reply()
    return [b"master", 0, []]


# SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] [ABORT]
@command("shutdown", arity=-1, flags="admin noscript loading stale no_multi allow_busy", group="server",
         summary="Synchronously saves the database(s) to disk and shuts down the Redis server.")
def shutdown(ctx: CommandContext, argv: list[bytes]):
    for arg in argv[1:]:
        if arg.lower() not in (b"nosave", b"save", b"now", b"force"):
            raise CommandError(SYNTAX)
    ctx.client.close_after_reply = True
    ctx.server.request_shutdown()
    return RawReply(b"")
