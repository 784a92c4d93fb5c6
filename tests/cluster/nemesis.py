"""The fault suites' nemesis: faults dealt from a shuffled deck, one at a time, on a proxied LocalCluster.

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
    remove          CLUSTER MEMBER REMOVE of a random follower, which must then
                    stop by itself
    remove-leader   the same for the leader, which hands leadership over first
    replace         SIGKILL a random voter (sometimes the leader), then CLUSTER
                    MEMBER ADD <fresh id> ... REPLACE <it> and start the newcomer
                    with --join; the dead one is never restarted
    move-leader     CLUSTER MOVE-LEADER to a random follower
    failover        CLUSTER FAILOVER on a random follower

The voters stay between VOTERS_MIN and VOTERS_MAX: a removal drawn at
VOTERS_MIN first has a newcomer join, and a join drawn at VOTERS_MAX first
removes a follower, so every card is played as drawn. Node ids count up and
are never reused. No change is dealt during another fault: a node cut off
while it is removed never hears of it (nothing tells a removed node it was
removed once the leader stops replicating to it) and keeps running, which the
check that a removed node stops would report. A leadership transfer that does not land within
TRANSFER_TIMEOUT_S is logged, not failed: the engine may abort one (its
target was not caught up in time), which costs availability, not safety.
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


def partition(cluster, proxy, action: str, leader, rng: random.Random) -> str:
    """Cut links for `action` among the members; returns what was cut, for the nemesis log.

    Only links that go through the proxy can be cut (`proxy.links`): once the
    nodes the cluster started with are all gone, none of the members' links do.
    """
    ids = [n.id for n in cluster.nodes]
    proxied = sorted(p for p in proxy.links if p[0] in ids and p[1] in ids)
    if not proxied:
        return "no link between members goes through the proxy"
    how = rng.choice((BLACKHOLE, RESET))
    if action in ("isolate-leader", "split"):
        alone = leader.id if action == "isolate-leader" else rng.choice(ids)
        proxy.split({alone}, set(ids) - {alone}, how=how)
        named = [(a, b) for a in ids for b in ids if a != b and alone in (a, b)]
        cut = [p for p in named if p in proxy.links]
        counted = "" if len(cut) == len(named) else f", {len(cut)} of {len(named)} links"
        if action == "isolate-leader":
            return f"isolate {alone} ({how}{counted})"
        return f"split {alone}|{','.join(i for i in ids if i != alone)} ({how}{counted})"
    others = [i for i in ids if i != leader.id]
    choices = [
        [tuple(rng.sample(ids, 2))],
        [(leader.id, o) for o in others],
        [(o, leader.id) for o in others],
    ]
    pairs = [p for p in rng.choice(choices) if p in proxy.links]
    if not pairs:  # that direction is dialed straight to a node that joined later: cut another link
        pairs = [rng.choice(proxied)]
    proxy.drop(pairs, how)
    return f"one-way {' '.join(f'{a}->{b}' for a, b in pairs)} ({how})"


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
                self._plays[deck.pop()](leader)
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
        return f"faults {self.counts}, nemesis: {'; '.join(self.events)}"

    # Faults.

    def kill_leader(self, leader) -> None:
        leader.kill()
        self.log(f"kill {leader.id}")
        time.sleep(self.rng.uniform(*FAULT_LENGTH_S))
        leader.start()
        leader.wait_listening()  # one fault at a time: the next one finds it back
        self.log(f"restart {leader.id}")
        self.done("kill-leader")

    def pause_random(self, leader) -> None:
        self._pause(self.rng.choice(self.cluster.nodes), "pause-random")

    def pause_leader(self, leader) -> None:
        self._pause(leader, "pause-leader")

    def _pause(self, victim, kind: str) -> None:
        if not victim.alive:
            return
        victim.pause()
        self.log(f"pause {victim.id}")
        time.sleep(self.rng.uniform(*FAULT_LENGTH_S))
        victim.resume()
        self.log(f"resume {victim.id}")
        self.done(kind)

    def isolate_leader(self, leader) -> None:
        self._partition("isolate-leader", leader)

    def split(self, leader) -> None:
        self._partition("split", leader)

    def one_way(self, leader) -> None:
        self._partition("one-way", leader)

    def _partition(self, action: str, leader) -> None:
        self.log(partition(self.cluster, self.proxy, action, leader, self.rng))
        ids = {n.id for n in self.cluster.nodes}
        if not any(a in ids and b in ids for a, b in self.proxy.cut_links()):
            self.proxy.heal()
            self.done(f"{action} cut nothing")
            return
        time.sleep(self.rng.uniform(*PARTITION_LENGTH_S))
        self.proxy.heal()
        self.log("heal")
        self.done(action)

    # Membership changes.

    def add_node(self, leader) -> None:
        if len(self.changes.voters()) >= VOTERS_MAX:
            self._remove(self._pick_follower())
        self.changes.join(self.rng.choice(self.cluster.nodes))
        self.done("join")

    def remove_follower(self, leader) -> None:
        if len(self.changes.voters()) <= VOTERS_MIN:
            self.changes.join(self.rng.choice(self.cluster.nodes))
            self.done("join")
        self._remove(self._pick_follower())

    def remove_leader(self, leader) -> None:
        if len(self.changes.voters()) <= VOTERS_MIN:
            self.changes.join(self.rng.choice(self.cluster.nodes))
            self.done("join")
        self._remove(self.cluster.wait_leader())

    def _remove(self, victim) -> None:
        was_leader = self.changes.remove(victim)
        self.done("remove-leader" if was_leader else "remove")

    def replace_voter(self, leader) -> None:
        voters = self.changes.voters()
        victim = self.rng.choice(voters)
        victim.kill()
        self.log(f"kill {victim.id}{' (the leader)' if victim is leader else ''}")
        self.changes.replace(victim, via=self.rng.choice([n for n in voters if n is not victim]))
        self.done("replace")

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
    node logs. New nodes' links go through `proxy` where they can (see
    `NetProxy.add_dialer`); `log` gets one line per event.
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
            self.proxy.add_dialer(node.id)
        return node

    def join(self, via):
        """A fresh node joins through `via` and becomes a voter; the node."""
        voters = self.voters()
        node = self.new_node(via)
        node.start()
        self.log(f"join {node.id} via {via.id}")
        self.cluster.wait_members({n.id: "voter" for n in voters} | {node.id: "voter"}, MEMBERSHIP_TIMEOUT_S)
        self.log(f"{node.id} votes")
        return node

    def remove(self, victim) -> bool:
        """CLUSTER MEMBER REMOVE `victim`, which must leave the membership and stop; whether it led."""
        voters = self.voters()
        was_leader = self.cluster.leader() is victim
        on_leader(self.cluster, "CLUSTER", "MEMBER", "REMOVE", victim.id)
        self.log(f"remove {victim.id}{' (the leader)' if was_leader else ''}")
        self.cluster.wait_members({n.id: "voter" for n in voters if n is not victim}, MEMBERSHIP_TIMEOUT_S)
        try:
            victim.process.wait(timeout=REMOVED_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{victim.id} was removed but still runs after {REMOVED_EXIT_TIMEOUT_S:.0f}s\n"
                                 + self.cluster.logs()) from None
        self.cluster.retire(victim)
        self.log(f"{victim.id} removed and stopped")
        return was_leader

    def replace(self, dead, via):
        """A fresh node takes the place of `dead` (a voter already killed): ADD ... REPLACE, then --join."""
        voters = [n for n in self.cluster.nodes if n is not dead]
        newcomer = self.new_node(via)
        on_leader(self.cluster, "CLUSTER", "MEMBER", "ADD", newcomer.id,
                  f"127.0.0.1:{newcomer.port}@{newcomer.bus_port}", "REPLACE", dead.id)
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
