"""A near cache against the server under a random single-threaded workload: never a stale read.

One plain connection writes (every kind of change a cached key can see: SET,
overwrite, DEL, INCR, APPEND, EXPIRE in the past, RENAME away and onto, hash
writes, FLUSHALL), the near-cache client writes through itself now and then,
and reads (GET, MGET) come from the near cache. Everything runs in one thread,
so a read comes after every write acknowledged before it, and must equal what a
plain GET returns right after. Both modes; the same seeded stream each time.
"""

from __future__ import annotations

import random

import pytest

KEYS = [f"r{i}" for i in range(6)]
STEPS = 3000


def _write(rng: random.Random, plain, key: str) -> None:
    kind = rng.randrange(10)
    if kind == 0:
        plain.delete(key)
    elif kind == 1:
        plain.incr(key) if (plain.get(key) or b"0").lstrip(b"-").isdigit() else plain.set(key, 1)
    elif kind == 2:
        plain.append(key, "+")
    elif kind == 3:
        plain.expireat(key, 1)  # a deadline in the past: the key goes at once
    elif kind == 4:
        plain.rename(key, rng.choice(KEYS)) if plain.exists(key) else plain.set(key, "r")
    elif kind == 5:
        plain.flushall() if rng.random() < 0.1 else plain.set(key, rng.randrange(100))
    else:
        plain.set(key, f"v{rng.randrange(10_000)}")


@pytest.mark.parametrize("mode", ["strict", "tracking"])
def test_near_cache_never_serves_a_value_older_than_the_last_acknowledged_write(node, client_factory, mode):
    rng = random.Random(5)
    cached = client_factory(near_cache=mode)
    with node.client() as plain:
        for step in range(STEPS):
            key = rng.choice(KEYS)
            action = rng.random()
            if action < 0.35:
                _write(rng, plain, key)
            elif action < 0.42:
                cached.set(key, f"own{step}")
            elif action < 0.8:
                assert cached.get(key) == plain.get(key), f"step {step}: GET {key}"
            else:
                keys = rng.sample(KEYS, 3)
                assert cached.mget(keys) == plain.mget(keys), f"step {step}: MGET {keys}"
    stats = cached.near_cache_stats()
    assert stats["hits" if mode == "tracking" else "not_modified"] > 100, stats
