"""The fault suites' nemesis: faults dealt from a shuffled deck on a proxied LocalCluster.

`Nemesis` is a thread. In a loop it waits a moment, draws the next card of
its deck (every action once per round, in an order drawn from its seed) and
plays it to the end, healing what it broke, before the next one; it logs one
line per event. `run_for(seconds)` plays for that long, lets the card in
play finish and raises the first error a card met (a membership change not
done in time fails the test, with the node logs in the message).

Faults (FAULTS), on the members of the moment:

    kill-leader     SIGKILL the leader; restart it after a while
    pause-random    SIGSTOP a random member (sometimes the leader); SIGCONT later
    pause-leader    the same, always the leader
    isolate-leader  cut the leader's links both ways; heal later
    split           cut one random member from the others, both ways
    one-way         cut one direction only: one directed link, everything the
                    leader sends, or everything it receives

Membership changes (MEMBERSHIP), each followed until CLUSTER MEMBERS on the
leader shows it done (MEMBERSHIP_TIMEOUT_S):

    join            a fresh node starts with --join (learner first, promoted
                    by the leader once caught up)
    remove          CLUSTER MEMBER REMOVE of a random follower (during a fault,
                    the node it impairs), which must then stop by itself
    remove-leader   the same for the leader, which hands leadership over first
    replace         SIGKILL a random voter (sometimes the leader), then CLUSTER
                    MEMBER ADD <fresh id> ... REPLACE <it> and start the newcomer
                    with --join; the dead one is never restarted
    move-leader     CLUSTER MOVE-LEADER to a random follower
    failover        CLUSTER FAILOVER on a random follower

A membership change may be played while a fault is in effect: when a fault
that lasts (LASTING: a pause or a partition) is drawn and the next card is a
membership change, that change is played during the fault, which is healed
once the change is done and the fault's time is up. Every such fault impairs
one node (the paused one, the one cut off, the one whose messages a one-way
cut drops or that hears nobody), so the others still form a majority and
talk both ways: a join goes through one of them (and, under isolate-leader or
split, the newcomer is cut from the impaired node too), a replacement
replaces the impaired node, and a removal of a follower removes the impaired
node unless it leads. A removal of the impaired node is done once the others'
CLUSTER MEMBERS shows it; the node itself may never receive the entries that
removed it, and must stop by itself once the fault is healed, when its peers
refuse its connections as those of a removed node.

The voters stay between VOTERS_MIN and VOTERS_MAX: a removal drawn at
VOTERS_MIN first has a newcomer join, and a join drawn at VOTERS_MAX first
removes a follower, so every card is played as drawn; one membership change
at a time. Node ids count up and are never reused. A node that joins binds
its own bus port and announces a proxy listener (`NetProxy.add_node`), so
the partitions cut its links too. A leadership transfer that does not land
within TRANSFER_TIMEOUT_S is logged, not failed: the engine may abort one
(its target was not caught up in time), which costs availability, not safety.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from typing import Callable

import redis
from redis.exceptions import ClusterDownError, MovedError, TryAgainError

from netproxy import BLACKHOLE, RESET

FAULTS = ("kill-leader", "pause-random", "pause-leader", "isolate-leader", "split", "one-way")
LASTING = ("pause-random", "pause-leader", "isolate-leader", "split", "one-way")  # a change may be played during
MEMBERSHIP = ("join", "remove", "remove-leader", "replace", "move-leader", "failover")
NEMESIS_GAP_S = (0.5, 1.5)
FAULT_LENGTH_S = (0.5, 2.5)
PARTITION_LENGTH_S = (1.0, 4.0)  # long enough, often, for an election and a CheckQuorum step-down
VOTERS_MIN = 3
VOTERS_MAX = 5
MEMBERSHIP_TIMEOUT_S = 30.0  # one membership change, from the request to CLUSTER MEMBERS showing it
REMOVED_EXIT_TIMEOUT_S = 20.0  # a removed node stops by itself (at worst after 5 s without a leader)
TRANSFER_TIMEOUT_S = 5.0
REQUEST_SOCKET_TIMEOUT_S = 5.0
RETRY_PAUSE_S = 0.1


def on_leader(cluster, *command: str, timeout_s: float = MEMBERSHIP_TIMEOUT_S) -> object:
    """`command`'s reply from the leader, retried while the answer proves it was not done.

    -MOVED, -CLUSTERDOWN, -TRYAGAIN and a dial that fails mean nothing
    happened; a lost reply or kvorum's -TIMEOUT leave the outcome unknown, so
    only idempotent requests go through here (ADD of the same address and
    REMOVE are; ADD ... REPLACE is until the swap is done, which takes longer
    than a retry). Fails the test, with the logs, after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    last = "no leader"
    while time.monotonic() < deadline:
        leader = cluster.leader()
        if leader is not None:
            try:
                with leader.client(socket_timeout=REQUEST_SOCKET_TIMEOUT_S, decode_responses=True) as r:
                    return r.execute_command(*command)
            except (MovedError, ClusterDownError, TryAgainError, redis.ConnectionError, redis.TimeoutError) as exc:
                last = f"{leader.id}: {type(exc).__name__} {exc}"
            except redis.ResponseError as exc:
                if not str(exc).startswith("TIMEOUT"):
                    raise
                last = f"{leader.id}: {exc}"
        time.sleep(RETRY_PAUSE_S)
    raise AssertionError(f"{' '.join(command)}: no answer within {timeout_s:.0f}s ({last})\n" + cluster.logs())


