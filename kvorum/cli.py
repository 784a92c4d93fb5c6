"""The `kvorum` command line (also `python -m kvorum`).

Settings come from defaults, then the YAML file given with --config, then the
flags; a flag overrides the file. Every flag has a YAML key of the same name
(the CONFIG GET/SET name), listed in `kvorum server --help`.
"""

from __future__ import annotations

import logging
import sys

import click
import yaml
from click.core import ParameterSource

from kvorum import __version__
from kvorum.cluster.topology import TopologyError, parse_peers
from kvorum.server import admin, launcher
from kvorum.server.app import run
from kvorum.server.cluster_status import Member, parse_address, report
from kvorum.server.join import JoinError
from kvorum.server.launcher import check_replicated
from kvorum.server.peer_transport import ListenError
from kvorum.server.peers import SecretError, load_cluster_secret
from kvorum.storage import CorruptLogError, DirectoryLockedError
from kvorum.settings import LOG_LEVELS, LOG_LEVELS_PY, POLICIES, SETTINGS, SettingError, from_mapping

_SETTINGS_HELP = "\n".join(
    f"  {name:<30} {setting.doc}" for name, setting in SETTINGS.items() if setting.field
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kvorum")
def main() -> None:
    """kvorum: a strongly consistent, Redis-compatible, distributed in-memory cache.

    Start a node with `kvorum server`, then use any Redis client (redis-cli -p 6379).
    """


@main.command(epilog="\b\nYAML keys (also CONFIG GET/SET names; memory values take 100mb, 1gb):\n" + _SETTINGS_HELP)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file of settings (keys listed below); flags override it.")
@click.option("--port", type=int, help="TCP port for RESP clients (0 picks a free one). [default: 6379]")
@click.option("--bind", help="Address(es) to listen on, space separated. [default: 127.0.0.1]")
@click.option("--requirepass", help="Password clients must send with AUTH. [default: none]")
@click.option("--maxmemory", help="Memory limit for the data, e.g. 100mb or 1gb; 0 = none. [default: 0]")
@click.option("--maxmemory-policy", type=click.Choice(POLICIES),
              help="What to evict when maxmemory is reached. [default: noeviction]")
@click.option("--protected-mode", type=click.Choice(["yes", "no"]),
              help="Refuse non-loopback clients while no password is set. [default: yes]")
@click.option("--log-level", "loglevel", type=click.Choice(LOG_LEVELS),
              help="Log verbosity (YAML key: loglevel). [default: notice]")
@click.option("--node-id", help="This node's id in --peers (replicated mode).")
@click.option("--peers", help="Every voter as id@host:port[@busport],...; without it the node is single.")
@click.option("--join", help="host:port of any member of a running cluster: join it (docs/cluster.md).")
@click.option("--learner", type=click.Choice(["yes", "no"]),
              help="With --join: stay a non-voting learner. [default: no]")
@click.option("--bus-port", type=int, help="Port for peer traffic. [default: --port + 10000]")
@click.option("--cluster-announce-bus-port", type=int,
              help="With --join: the bus port peers are told to dial, if not --bus-port (a proxy, a NAT).")
@click.option("--data-dir", help="Directory of the write-ahead log and snapshots (replicated mode).")
@click.option("--fsync", type=click.Choice(["always", "batch", "never"]),
              help="When the log reaches the disk (docs/storage.md). [default: batch]")
@click.option("--cluster-id", help="Peers with another cluster id are refused. [default: kvorum]")
@click.option("--cluster-secret",
              help="Secret every peer must prove it holds (16 to 4096 bytes); visible in process lists, "
                   "so prefer --cluster-secret-file. [default: none, for trusted networks only]")
@click.option("--cluster-secret-file", type=click.Path(dir_okay=False),
              help="File holding the cluster secret (one trailing newline ignored).")
@click.option("--write-concern", type=click.Choice(["one", "majority", "all"]),
              help="When writes are acknowledged (docs/cluster.md). [default: majority]")
@click.option("--admin-port", type=int,
              help="HTTP port for /health, /metrics and the dashboard (docs/operations.md). [default: 0, off]")
@click.option("--admin-bind", help="Address the admin port listens on. [default: 127.0.0.1]")
def server(config_file: str | None, **flags) -> None:
    """Start a kvorum node and serve until Ctrl-C or SIGTERM.

    With --peers the node is one voter of a replicated cluster (docs/cluster.md);
    without it, a single node.
    """
    values: dict = {}
    if config_file:
        with open(config_file) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise click.UsageError(f"{config_file}: expected a mapping of setting names to values")
        values.update(loaded)
    for field, value in flags.items():
        if value is not None:
            values[field.replace("_", "-")] = value
    try:
        settings = from_mapping(values)
    except SettingError as exc:
        raise click.UsageError(str(exc)) from None
    settings.config_file = config_file or ""
    if settings.peers or settings.join:
        try:
            check_replicated(settings, port_given="port" in values)
            load_cluster_secret(settings.cluster_secret, settings.cluster_secret_file)
        except (TopologyError, SecretError) as exc:
            raise click.UsageError(str(exc)) from None
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kvorum").setLevel(LOG_LEVELS_PY[settings.loglevel])
    try:
        run(settings)
    except JoinError as exc:
        raise click.ClickException(str(exc)) from None
    except (CorruptLogError, DirectoryLockedError) as exc:
        raise click.ClickException(f"cannot use the data directory {settings.data_dir}: {exc}") from None
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot start the node: {exc}") from None


@main.group()
def cluster() -> None:
    """Run and inspect a local replicated cluster (development)."""


@cluster.command("up")
@click.option("--nodes", "count", type=click.IntRange(1, 7), default=3, show_default=True,
              help="Number of voters.")
@click.option("--base-port", type=int, default=7001, show_default=True,
              help="Client port of the first node; node i listens on base-port + i - 1.")
@click.option("--data-dir", default="kvorum-cluster", show_default=True,
              help="Parent directory; node i keeps its log in DATA_DIR/n<i>, and DATA_DIR/cluster.json "
                   "describes the running nodes.")
@click.option("--fsync", type=click.Choice(["always", "batch", "never"]), default="batch", show_default=True)
def cluster_up(count: int, base_port: int, data_dir: str, fsync: str) -> None:
    """Start COUNT local nodes, print their addresses, stop them all on Ctrl-C.

    A node that dies is reported, not restarted; `kvorum cluster restart` restarts it.
    """
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(launcher.cluster_up(count, base_port, data_dir, fsync))


@cluster.command("restart")
@click.argument("node_id")
@click.option("--data-dir", default="kvorum-cluster", show_default=True,
              help="The DATA_DIR of the running `kvorum cluster up`.")
def cluster_restart(node_id: str, data_dir: str) -> None:
    """Restart one node (n1, n2, ...) of a running `cluster up`.

    The launcher of DATA_DIR stops the node if it runs (SIGTERM, SIGKILL after
    10 s) and starts it again with the same command and output.
    """
    try:
        click.echo(launcher.request_restart(data_dir, node_id))
    except launcher.LauncherError as exc:
        raise click.ClickException(str(exc)) from None


@cluster.command("status")
@click.option("--seed", help="Ask this node (HOST:PORT) for the members; the options below are the "
                             "fallback when it does not answer.")
@click.option("--nodes", "count", type=click.IntRange(1, 7), default=3, show_default=True,
              help="Members n1..nN, as `cluster up` numbers them.")
@click.option("--base-port", type=int, default=7001, show_default=True, help="Client port of n1.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Host of n1..nN.")
@click.option("--peers", help="The members as id@host:port,... instead of --nodes.")
@click.pass_context
def cluster_status(ctx: click.Context, seed: str | None, count: int, base_port: int, host: str,
                   peers: str | None) -> None:
    """Show every node's role, indexes and lag; exit 1 unless healthy.

    One row per node: role, term, leader, commit and applied indexes, lag behind
    the leader's log, and the pid of a node on this machine. Exits 0 when a node
    leads and every node answers, 1 otherwise, and says why in the last line. A
    node that does not answer within 0.5 s is unreachable.
    """
    # With a seed and no list given, the seed alone stands in for the members when it
    # does not answer: the default n1..n3 from port 7001 could be another cluster.
    listed = any(ctx.get_parameter_source(name) != ParameterSource.DEFAULT
                 for name in ("count", "base_port", "host", "peers"))
    try:
        seeds = [parse_address(seed)] if seed else []
        if peers:
            fallback = [Member(n.id, n.host, n.port) for n in parse_peers(peers).values()]
        elif seed and not listed:
            fallback = [Member("seed", *seeds[0])]
        else:
            fallback = [Member(f"n{i}", host, base_port + i - 1) for i in range(1, count + 1)]
    except (ValueError, TopologyError) as exc:
        raise click.UsageError(str(exc)) from None
    healthy, text = report(seeds or [(m.host, m.port) for m in fallback], fallback)
    click.echo(text)
    sys.exit(0 if healthy else 1)


_SEED = click.option("--seed", default="127.0.0.1:7001", show_default=True,
                     help="host:port of any member; the request goes to the leader.")
_TIMEOUT = click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
                        help="Seconds to wait for the change to complete.")


