"""The simulated network: loss, delay, duplication, reordering and partitions.

Theory of operation
-------------------
`send` decides a message's fate at once, from the world's single RNG: dropped,
delivered once, or delivered twice, each copy after its own random delay.
Independent delays are what reorder messages. Partitions are a set of blocked
directed links (`frm`, `to`); a symmetric partition blocks both directions,
a one-way partition only one. A message is lost if its link is blocked when it
is sent *or* when it would arrive, so healing a partition never resurrects
traffic sent across it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kvorum.consensus.replicated_log import NodeId


@dataclass(frozen=True, slots=True)
class NetworkKnobs:
    delay_ms_min: float = 1.0
    delay_ms_max: float = 12.0
    drop_rate: float = 0.02
    duplicate_rate: float = 0.02

    def __post_init__(self) -> None:
        assert 0 <= self.delay_ms_min <= self.delay_ms_max
        assert 0 <= self.drop_rate < 1 and 0 <= self.duplicate_rate < 1


class Network:
    def __init__(
        self,
        rng: random.Random,
        knobs: NetworkKnobs,
        schedule: Callable[[float, NodeId, Any], None],
    ) -> None:
        self._rng = rng
        self._knobs = knobs
        self._schedule = schedule  # schedule(arrival_time_ms, to, message)
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    def send(self, now: float, message: Any) -> None:
        self.sent += 1
        link = (message.frm, message.to)
        if link in self.blocked or self._rng.random() < self._knobs.drop_rate:
            self.dropped += 1
            return
        copies = 1
        if self._rng.random() < self._knobs.duplicate_rate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            delay = self._rng.uniform(self._knobs.delay_ms_min, self._knobs.delay_ms_max)
            self._schedule(now + delay, message.to, message)

    def deliverable(self, message: Any) -> bool:
        if (message.frm, message.to) in self.blocked:
            self.dropped += 1
            return False
        return True

    def partition(self, links: Iterable[tuple[NodeId, NodeId]]) -> None:
        """Replace the current partition (at most one is in force at a time)."""
        self.blocked = set(links)

    def heal(self) -> None:
        self.blocked.clear()


def split_links(side_a: Iterable[NodeId], side_b: Iterable[NodeId], one_way: bool) -> set[tuple[NodeId, NodeId]]:
    """Links cut by a partition between two sides; `one_way` cuts only a -> b."""
    a, b = list(side_a), list(side_b)
    links = {(x, y) for x in a for y in b}
    if not one_way:
        links |= {(y, x) for x in a for y in b}
    return links
