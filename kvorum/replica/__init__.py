"""The replicated state machine: what a replica group's log entries do to its keyspace.

Sits between `commands` (the handlers every replica runs) and `server` (which
proposes entries and drives the engine). It knows nothing of sockets or
clocks: the leader's time stamp travels in each entry.
"""