def partition(cluster, proxy, action: str, leader, rng: random.Random) -> tuple[str, str]:
    """Cut links for `action` among the members: (what was cut, for the nemesis log; the node every cut touches)."""
    ids = [n.id for n in cluster.nodes]
    how = rng.choice((BLACKHOLE, RESET))
    if action in ("isolate-leader", "split"):
        alone = leader.id if action == "isolate-leader" else rng.choice(ids)
        proxy.split({alone}, set(ids) - {alone}, how=how)
        if action == "isolate-leader":
            return f"isolate {alone} ({how})", alone
        return f"split {alone}|{','.join(i for i in ids if i != alone)} ({how})", alone
    others = [i for i in ids if i != leader.id]
    one = tuple(rng.sample(ids, 2))
    pairs, touched = rng.choice([
        ([one], one[0]),
        ([(leader.id, o) for o in others], leader.id),
        ([(o, leader.id) for o in others], leader.id),
    ])
    proxy.drop(pairs, how)
    return f"one-way {' '.join(f'{a}->{b}' for a, b in pairs)} ({how})", touched


class Nemesis(threading.Thread):
    """Plays `actions` (names from FAULTS and MEMBERSHIP) from a deck shuffled by `seed`."""

    def __init__(self, cluster, proxy, actions: tuple[str, ...], seed: int):
        super().__init__(daemon=True, name="nemesis")
        assert set(actions) <= set(FAULTS) | set(MEMBERSHIP), actions
        self.cluster = cluster
        self.proxy = proxy
        self.actions = actions
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.events: list[str] = []
        self.counts: dict[str, int] = {}  # what was done, by kind
        self.error: BaseException | None = None
        self.changes = Changes(cluster, proxy, self.log)
        # While a fault that lasts is in effect: the node it impairs, and the nodes removed
        # meanwhile that must stop by themselves once it is healed.
        self.impaired = None
        self.recut: Callable[[], None] | None = None
        self.removed_during: list = []
        self._plays = {
            "kill-leader": self.kill_leader, "pause-random": self.pause_random, "pause-leader": self.pause_leader,
            "isolate-leader": self.isolate_leader, "split": self.split, "one-way": self.one_way,
            "join": self.add_node, "remove": self.remove_follower, "remove-leader": self.remove_leader,
            "replace": self.replace_voter, "move-leader": self.move_leader, "failover": self.failover,
        }
        assert set(self._plays) == set(FAULTS) | set(MEMBERSHIP)

    # Running.

    def run(self) -> None:
        deck: list[str] = []
        try:
            while not self.stop_event.is_set():
                time.sleep(self.rng.uniform(*NEMESIS_GAP_S))
                leader = self.cluster.leader()
                if leader is None or self.stop_event.is_set():
                    continue
                if not deck:  # every action once per round, in a random order
                    deck = self.rng.sample(self.actions, len(self.actions))
                card = deck.pop()
                if card in LASTING and deck and deck[-1] in MEMBERSHIP:
                    self._plays[card](leader, during=deck.pop())
                else:
                    self._plays[card](leader)
        except BaseException as exc:
            self.error = exc
            self.log(f"stopped by {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    def run_for(self, seconds: float) -> None:
        """Play for `seconds` (less if a card fails), finish the card in play; raise a card's error."""
        self.start()
        self.join(seconds)
        self.stop()
        if self.error is not None:
            print(self.summary())  # shown with the failure
            raise self.error

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join()

    def log(self, text: str) -> None:
        self.events.append(f"{time.monotonic():.2f} {text}")

    def done(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def summary(self) -> str:
        return f"faults {self.counts}, links cut {self.proxy.cuts()}, nemesis: {'; '.join(self.events)}"

    # Faults.

    def kill_leader(self, leader) -> None:
        leader.kill()
        self.log(f"kill {leader.id}")
        time.sleep(self.rng.uniform(*FAULT_LENGTH_S))
        leader.start()
        leader.wait_listening()  # one fault at a time: the next one finds it back
        self.log(f"restart {leader.id}")
        self.done("kill-leader")

    def pause_random(self, leader, during: str | None = None) -> None:
        self._pause(self.rng.choice([n for n in self.cluster.nodes if n.alive]), "pause-random", during)

    def pause_leader(self, leader, during: str | None = None) -> None:
        self._pause(leader, "pause-leader", during)

    def _pause(self, victim, kind: str, during: str | None) -> None:
        victim.pause()
        self.log(f"pause {victim.id}")
        self._hold(kind, victim, FAULT_LENGTH_S, during)
        if victim.alive:  # not if it was replaced meanwhile (killed)
            victim.resume()
            self.log(f"resume {victim.id}")
        self._healed(kind)

    def isolate_leader(self, leader, during: str | None = None) -> None:
        self._partition("isolate-leader", leader, during)

    def split(self, leader, during: str | None = None) -> None:
        self._partition("split", leader, during)

    def one_way(self, leader, during: str | None = None) -> None:
        self._partition("one-way", leader, during)

    def _partition(self, action: str, leader, during: str | None) -> None:
        text, touched = partition(self.cluster, self.proxy, action, leader, self.rng)
        self.log(text)

        def recut() -> None:  # a node that joins meanwhile is on the majority side
            self.proxy.split({touched}, {n.id for n in self.cluster.nodes} - {touched})

        one_way = action == "one-way"
        self._hold(action, self.cluster.node(touched), PARTITION_LENGTH_S, during, None if one_way else recut)
        self.proxy.heal()
        self.log("heal")
        self._healed(action)

    def _hold(self, kind: str, impaired, length_s: tuple[float, float], during: str | None,
              recut: Callable[[], None] | None = None) -> None:
        """Keep fault `kind` in effect for a while; play membership change `during` meanwhile, if any.

        `recut` extends the fault to the nodes that joined during it (called after each join)."""
        end_s = time.monotonic() + self.rng.uniform(*length_s)
        if during is not None:
            time.sleep(self.rng.uniform(0, (end_s - time.monotonic()) / 2))
            self.impaired, self.recut = impaired, recut
            try:
                self._plays[during](self.cluster.wait_leader())
            finally:
                self.impaired, self.recut = None, None
            self.done(f"{during} during {kind}")
        time.sleep(max(0.0, end_s - time.monotonic()))

    def _healed(self, kind: str) -> None:
        """Fault `kind` is over: the nodes removed during it stop by themselves."""
        for victim in self.removed_during:
            self.changes.stopped(victim)
        self.removed_during = []
        self.done(kind)

    # Membership changes.

    def add_node(self, leader) -> None:
        if len(self.changes.voters()) >= VOTERS_MAX:
            self._remove(self._pick_follower())
        self._join()

    def remove_follower(self, leader) -> None:
        if len(self.changes.voters()) <= VOTERS_MIN:
            self._join()
        # During a fault, the node it impairs, unless it still leads: that removal is the one to test.
        impaired = self.impaired
        if impaired in self.cluster.nodes and impaired.alive and impaired is not self.cluster.leader():
            self._remove(impaired)
        else:
            self._remove(self._pick_follower())

    def remove_leader(self, leader) -> None:
        if len(self.changes.voters()) <= VOTERS_MIN:
            self._join()
        self._remove(self.cluster.wait_leader())

    def _join(self) -> None:
        self.changes.join(self.rng.choice(self._unimpaired()), before_start=self.recut)
        self.done("join")

    def _remove(self, victim) -> None:
        impaired = victim is self.impaired
        was_leader = self.changes.remove(victim, wait_stopped=not impaired)
        if impaired:  # it hears of its removal only once the fault is healed
            self.removed_during.append(victim)
        self.done("remove-leader" if was_leader else "remove")

    def replace_voter(self, leader) -> None:
        voters = self.changes.voters()
        victim = self.impaired if self.impaired in voters else self.rng.choice(voters)
        victim.kill()
        self.log(f"kill {victim.id}{' (the leader)' if victim is leader else ''}")
        self.changes.replace(victim, via=self.rng.choice([n for n in self._unimpaired() if n is not victim]))
        self.done("replace")

    def _unimpaired(self) -> list:
        """The members no fault in effect impairs (all of them, between faults)."""
        return [n for n in self.cluster.nodes if n.alive and not n.paused and n is not self.impaired]

    def move_leader(self, leader) -> None:
        target = self._pick_follower(leader)
        self._transfer("move-leader", leader, target, ("CLUSTER", "MOVE-LEADER", target.id))

    def failover(self, leader) -> None:
        target = self._pick_follower(leader)
        self._transfer("failover", target, target, ("CLUSTER", "FAILOVER"))

    def _transfer(self, kind: str, asked, target, command: tuple[str, ...]) -> None:
        try:
            with asked.client(socket_timeout=REQUEST_SOCKET_TIMEOUT_S, decode_responses=True) as r:
                r.execute_command(*command)
        except (redis.RedisError, OSError) as exc:
            self.log(f"{kind} to {target.id} refused: {exc}")
            self.done(f"{kind} refused")
            return
        deadline = time.monotonic() + TRANSFER_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.cluster.leader() is target:
                self.log(f"{kind}: {target.id} leads")
                self.done(kind)
                return
            time.sleep(RETRY_PAUSE_S)
        self.log(f"{kind} to {target.id}: not done within {TRANSFER_TIMEOUT_S:.0f}s")
        self.done(f"{kind} not done")

    def _pick_follower(self, leader=None):
        leader = leader or self.cluster.wait_leader()
        return self.rng.choice([n for n in self.changes.voters() if n is not leader])


class Changes:
    """Membership changes on a LocalCluster, one at a time, each followed until CLUSTER MEMBERS shows it done.

    A change not done within MEMBERSHIP_TIMEOUT_S fails the test with the
    node logs. With a `proxy`, a new node announces a listener of its own as
    its bus port (`NetProxy.add_node`), so its links go through the proxy;
    `log` gets one line per event.
    """

    def __init__(self, cluster, proxy, log: Callable[[str], None]):
        self.cluster = cluster
        self.proxy = proxy
        self.log = log

    def voters(self) -> list:
        """The voters as the leader reports them, which must be every node of the cluster (no change under way)."""
        members = self.cluster.members()
        nodes = list(self.cluster.nodes)
        assert members == {n.id: "voter" for n in nodes}, (members, [n.id for n in nodes])
        return nodes

    def new_node(self, via):
        """A fresh node (not started) to join through `via`; node ids are never reused."""
        used = [int(n.id[1:]) for n in [*self.cluster.nodes, *self.cluster.retired]]
        node = self.cluster.add_node(f"n{max(used) + 1}", join_via=via)
        if self.proxy is not None:
            node.announce_bus_port = self.proxy.add_node(node.id, ("127.0.0.1", node.bus_port))
        return node

    def join(self, via, before_start: Callable[[], None] | None = None):
        """A fresh node joins through `via` and becomes a voter; the node. `before_start` runs once
        the node is one of the cluster's nodes (and the proxy's), before it starts."""
        voters = self.voters()
        node = self.new_node(via)
        if before_start is not None:
            before_start()
        node.start()
        self.log(f"join {node.id} via {via.id}")
        self.cluster.wait_members({n.id: "voter" for n in voters} | {node.id: "voter"}, MEMBERSHIP_TIMEOUT_S)
        self.log(f"{node.id} votes")
        return node

    def remove(self, victim, wait_stopped: bool = True) -> bool:
        """CLUSTER MEMBER REMOVE `victim`, which must leave the membership and stop; whether it led.

        Without `wait_stopped` the caller checks later (`stopped`) that it
        stopped: it is paused or cut off, and may learn of its removal only
        once it reaches a member.
        """
        voters = self.voters()
        was_leader = self.cluster.leader() is victim
        on_leader(self.cluster, "CLUSTER", "MEMBER", "REMOVE", victim.id)
        self.log(f"remove {victim.id}{' (the leader)' if was_leader else ''}")
        self.cluster.wait_members({n.id: "voter" for n in voters if n is not victim}, MEMBERSHIP_TIMEOUT_S)
        self.cluster.retire(victim)
        if wait_stopped:
            self.stopped(victim)
        return was_leader

    def stopped(self, victim) -> None:
        """`victim`, removed, stops by itself within REMOVED_EXIT_TIMEOUT_S."""
        try:
            victim.process.wait(timeout=REMOVED_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{victim.id} was removed but still runs after {REMOVED_EXIT_TIMEOUT_S:.0f}s\n"
                                 + self.cluster.logs()) from None
        self.log(f"{victim.id} removed and stopped")

    def replace(self, dead, via):
        """A fresh node takes the place of `dead` (a voter already killed): ADD ... REPLACE, then --join."""
        voters = [n for n in self.cluster.nodes if n is not dead]
        newcomer = self.new_node(via)
        on_leader(self.cluster, "CLUSTER", "MEMBER", "ADD", newcomer.id, newcomer.bus_address, "REPLACE", dead.id)
        newcomer.start()
        self.log(f"replace {dead.id} by {newcomer.id}")
        self.cluster.wait_members({n.id: "voter" for n in voters} | {newcomer.id: "voter"},
                                  MEMBERSHIP_TIMEOUT_S)
        self.cluster.retire(dead)
        self.log(f"{newcomer.id} replaced {dead.id}")
        return newcomer


def heal_everything(cluster, proxy) -> None:
    """Every link passes, every member runs (restarted or resumed) and answers."""
    proxy.heal()
    for node in cluster.nodes:
        if not node.alive:
            node.start()
        elif node.paused:
            node.resume()
    for node in cluster.nodes:
        node.wait_listening()
