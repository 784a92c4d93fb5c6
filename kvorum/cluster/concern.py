"""Write concerns: when a replicated write is acknowledged to its client.

- ONE: once the leader's own log holds it durably (blind writes only; see
  kvorum.server.raft_driver). Lost if the leader dies before a majority stores it.
- MAJORITY (default): once it is committed, i.e. durable on a majority of voters.
  Survives the loss of any minority.
- ALL: once every voter stores it. Survives the loss of all but one voter.
"""

import enum


class WriteConcern(enum.Enum):
    ONE = "one"
    MAJORITY = "majority"
    ALL = "all"


WRITE_CONCERNS = tuple(c.value for c in WriteConcern)
