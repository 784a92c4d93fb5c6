"""The keyspace (sans-I/O): values, versions, TTL, memory accounting, eviction."""

from kvorum.store.keyspace import POLICIES, STRING_BYTES_MAX, Keyspace

__all__ = ["Keyspace", "POLICIES", "STRING_BYTES_MAX"]
