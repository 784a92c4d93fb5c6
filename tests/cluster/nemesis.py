"""The fault suites' nemesis: faults dealt from a shuffled deck, one at a time, on a proxied LocalCluster.

`Nemesis` is a thread. In a loop it waits a moment, draws the next card of
its deck (every action once per round, in an order drawn from its seed) and
plays it to the end, healing what it broke, before the next one; it logs one
line per event. `run_for(seconds)` plays for that long, lets the card in
play finish and raises the first error a card met.

Faults (FAULTS), on the members of the moment:

    kill-leader     SIGKILL the leader; restart it after a while
    pause-random    SIGSTOP a random member (sometimes the leader); SIGCONT later
    pause-leader    the same, always the leader
    isolate-leader  cut the leader's links both ways; heal later
    split           cut one random member from the others, both ways
    one-way         cut one direction only: one directed link, everything the
                    leader sends, or everything it receives
"""

from __future__ import annotations

import random
import threading
import time

from netproxy import BLACKHOLE, RESET

FAULTS = ("kill-leader", "pause-random", "pause-leader", "isolate-leader", "split", "one-way")
NEMESIS_GAP_S = (0.5, 1.5)
FAULT_LENGTH_S = (0.5, 2.5)
PARTITION_LENGTH_S = (1.0, 4.0)  # long enough, often, for an election and a CheckQuorum step-down


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
    """Plays `actions` (names from FAULTS) from a deck shuffled by `seed`."""

    def __init__(self, cluster, proxy, actions: tuple[str, ...], seed: int):
        super().__init__(daemon=True, name="nemesis")
        assert set(actions) <= set(FAULTS), actions
        self.cluster = cluster
        self.proxy = proxy
        self.actions = actions
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.events: list[str] = []
        self.counts: dict[str, int] = {}  # what was done, by kind
        self.error: BaseException | None = None
        self._plays = {
            "kill-leader": self.kill_leader, "pause-random": self.pause_random, "pause-leader": self.pause_leader,
            "isolate-leader": self.isolate_leader, "split": self.split, "one-way": self.one_way,
        }

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
