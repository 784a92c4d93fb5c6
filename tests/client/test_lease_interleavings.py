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
