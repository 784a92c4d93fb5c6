"""Cache-aside with leases under random interleavings: the cache never ends older than the database.

Readers and writers of one key are step machines, advanced one step at a time in
an order a seeded scheduler picks, so every interleaving of "read the database"
and "fill the cache" against "update the database" and "delete the cache entry"
comes up:

    reader: LEASEGET -> (on a lease) read the database -> LEASESET with the token
    writer: update the database -> DEL the cache key

Once every machine has finished, the cache holds the database's value or
nothing. That is the property leases give (Facebook memcache, NSDI 2013, 3.2.1):
a reader that read the database before a writer's delete cannot put its value
back, because the delete voided its token. With a plain SET in place of LEASESET
the same schedules leave stale values behind, which shows the check can fail.
The machines live in client_support.py; test_client_cluster.py runs them on a cluster.
"""

from __future__ import annotations

import pytest

from client_support import lease_fill, plain_fill, stale_rounds


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_leases_never_leave_the_cache_older_than_the_database(node, client_factory, seed):
    assert stale_rounds(client_factory(), lease_fill, seed) == 0


def test_without_leases_the_same_schedules_leave_stale_values(node, client_factory):
    assert stale_rounds(client_factory(), plain_fill, 1) > 0


def test_get_or_load_with_concurrent_writers_ends_with_the_database_value(node, client_factory):
    """Threads: readers call get_or_load with a loader that reads the database slowly, writers
    update the database and then delete the key. Once all stop, the cache holds the database's
    last value or nothing, round after round. (Readers that get, load and SET without a lease
    leave a stale value behind in a few rounds of 30.)"""
    import threading
    import time

    db = {"value": "v0"}
    lock = threading.Lock()
    stale_rounds_seen = 0
    for round_number in range(30):
        stop = threading.Event()

        def load():
            with lock:
                value = db["value"]
            time.sleep(0.002)  # the database answers slowly: writers get in between
            return value

        def reader():
            client = client_factory()
            while not stop.is_set():
                client.get_or_load("row:2", load, wait_s_max=1.0)

        def writer(number):
            client = client_factory()
            for i in range(5):
                with lock:
                    db["value"] = f"r{round_number}w{number}.{i}"
                client.delete("row:2")
                time.sleep(0.003)

        readers = [threading.Thread(target=reader) for _ in range(3)]
        writers = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
        for thread in readers + writers:
            thread.start()
        for thread in writers:
            thread.join()
        stop.set()
        for thread in readers:
            thread.join()
        cached = client_factory().get("row:2")
        if cached is not None and cached != db["value"].encode():
            stale_rounds_seen += 1
    assert stale_rounds_seen == 0
