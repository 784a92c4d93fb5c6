"""Linearizable reads on a Raft leader: ReadIndex rounds and leases (thesis 6.4).

Theory of operation
-------------------
A leader serves a read barrier only after it has committed an entry of its
own term (its NOOP), because only then is its commit index at least every
earlier leader's; until then the barrier is *deferred*. It then tags the
barrier with the next heartbeat *round*; followers echo the round, and once a
quorum has echoed it the leader was still leader when the read arrived, so
the read is safe at the commit index recorded when it arrived (the barrier
is *pending* until then).

With lease reads (thesis 6.4.1) the leader skips the round while its lease
holds: the lease starts at the tick the quorum's latest echoed round was
*sent* (followers that receive it ignore vote requests for `election_tick`
ticks) and lasts `election_tick - lease_drift_ticks` ticks, the margin
covering clock-rate drift between the leader and its followers. A leader
that sent TimeoutNow forfeits the lease for the rest of its term: voters join
an election started by TimeoutNow despite their promise.

`ReadIndex` keeps the rounds, the barriers and the lease arithmetic; the node
decides when a lease may be used at all (role, configuration, transfers) and
answers the quorum question through its progress tracker. It never imports
the node.
"""

from __future__ import annotations

from kvorum.consensus.replicated_log import ReadState


class ReadIndex:
    """One leadership's read barriers and heartbeat rounds."""

    __slots__ = (
        "round",
        "lease_forfeited",
        "_election_tick",
        "_lease_ticks",
        "_round_ticks",
        "_deferred",
        "_pending",
    )

    def __init__(self, election_tick: int, lease_drift_ticks: int) -> None:
        assert 0 <= lease_drift_ticks < election_tick
        self._election_tick = election_tick
        self._lease_ticks = election_tick - lease_drift_ticks
        # Heartbeat rounds sent, counted over the node's life so that a number
        # is never reused; followers' echoes are kept per leadership (Progress).
        self.round = 0
        # round -> tick it was sent, for rounds recent enough to back a lease.
        self._round_ticks: dict[int, int] = {}
        # Set once this leadership sent TimeoutNow: a delayed one may still start
        # an election that voters join despite their lease, so no lease is
        # trusted again in this term.
        self.lease_forfeited = False
        # Barriers waiting for an entry of this term to commit.
        self._deferred: list[bytes] = []
        # (ctx, commit index when it arrived, round that confirms it), in round order.
        self._pending: list[tuple[bytes, int, int]] = []

    def waiting(self) -> int:
        """Barriers not yet answered."""
        return len(self._deferred) + len(self._pending)

    def defer(self, ctx: bytes) -> None:
        self._deferred.append(ctx)

    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def take_deferred(self) -> list[bytes]:
        deferred, self._deferred = self._deferred, []
        return deferred

    def await_round(self, ctx: bytes, index: int) -> None:
        """Serve `ctx` at `index` once a quorum echoes the next round."""
        self._pending.append((ctx, index, self.round + 1))

    def has_pending(self) -> bool:
        return bool(self._pending)

    def next_round(self, now: int) -> int:
        """Number a heartbeat round sent at tick `now`."""
        self.round += 1
        rnd = self.round
        ticks = self._round_ticks
        ticks[rnd] = now
        # Rounds older than an election timeout can no longer back a lease.
        oldest = rnd - len(ticks) + 1
        while ticks[oldest] < now - self._election_tick:
            del ticks[oldest]
            oldest += 1
        return rnd

    def release(self, confirmed_round: int, out: list[ReadState]) -> None:
        """Answer, into `out`, every pending barrier that `confirmed_round` covers."""
        pending = self._pending
        n = 0
        while n < len(pending) and pending[n][2] <= confirmed_round:
            ctx, index, _ = pending[n]
            out.append(ReadState(ctx, index))
            n += 1
        if n:
            del pending[:n]

    def lease_holds(self, confirmed_round: int, now: int) -> bool:
        """Is `now` within the lease that a quorum's echo of `confirmed_round` grants?

        The caller checks `lease_forfeited` (and whether leases apply at all) first.
        """
        sent = self._round_ticks.get(confirmed_round)
        if sent is None:
            return False
        return now - sent < self._lease_ticks

    def reset(self) -> list[bytes]:
        """End of a leadership: forget rounds and the lease; return the unanswered barriers."""
        dropped = self._deferred + [ctx for ctx, _, _ in self._pending]
        self._deferred = []
        self._pending = []
        self._round_ticks = {}
        self.lease_forfeited = False
        return dropped