def _admin(action, *args) -> None:
    try:
        action(*args, lambda line: click.echo(line))
    except admin.AdminError as exc:
        raise click.ClickException(str(exc)) from None


@cluster.command("remove")
@click.argument("node_id")
@_SEED
@_TIMEOUT
def cluster_remove(node_id: str, seed: str, timeout_s: float) -> None:
    """Remove NODE_ID from the cluster (moving leadership away first), showing progress."""
    _admin(admin.remove, seed, node_id, timeout_s)


@cluster.command("replace")
@click.argument("dead")
@click.argument("new")
@_SEED
@_TIMEOUT
def cluster_replace(dead: str, new: str, seed: str, timeout_s: float) -> None:
    """Replace member DEAD by NEW (id@host:port[@busport]) in one joint change once NEW caught up.

    Start NEW with `kvorum server --node-id ID --port PORT --data-dir DIR --join SEED`.
    """
    _admin(admin.replace, seed, dead, new, timeout_s)


@cluster.command("move-leader")
@click.argument("node_id")
@_SEED
@_TIMEOUT
def cluster_move_leader(node_id: str, seed: str, timeout_s: float) -> None:
    """Hand leadership to NODE_ID (a voter) and wait until it leads."""
    _admin(admin.move_leader, seed, node_id, timeout_s)
