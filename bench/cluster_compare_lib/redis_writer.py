"""A writer over redis-py's asyncio client: SET key value on its own connection.

Used for kvorum and for the PySyncObj front end, so that both are driven by the
same client code and the difference between them is on the server side.
"""

from __future__ import annotations

import redis.asyncio
import redis.exceptions

from .load import WriteError

SOCKET_TIMEOUT_S = 10.0


class RedisWriter:
    """One redis.asyncio.Redis with a single connection, to one server.

    A -MOVED reply (the leader changed during the run) counts as a failed write
    and moves this writer to the node it names, so a leader change costs a few
    errors rather than the rest of the window.
    """

    def __init__(self, system: str, host: str, port: int) -> None:
        self.system = system
        self.client = self._connect(host, port)

    @staticmethod
    def _connect(host: str, port: int) -> redis.asyncio.Redis:
        return redis.asyncio.Redis(host=host, port=port, single_connection_client=True,
                                   socket_timeout=SOCKET_TIMEOUT_S)

    async def write(self, key: bytes, value: bytes) -> None:
        try:
            await self.client.set(key, value)
        except redis.exceptions.MovedError as e:
            await self.client.aclose()
            self.client = self._connect(e.host, e.port)
            raise WriteError(f"{self.system}: MOVED to {e.host}:{e.port}") from e
        except (redis.exceptions.RedisError, OSError) as e:
            raise WriteError(f"{self.system}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        await self.client.aclose()


class RedisClusterWriter:
    """One writer's handle on a redis.asyncio.RedisCluster shared by all writers of a run.

    RedisCluster keeps a connection pool per node and takes a free connection
    for each command, so N writers use N connections to the leader, as N
    RedisWriters do, with redis-py's slot routing and -MOVED handling on top.
    """

    def __init__(self, system: str, cluster: redis.asyncio.RedisCluster, on_close) -> None:
        self.system = system
        self.cluster = cluster
        self.on_close = on_close

    async def write(self, key: bytes, value: bytes) -> None:
        try:
            await self.cluster.set(key, value)
        except (redis.exceptions.RedisError, OSError) as e:
            raise WriteError(f"{self.system}: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        await self.on_close()
