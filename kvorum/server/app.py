"""The asyncio shell of a single node: listener, background cron, signals, shutdown.

`run(settings)` blocks until SIGINT/SIGTERM or SHUTDOWN, then shuts down in a
written order:

1. stop accepting connections (close the listening sockets);
2. stop the cron;
3. close every client, letting replies already written drain;
4. wait for the listener to close (bounded by SHUTDOWN_TIMEOUT_S);
5. return, which stops the event loop.

With `peers` (or `join`) set the node is replicated (`kvorum.server.replication`).
Start binds the client port first, then (after registering with the running
cluster, for a joining node: `kvorum.server.join`) starts the group driver and
the peer hub (which binds the bus port), and only then serves clients: a node
that cannot listen on either port exits at once with a `ListenError` instead of
running as a voter no client can reach. The driver and hub stop after the
clients are closed, and expiry goes through the log instead of the local cycle.

With `admin-port` set, the admin HTTP server (`kvorum.server.admin_http`:
health, metrics, dashboard) starts once clients are served, on the same
loop, and closes first on shutdown.

The cron runs `hz` times a second: one active expiry cycle (at most
`active-expire-keys-per-cycle` keys), and once a second the client checks
(idle timeout, output-buffer soft limit) and the ops/sec sample.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import kvorum.commands  # noqa: F401  (registers every command in the table)
from kvorum.cluster.topology import BUS_PORT_OFFSET
from kvorum.replica.roster import Member
from kvorum.settings import Settings
from kvorum.server.admin_http import AdminServer
from kvorum.server.connection import Connection
from kvorum.server.join import join
from kvorum.server.peer_transport import ListenError
from kvorum.server.replication import start_replication
from kvorum.server.state import ServerState

log = logging.getLogger("kvorum.server")

SHUTDOWN_TIMEOUT_S = 5.0


def _event_loop_runner():
    """uvloop's runner when uvloop is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


async def serve(settings: Settings, ready: asyncio.Future | None = None) -> None:
    """Serve until a shutdown is requested; `ready` gets the ServerState once listening."""
    loop = asyncio.get_running_loop()
    state = ServerState(settings)
    state.event_loop_name = type(loop).__module__.split(".")[0]
    stop = asyncio.Event()
    state.request_shutdown = stop.set
    hosts = settings.bind.split() or ["127.0.0.1"]
    hub = driver = None
    admin = AdminServer(state) if settings.admin_port else None
    # Bound now, served once replication runs (a connection reads state.cluster).
    try:
        listener = await loop.create_server(
            lambda: Connection(state), host=hosts, port=settings.port, reuse_address=True, backlog=511,
            start_serving=False,
        )
    except OSError as exc:
        raise ListenError.of(" ".join(hosts), "port", settings.port, exc) from exc
    try:
        if settings.peers or settings.join:
            hub, driver = await start_replication(state, await _join(settings))
        await listener.start_serving()
        if admin is not None:
            await admin.start(settings.admin_bind, settings.admin_port)
            state.admin_port = admin.port
    except BaseException:
        listener.close()
        if driver is not None:
            await driver.stop()
        if hub is not None:
            await hub.stop()
        raise
    state.port = listener.sockets[0].getsockname()[1]
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cron = asyncio.create_task(_cron(state))
    log.info("kvorum ready to accept connections on %s port %d (%s)", " ".join(hosts), state.port,
             state.event_loop_name)
    if ready is not None:
        ready.set_result(state)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: %d clients", len(state.clients))
        state.shutting_down = True
        if admin is not None:
            await admin.close()
        listener.close()
        cron.cancel()
        for client in list(state.clients.values()):
            client.close_gracefully()
        try:
            await asyncio.wait_for(listener.wait_closed(), SHUTDOWN_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("listener did not close within %.0fs", SHUTDOWN_TIMEOUT_S)
        if driver is not None:
            await driver.stop()
            await hub.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("kvorum is now ready to exit, bye bye...")


async def _join(settings: Settings) -> list[Member] | None:
    """With --join: register with the running cluster first; its members (None without --join)."""
    if not settings.join:
        return None
    host = (settings.bind.split() or ["127.0.0.1"])[0]
    bus_port = settings.cluster_announce_bus_port or settings.bus_port or settings.port + BUS_PORT_OFFSET
    me = Member(settings.node_id, host, settings.port, bus_port)
    return await asyncio.to_thread(join, settings.join, me, settings.learner)


async def _cron(state: ServerState) -> None:
    tick = 0
    while True:
        settings = state.settings
        await asyncio.sleep(1.0 / settings.hz)
        now_ms = int(time.time() * 1000)
        if state.cluster is None:
            state.db.active_expire_cycle(now_ms, settings.active_expire_keys_per_cycle)
        else:
            state.cluster.cron(now_ms)
        tick += 1
        if tick >= settings.hz:
            tick = 0
            _clients_cron(state, now_ms)


def _clients_cron(state: ServerState, now_ms: int) -> None:
    state.stats.sample_ops(now_ms)
    timeout_ms = state.settings.timeout_s * 1000
    for client in list(state.clients.values()):
        if timeout_ms and now_ms - client.last_ms > timeout_ms and client.multi is None:
            log.info("closing idle client id=%d addr=%s", client.id, client.addr)
            client.kill()
            continue
        client.check_output_soft_limit(now_ms)


def run(settings: Settings) -> None:
    _event_loop_runner()(serve(settings))
