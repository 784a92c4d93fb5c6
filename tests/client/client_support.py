"""Helpers of the client tests (a module of its own: test files must not import `conftest`,
which names a different module in every test directory)."""

from __future__ import annotations

import random


def url_of(node) -> str:
    return f"redis://{node.host}:{node.port}"


def _random_write(rng: random.Random, plain, key: str, keys: list[str]) -> None:
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
        plain.rename(key, rng.choice(keys)) if plain.exists(key) else plain.set(key, "r")
    elif kind == 5:
        plain.flushall() if rng.random() < 0.1 else plain.set(key, rng.randrange(100))
    else:
        plain.set(key, f"v{rng.randrange(10_000)}")


def check_near_cache_under_random_writes(cached, plain, keys: list[str], steps: int, seed: int) -> None:
    """One thread: `plain` makes every kind of change to `keys` (SET, DEL, INCR, APPEND, EXPIREAT
    in the past, RENAME away and onto, FLUSHALL), `cached` writes through itself now and then
    (SET, and get_or_load filling a missing key under a lease), and each of its GET/MGET/
    get_or_load must equal a plain read right after: a read comes after every
    write acknowledged before it, so a near cache may never answer older."""
    rng = random.Random(seed)
    for step in range(steps):
        key = rng.choice(keys)
        action = rng.random()
        if action < 0.35:
            _random_write(rng, plain, key, keys)
        elif action < 0.42:
            cached.set(key, f"own{step}")
        elif action < 0.47:
            got = cached.get_or_load(key, lambda: f"loaded{step}")
            got = got.encode() if isinstance(got, str) else got  # a load returns the loader's own value
            assert got == plain.get(key), f"step {step}: get_or_load {key}: {got!r}"
        elif action < 0.8:
            got = cached.get(key)
            assert got == plain.get(key), f"step {step}: GET {key} from the near cache: {got!r}"
        else:
            some = rng.sample(keys, 3)
            got = cached.mget(some)
            assert got == plain.mget(some), f"step {step}: MGET {some} from the near cache: {got!r}"


class BlockingAsync:
    """An AsyncClient driven call by call from one event loop, shaped like the sync client.

    Between calls the loop does not run, so an invalidation that arrived meanwhile is still in
    the kernel's socket buffer, not in the connection's StreamReader, when the next read
    starts: the extreme of a loop that has not polled since the write was acknowledged
    elsewhere. The AsyncClient used to check the StreamReader only and served stale values.
    """

    def __init__(self, client, loop):
        self._client = client
        self._loop = loop

    def __getattr__(self, name):
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))


# Cache-aside with leases under random interleavings (tests/client/test_lease_interleavings.py).
LEASE_KEY = "row:1"
LEASE_ROUNDS = 300


def _lease_reader(client, db, fill):
    lease = client.lease_get(LEASE_KEY)
    yield
    if not lease.lease:
        return
    value = db["value"]
    yield
    fill(client, value, lease.token)


def _lease_writer(client, db, number):
    db["value"] = f"w{number}"
    yield
    client.delete(LEASE_KEY)


def _lease_round(rng, client, db, fill, round_number) -> None:
    machines = [_lease_reader(client, db, fill) for _ in range(rng.randrange(1, 4))]
    machines += [_lease_writer(client, db, f"{round_number}.{i}") for i in range(rng.randrange(1, 3))]
    rng.shuffle(machines)
    while machines:
        machine = rng.choice(machines)
        try:
            next(machine)
        except StopIteration:
            machines.remove(machine)


def lease_fill(client, value, token):
    client.lease_set(LEASE_KEY, value, token)


def plain_fill(client, value, _token):
    client.set(LEASE_KEY, value)


def stale_rounds(client, fill, seed: int) -> int:
    """Rounds of random reader/writer interleavings after which the cache differs from the database."""
    rng = random.Random(seed)
    db = {"value": "w0"}
    client.delete(LEASE_KEY)
    stale = 0
    for number in range(LEASE_ROUNDS):
        _lease_round(rng, client, db, fill, number)
        cached = client.get(LEASE_KEY)
        if cached is not None and cached != db["value"].encode():
            stale += 1
            client.delete(LEASE_KEY)  # start the next round clean
    return stale
