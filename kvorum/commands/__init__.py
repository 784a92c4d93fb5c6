"""Command families. Importing this package registers every command in the table."""

from kvorum.commands import (  # noqa: F401  (imported to register their commands)
    connection,
    hashes,
    introspection,
    keys,
    leases,
    pubsub,
    scripting,
    server,
    strings,
    tracking,
    transactions,
    versions,
)
from kvorum.commands import cluster  # noqa: E402  (after connection: it adds CLIENT WRITECONCERN)
