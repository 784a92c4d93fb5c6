"""What the admin port reports: Prometheus metrics, readiness, and the dashboard's overview.

Every view is read from the node's state when it is asked for, never kept up
to date on the request path: the Prometheus collector turns the counters that
dispatch and the group driver already keep (`kvorum.server.command_stats`,
`Stats`, `GroupDriver`) into metric families at scrape time, so serving
commands costs nothing more for being scraped. Metric names are listed in
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from kvorum import __version__
from kvorum.consensus.replicated_log import Role
from kvorum.server.command_stats import CommandStat

if TYPE_CHECKING:
    from kvorum.server.state import ServerState

# Upper bounds of the latency histograms' buckets, in nanoseconds: each is an edge of a
# `CommandStat` slot, so the counts are exact (1.024 us ticks below ~1 ms, powers of two above).
LATENCY_BOUNDS_NS = (
    1 << 10, 2 << 10, 5 << 10, 10 << 10, 25 << 10, 50 << 10, 100 << 10, 250 << 10, 500 << 10, 1024 << 10,
    1 << 21, 1 << 22, 1 << 23, 1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28, 1 << 29, 1 << 30, 1 << 31,
)


# How long a readiness check waits for this node to apply the commit index it knows, and how often it looks.
READY_APPLY_WAIT_S = 1.0
READY_APPLY_POLL_S = 0.01


def _buckets(stat: CommandStat) -> list[tuple[str, int]]:
    counts = stat.cumulative_counts(LATENCY_BOUNDS_NS)
    out = [(repr(bound / 1e9), count) for bound, count in zip(LATENCY_BOUNDS_NS, counts)]
    out.append(("+Inf", stat.calls))
    return out


class NodeCollector:
    """A prometheus_client collector over one node's state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self):
        state = self.state
        yield from self._commands(state)
        yield from self._node(state)
        if state.cluster is not None:
            yield from self._group(state)

    @staticmethod
    def _commands(state: ServerState):
        calls = CounterMetricFamily("kvorum_command_calls", "Executed calls per command (failed ones included).",
                                    labels=["command"])
        rejected = CounterMetricFamily("kvorum_command_rejected_calls", "Calls refused before running.",
                                       labels=["command"])
        failed = CounterMetricFamily("kvorum_command_failed_calls", "Calls that ran and answered an error.",
                                     labels=["command"])
        latency = HistogramMetricFamily("kvorum_command_duration_seconds", "Time to run a command on this node.",
                                        labels=["command"])
        for name, stat in sorted(state.command_stats.items()):
            count = stat.calls
            if not (count or stat.rejected or stat.failed):
                continue
            calls.add_metric([name], count)
            rejected.add_metric([name], stat.rejected)
            failed.add_metric([name], stat.failed)
            if count:
                latency.add_metric([name], _buckets(stat), stat.ns / 1e9)
        errors = CounterMetricFamily("kvorum_error_replies", "Error replies by their first word.", labels=["prefix"])
        for prefix, count in sorted(state.stats.errors.counts.items()):
            errors.add_metric([prefix], count)
        yield from (calls, rejected, failed, latency, errors)

    @staticmethod
    def _node(state: ServerState):
        stats = state.stats
        db = state.db
        yield _info(state)
        yield GaugeMetricFamily("kvorum_connected_clients", "Client connections open.", len(state.clients))
        yield CounterMetricFamily("kvorum_connections_received", "Client connections accepted.",
                                  stats.connections_received)
        yield CounterMetricFamily("kvorum_commands_processed", "Requests answered.", stats.commands_processed)
        yield GaugeMetricFamily("kvorum_memory_used_bytes", "Memory the keyspace accounts for.", db.used_memory())
        yield GaugeMetricFamily("kvorum_memory_max_bytes", "maxmemory (0: no limit).", state.settings.maxmemory_bytes)
        yield GaugeMetricFamily("kvorum_keys", "Keys in the keyspace.", len(db))
        yield GaugeMetricFamily("kvorum_keys_with_expiry", "Keys with a time to live.", db.expires_count())
        yield CounterMetricFamily("kvorum_expired_keys", "Keys removed because their time to live ran out.",
                                  db.expired_keys)
        yield CounterMetricFamily("kvorum_evicted_keys", "Keys evicted under maxmemory.", db.evicted_keys)
        yield CounterMetricFamily("kvorum_keyspace_hits", "Key lookups that found the key.", db.keyspace_hits)
        yield CounterMetricFamily("kvorum_keyspace_misses", "Key lookups that did not.", db.keyspace_misses)
        yield CounterMetricFamily("kvorum_net_input_bytes", "Bytes read from clients.", stats.net_input_bytes)
        yield CounterMetricFamily("kvorum_net_output_bytes", "Bytes written to clients.", stats.net_output_bytes)
        yield GaugeMetricFamily("kvorum_uptime_seconds", "Seconds since the node started.",
                                time.monotonic() - state.started_monotonic_s)

    @staticmethod
    def _group(state: ServerState):
        node = state.cluster
        driver = node.driver
        status = driver.status()
        group = str(driver.group_id)
        labels = ["group"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric([group], value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric([group], value)
            return family

        yield gauge("kvorum_group_term", "The replica group's current term on this node.", status.term)
        role = GaugeMetricFamily("kvorum_group_role", "1 for the role this node has in the group.",
                                 labels=["group", "role"])
        for name in (r.value for r in Role):
            role.add_metric([group, name], 1 if status.role.value == name else 0)
        yield role
        yield gauge("kvorum_group_leader_known", "1 while this node knows a leader of the group.",
                    0 if status.leader is None else 1)
        yield gauge("kvorum_group_commit_index", "Highest log index this node knows committed.", status.commit)
        yield gauge("kvorum_group_applied_index", "Highest log index applied to this node's keyspace.",
                    driver.applied_index)
        yield gauge("kvorum_group_last_index", "Highest index in this node's log.", status.last_index)
        yield gauge("kvorum_group_snapshot_index", "Index of this node's latest snapshot.", driver.snapshot_index)
        lag = GaugeMetricFamily("kvorum_group_follower_lag_entries",
                                "On the leader: log entries each follower is missing.", labels=["group", "follower"])
        if status.leader == node.id:
            for follower, progress in sorted(status.progress.items()):
                if follower != node.id:
                    lag.add_metric([group, follower], max(0, status.last_index - progress.match))
        yield lag
        yield counter("kvorum_group_elections_seen", "Terms this node saw begin (each one an election).",
                      driver.elections_seen)
        yield counter("kvorum_group_leader_changes", "Times this node's view of the leader changed.",
                      driver.leader_changes)
        fsync = HistogramMetricFamily("kvorum_group_fsync_duration_seconds", "Time to sync the log to disk.",
                                      labels=labels)
        fsync.add_metric([group], _buckets(driver.fsync_latency), driver.fsync_latency.ns / 1e9)
        yield fsync
        yield counter("kvorum_group_snapshots_taken", "Snapshots of the keyspace this node took.",
                      driver.snapshots_taken)
        yield gauge("kvorum_group_snapshot_bytes", "Size of the snapshot this node last took or installed.",
                    driver.snapshot_bytes_last)


def _info(state: ServerState) -> GaugeMetricFamily:
    family = GaugeMetricFamily("kvorum_info", "Constant 1, labelled with the node's identity.",
                               labels=["version", "mode", "node_id"])
    family.add_metric([__version__, "single" if state.cluster is None else "replicated", state.settings.node_id], 1)
    return family


def registry_of(state: ServerState) -> CollectorRegistry:
    """A registry holding only this node's collector (not the process defaults: one node per registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(state))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format."""
    return generate_latest(registry)


def readiness(state: ServerState) -> tuple[bool, str]:
    """(ready, reason). A single node is ready while it serves; a replicated node once it knows a
    leader it heard from within one election timeout and has applied the commit index it knows."""
    if state.shutting_down:
        return False, "shutting down"
    node = state.cluster
    if node is None:
        return True, "serving"
    driver = node.driver
    status = driver.status()
    if status.leader is None:
        return False, "no leader known"
    age_s = driver.leader_contact_age_s()
    if age_s > node.stale_read_s_max:
        return False, f"no contact with leader {status.leader} for {age_s:.1f}s"
    applied = driver.applied_index
    if applied < status.commit:
        return False, f"applied index {applied} is behind commit index {status.commit}"
    return True, f"leader {status.leader}, applied index {applied}"


async def readiness_settled(state: ServerState) -> tuple[bool, str]:
    """`readiness`, giving a node that knows its leader up to READY_APPLY_WAIT_S to apply the
    commit index it knew when asked. Under a steady write load a follower hears of each
    commit a moment before it applies it; without the wait, readiness would flap with every
    batch instead of telling a node that is really behind (catching up after a restart)."""
    ready, reason = readiness(state)
    node = state.cluster
    if ready or node is None or node.driver.leader is None:
        return ready, reason
    target = node.driver.status().commit
    deadline_s = time.monotonic() + READY_APPLY_WAIT_S
    while node.driver.applied_index < target and time.monotonic() < deadline_s:
        await asyncio.sleep(READY_APPLY_POLL_S)
    return readiness(state) if node.driver.applied_index >= target else (ready, reason)


def overview(state: ServerState) -> dict:
    """The dashboard's JSON: this node, its view of the group, and its recent ops/sec."""
    ready, reason = readiness(state)
    out = {
        "node_id": state.settings.node_id or "single",
        "mode": "single" if state.cluster is None else "replicated",
        "version": __version__,
        "pid": os.getpid(),
        "port": state.port,
        "uptime_s": int(time.monotonic() - state.started_monotonic_s),
        "ready": ready,
        "reason": reason,
        "connected_clients": len(state.clients),
        "keys": len(state.db),
        "used_memory_bytes": state.db.used_memory(),
        "commands_processed": state.stats.commands_processed,
        "ops_per_sec": state.stats.ops_per_sec,
        "ops_history": [[at_ms, ops] for at_ms, ops in state.stats.ops_history],
        "group": None,
    }
    node = state.cluster
    if node is not None:
        driver = node.driver
        status = driver.status()
        members = []
        for member_id, host, port, bus_port, role, match in node.member_rows():
            lag = status.last_index - match if status.leader == node.id and match >= 0 else None
            members.append({"id": member_id, "address": f"{host}:{port}", "bus_port": bus_port, "role": role,
                            "leader": member_id == status.leader, "self": member_id == node.id,
                            "match_index": match, "lag": lag})
        out["group"] = {
            "id": driver.group_id, "role": status.role.value, "term": status.term, "leader": status.leader,
            "commit_index": status.commit, "applied_index": driver.applied_index, "last_index": status.last_index,
            "elections_seen": driver.elections_seen, "members": members,
        }
    return out
