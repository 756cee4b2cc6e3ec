"""Which database errors mean "not now" rather than "never": the storage layer turns them into
`StorageUnavailable` (503 with `Retry-After` at the API), so a database that restarts, a
connection killed under a node or a locked SQLite file never answers 500, and the node goes
on by itself once the database is back (the pool reconnects on the next use)."""

from __future__ import annotations

import asyncio

import asyncpg
import sqlalchemy.exc

from taskyard import errors

# Errors of the connection, not of the statement: asyncpg's and the socket's own, and what
# SQLAlchemy wraps them in. SQLite's OperationalError is "database is locked" or a disk error.
_TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection ended by the server, met mid-protocol
    OSError,  # includes ConnectionError: refused, reset
    asyncio.TimeoutError,
)


class CommitOutcomeUnknown(Exception):
    """COMMIT was sent and no answer came back: the transaction may or may not be durable.
    Replaying it blindly could store something twice."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or used just now."""
    if isinstance(exc, errors.StorageUnavailable | CommitOutcomeUnknown):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _TRANSIENT)


def unavailable(exc: BaseException) -> errors.StorageUnavailable:
    """The domain's error for a transient database failure. Its message names the kind of
    failure only: a driver's text can carry the database URL or a query's parameters."""
    if isinstance(exc, errors.StorageUnavailable):
        return exc
    return errors.StorageUnavailable(f"database unavailable ({type(exc).__name__}); try again")
