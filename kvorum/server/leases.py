"""Lease tokens against stale sets (Facebook memcache's leases), held by one node.

Theory of operation
-------------------
A reader that misses the cache asks for a lease (`LEASEGET`); the node gives
the first one a token and tells the others to wait, so one process reloads
from the database instead of all of them (no thundering herd). The holder
stores its value with `LEASESET key value token`, which succeeds only if the
token is still in this table: any write or delete of the key since the token
was issued removes it: changes through the keyspace's key listener (expiry,
eviction and flushes included), and every write command naming the key
through dispatch (`void_keys`), even one that changed nothing, such as a DEL of
a key that is already missing, which is exactly what a writer sends after
updating the database. So a reader that read the database before a writer
updated it and deleted the cache entry cannot put its old value back: the
delete voided its token.

The table is server state, not replicated and not persisted: after a restart
or a failover the new node's table is empty and every old token is refused,
which is safe (the holder reloads or simply does not fill the cache). Tokens
start at a random base drawn by the caller, so a restarted node does not hand
out again the numbers its predecessor gave out.

Bounded: at most `leases_max` outstanding leases; issuing one more drops the
oldest (its holder's LEASESET is then refused). Expired leases stay until
their key is touched, asked for again, or they are the oldest.

The listener is installed only while some lease is outstanding, so writes pay
nothing for leases when nobody uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvorum.store import Keyspace

if TYPE_CHECKING:
    from kvorum.commands.table import Command

# Outstanding leases kept at most; issuing one more drops the oldest.
LEASES_MAX = 65536
# Tokens are integers below this bound (they travel as RESP integers, signed 64-bit).
TOKEN_MAX = 1 << 62


class LeaseTable:
    def __init__(self, db: Keyspace, token_base: int, leases_max: int = LEASES_MAX):
        assert 0 <= token_base < TOKEN_MAX
        assert leases_max > 0
        self.db = db
        self.leases_max = leases_max
        self._token_last = token_base
        # key -> (token, expires_at_ms), oldest first; dispatch tests it for emptiness.
        # Invariant: the keyspace listener `void` is installed iff outstanding is not empty.
        self.outstanding: dict[bytes, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.outstanding)

    def acquire(self, key: bytes, now_ms: int, lease_ms: int) -> int | None:
        """A new token for a missed key, or None while an unexpired lease is outstanding."""
        assert lease_ms > 0
        held = self.outstanding.pop(key, None)
        if held is not None and held[1] > now_ms:
            self.outstanding[key] = held
            return None
        if len(self.outstanding) >= self.leases_max:
            del self.outstanding[next(iter(self.outstanding))]
        # Past 2**62 tokens (never, in practice) the numbers start again from 1.
        self._token_last = self._token_last % (TOKEN_MAX - 1) + 1
        self.outstanding[key] = (self._token_last, now_ms + lease_ms)
        self._listen()
        return self._token_last

    def consume(self, key: bytes, token: int, now_ms: int) -> bool:
        """Whether `token` is the key's valid lease; a valid one is used up."""
        held = self.outstanding.get(key)
        if held is None or held[0] != token:
            return False
        del self.outstanding[key]
        self._listen()
        return held[1] > now_ms

    def void(self, key: bytes | None) -> None:
        """The keyspace listener: a change of `key` (None: everything) voids its lease."""
        if key is None:
            self.outstanding.clear()
        elif self.outstanding.pop(key, None) is None:
            return
        self._listen()

    def void_keys(self, cmd: Command, argv: list[bytes]) -> None:
        """A write command ran: void the leases of every key it names.

        Except LEASESET's: a valid one has used its token up already, and a
        refused one wrote nothing, so it must not take the holder's lease away.
        """
        if cmd.name == "leaseset":
            return
        outstanding = self.outstanding
        for i in cmd.key_positions(len(argv)):
            outstanding.pop(argv[i], None)
        self._listen()

    def _listen(self) -> None:
        installed = self.db.has_key_listener(self.void)
        if self.outstanding and not installed:
            self.db.add_key_listener(self.void)
        elif not self.outstanding and installed:
            self.db.remove_key_listener(self.void)
        assert self.db.has_key_listener(self.void) == bool(self.outstanding)
