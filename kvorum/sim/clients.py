"""Simulated clients: one op at a time, retried until answered or timed out.

Theory of operation
-------------------
A client invokes an op (recorded in the history at that instant) and sends it
to the node it believes leads. Reads go through `read_barrier` (linearizable),
writes through `propose`. Three things can happen:

- the node answers (the entry applied with the proposal's term, or the read
  barrier passed and the read was served): the op completes `ok`;
- the node says the op definitely did not happen (ProposalDropped, a dropped
  read barrier, a different term's entry applied at the proposal's index, the
  node is down): the client retries the *same* op, on the leader the node
  named if any, else on another node, after a short back-off. Retrying is
  safe because nothing took effect;
- nothing is heard by the op's deadline: the op is recorded as `unknown`
  (it may still take effect later) and the client moves on.

Answers are delivered to the client directly (no network hop), so the response
instant is when the node served it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvorum.consensus.replicated_log import ProposalDropped
from kvorum.sim.statemachine import Command, encode_command

if TYPE_CHECKING:
    from kvorum.sim.world import World


@dataclass(frozen=True, slots=True)
class ClientKnobs:
    count: int = 4
    keys: int = 3
    op_timeout_ms: float = 300.0
    think_ms_max: float = 10.0
    retry_ms_min: float = 2.0
    retry_ms_max: float = 15.0
    # Chance that a new op goes to a random node instead of the last one that
    # answered: clients spread over stale and new leaders, as real ones do.
    wander_rate: float = 0.25
    # Relative weights of op kinds.
    weight_get: int = 40
    weight_put: int = 25
    weight_cas: int = 10
    weight_incr: int = 15
    weight_delete: int = 10
    # The first `read_mostly` clients only read (a cache's typical reader);
    # they stay on a deposed leader for as long as it answers them.
    read_mostly: int = 1

    def __post_init__(self) -> None:
        assert self.count >= 1 and self.keys >= 1
        assert 0 < self.retry_ms_min <= self.retry_ms_max < self.op_timeout_ms


@dataclass(slots=True)
class PendingOp:
    op_id: int
    kind: str
    key: str
    args: tuple[Any, ...]
    deadline: float
    attempt: int = 0


class Client:
    def __init__(self, world: World, client_id: str, knobs: ClientKnobs) -> None:
        self.world = world
        self.id = client_id
        self.knobs = knobs
        self.target: str | None = None
        self.op: PendingOp | None = None
        self.last_seen: dict[str, Any] = {}  # key -> value last read or written, for CAS
        self.values_written = 0
        self._kinds = ["get", "put", "cas", "incr", "delete"]
        self._weights = [knobs.weight_get, knobs.weight_put, knobs.weight_cas, knobs.weight_incr, knobs.weight_delete]
        if int(client_id[1:]) <= knobs.read_mostly:
            self._weights = [1, 0, 0, 0, 0]

    # --- starting an op --------------------------------------------------------

    def next_op(self) -> None:
        """Event: invoke a new op (the previous one is finished)."""
        assert self.op is None
        world, rng = self.world, self.world.rng
        kind = rng.choices(self._kinds, self._weights)[0]
        key = f"k{rng.randrange(self.knobs.keys)}"
        if kind == "put":
            args: tuple[Any, ...] = (self._fresh_value(),)
        elif kind == "cas":
            args = (self.last_seen.get(key), self._fresh_value())
        elif kind == "incr":
            args = (rng.randint(1, 3),)
        else:
            args = ()
        if rng.random() < self.knobs.wander_rate:
            node = world.pick_node(rng)
            self.target = node.id if node else None
        now = world.now
        op_id = world.recorder.invoke(self.id, kind, key, args, now)
        self.op = PendingOp(op_id, kind, key, args, now + self.knobs.op_timeout_ms)
        world.schedule_client_timeout(self, op_id, self.op.deadline)
        self.submit(op_id)

    def _fresh_value(self) -> str:
        # Values unique per write make the checker's job precise and cheap.
        self.values_written += 1
        return f"{self.id}.{self.values_written}"

    # --- sending it ------------------------------------------------------------

    def submit(self, op_id: int) -> None:
        """Event: send the current op (first try or a retry) to the target node."""
        op = self.op
        if op is None or op.op_id != op_id:
            return
        world = self.world
        node = world.nodes.get(self.target) if self.target else None
        if node is None or not node.up:
            node = world.pick_node(self.world.rng, exclude=self.target)
            self.target = node.id if node else None
        if node is None or not node.up:
            self.retry(op_id, "no node is up")
            return
        op.attempt += 1
        try:
            if op.kind == "get":
                ctx = f"{self.id}/{op_id}/{op.attempt}".encode()
                node.read(ctx, self.id, op_id, op.key)
            else:
                data = encode_command(Command(self.id, op_id, op.kind, op.key, op.args))
                node.propose(data, self.id, op_id)
        except ProposalDropped:
            leader = node.status().leader if node.up else None
            self.target = leader if leader and leader != node.id else None
            if self.target is None:
                other = world.pick_node(world.rng, exclude=node.id)
                self.target = other.id if other else None
            self.retry(op_id, f"{node.id} refused")
            return
        world.trace_client(self, f"sent #{op_id} {op.kind} {op.key} to {node.id}")

    def retry(self, op_id: int, reason: str) -> None:
        """Called when the op definitely did not take effect."""
        op = self.op
        if op is None or op.op_id != op_id:
            return
        world = self.world
        delay = world.rng.uniform(self.knobs.retry_ms_min, self.knobs.retry_ms_max)
        if world.now + delay >= op.deadline:
            return  # the timeout will close it
        world.trace_client(self, f"retry #{op_id}: {reason}")
        world.schedule_client_submit(self, op_id, world.now + delay)

    # --- finishing it -------------------------------------------------------------

    def answered(self, op_id: int, result: Any) -> None:
        op = self.op
        if op is None or op.op_id != op_id:
            return
        world = self.world
        world.recorder.ok(op_id, result, world.now)
        if op.kind == "get":
            self.last_seen[op.key] = result
        elif op.kind == "put" or (op.kind == "cas" and result is True):
            self.last_seen[op.key] = op.args[-1]
        elif op.kind == "delete":
            self.last_seen[op.key] = None
        world.trace_client(self, f"ok #{op_id} {op.kind} {op.key} -> {result!r}")
        self._finish()

    def timed_out(self, op_id: int) -> None:
        op = self.op
        if op is None or op.op_id != op_id:
            return
        self.world.recorder.unknown(op_id)
        self.world.trace_client(self, f"timeout #{op_id} {op.kind} {op.key}")
        self.target = None
        self._finish()

    def _finish(self) -> None:
        self.op = None
        world = self.world
        world.schedule_client_next(self, world.now + world.rng.uniform(0, self.knobs.think_ms_max))
