"""Cache writes tied to a SQLAlchemy transaction: applied after COMMIT, dropped on ROLLBACK.

Theory of operation. Code that changes rows also knows which cache keys those rows feed. Writing
the cache inside the transaction is wrong both ways: a rollback leaves the cache holding a value
the database never had, and a reader of the cache sees a value before it is committed. So
`CacheSync` only records, per session, what to do (`invalidate(session, key)`,
`set_ifnewer(session, key, value, version)`) in `session.info`, and applies the record from the
outermost transaction's end once its COMMIT has succeeded (`after_commit`, then
`after_transaction_end`), when the database has made the change durable and visible. A rollback,
or a session closed with its transaction open, throws the record away. A savepoint that rolls back
(`session.begin_nested()`) cannot tell which recorded writes it covered, so every recorded
`set_ifnewer` is turned into an invalidation of its key: deleting a key is always safe, storing a
value from a rolled-back savepoint is not.

`set_ifnewer` sends `SET key value IFNEWER version`: with a row version (a counter column, or a
commit timestamp from the database) two transactions that commit in one order and reach the cache
in the other cannot leave the older row cached. `invalidate` pairs with readers that use
`Client.get_or_load` (lease-protected cache-aside).

If the cache write itself fails after the commit (the cluster is unreachable), the error is
raised from `commit()` after the database committed; keys that were not written may be stale
until they expire, so give cached rows a TTL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

PENDING_KEY = "kvorum_cache_pending"
COMMITTED_KEY = "kvorum_cache_committed"
PENDING_MAX = 100_000  # cache writes one transaction may record


class CacheSync:
    """Records cache writes during a transaction and applies them after commit.

    `client` is a blocking `kvorum.Client` (SQLAlchemy's session events are synchronous).
    `target` is anything SQLAlchemy session events accept: a `Session`, a `sessionmaker`, the
    `Session` class (every session).
    """

    def __init__(self, client, target):
        self.client = client
        self.target = target
        for name, handler in self._events():
            event.listen(target, name, handler)

    def _events(self):
        return [("after_commit", self._after_commit),
                ("after_soft_rollback", self._after_soft_rollback),
                ("after_transaction_end", self._after_transaction_end)]

    def remove(self) -> None:
        """Stop listening to the target's events."""
        for name, handler in self._events():
            event.remove(self.target, name, handler)

    def invalidate(self, session, *keys) -> None:
        """Delete `keys` from the cache once the session's transaction commits."""
        for key in keys:
            self._record(session, ("delete", key))

    def set_ifnewer(self, session, key, value, version: int, *, ex: float | None = None) -> None:
        """After commit, `SET key value IFNEWER version` (refused if the cache holds a newer row)."""
        self._record(session, ("set", key, value, int(version), ex))

    @staticmethod
    def pending(session) -> list[tuple]:
        return list(session.info.get(PENDING_KEY, ()))

    def _record(self, session, op: tuple) -> None:
        pending = session.info.setdefault(PENDING_KEY, [])
        if len(pending) >= PENDING_MAX:
            raise OverflowError(f"more than {PENDING_MAX} cache writes in one transaction")
        pending.append(op)

    # SQLAlchemy fires after_commit for a released savepoint too, and after_transaction_end for
    # savepoints and for the subtransaction of every flush; only the end of the outermost
    # transaction (parent None) settles the record: applied if it committed, dropped otherwise
    # (rollback, or a session closed with the transaction open).

    def _after_commit(self, session) -> None:
        session.info[COMMITTED_KEY] = True

    def _after_transaction_end(self, session, transaction) -> None:
        committed = session.info.pop(COMMITTED_KEY, False)
        if transaction.parent is not None:
            return
        pending = session.info.pop(PENDING_KEY, ())
        if committed:
            for op in pending:
                self._apply(op)

    def _apply(self, op: tuple) -> None:
        if op[0] == "delete":
            self.client.delete(op[1])
            return
        _, key, value, version, ex = op
        self.client.set_ifnewer(key, value, version, ex=ex)

    def _after_soft_rollback(self, session, previous_transaction: Any) -> None:
        if not previous_transaction.nested:
            return
        pending = session.info.get(PENDING_KEY)
        if pending:
            session.info[PENDING_KEY] = [op if op[0] == "delete" else ("delete", op[1])
                                         for op in pending]
