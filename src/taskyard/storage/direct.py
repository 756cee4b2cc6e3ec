"""The hottest statements, run on the driver's own connection with their SQL compiled once.

SQLAlchemy's execution of a cached statement still costs tens of microseconds of Python per
call (cache key, parameters, result set-up): on the three statements every task runs (read by
id, insert, conditional update) it was a third of the event loop's time under load on SQLite;
on PostgreSQL, SQLAlchemy's async adaptation of asyncpg on top of that was 23 % of the node.
A `Statement` keeps the SQLAlchemy construct as the one definition, compiles it once per
dialect, and runs that SQL through `sqlite3` or `asyncpg` directly, in the same connection and
so the same transaction. Rows come back as dicts, with the same Python values SQLAlchemy gives
(Boolean columns as bools); driver errors are raised as SQLAlchemy's, so callers and `faults`
see no difference.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Connection
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.selectable import Select
from sqlalchemy.util import await_

_DIALECTS: dict[str, Dialect] = {
    "sqlite": pysqlite.dialect(),
    "postgresql": pg_asyncpg.dialect(),  # type: ignore[no-untyped-call]  # `$n` parameters with the casts asyncpg needs
}


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    order: tuple[str, ...]  # the parameters' names, in their positions
    defaults: Mapping[str, Any]  # values the statement holds itself (SQLite's OFFSET 0)

    def params(self, params: Mapping[str, Any]) -> list[Any]:
        defaults = self.defaults
        return [params[name] if name in params else defaults[name] for name in self.order]


class Statement:
    """`stmt`, compiled once for each database it runs on."""

    def __init__(self, stmt: Executable) -> None:
        self.stmt = stmt
        self._compiled: dict[str, _Compiled] = {}
        columns = stmt.selected_columns if isinstance(stmt, Select) else ()
        self.booleans = frozenset(c.name for c in columns if isinstance(c.type, Boolean))

    def compiled(self, dialect: str) -> _Compiled:
        found = self._compiled.get(dialect)
        if found is None:  # compiled at first use: some constructs exist for one dialect only
            compiled = self.stmt.compile(dialect=_DIALECTS[dialect])  # type: ignore[attr-defined]
            found = _Compiled(str(compiled), tuple(compiled.positiontup or ()), compiled.params)
            self._compiled[dialect] = found
        return found

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        if conn.dialect.name == "postgresql":
            return [dict(record) for record in _Postgres(conn, self).run("fetch", params)]
        cursor = self._sqlite(conn, "execute", self.compiled("sqlite").params(params))
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        if self.booleans:
            for row in rows:
                for name in self.booleans:
                    if row[name] is not None:
                        row[name] = bool(row[name])
        return rows

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        rows = self.rows(conn, params)
        return rows[0] if rows else None

    def rowcount(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run a write; how many rows it matched."""
        if conn.dialect.name == "postgresql":
            status: str = _Postgres(conn, self).run("execute", params)
            return int(status.rsplit(" ", 1)[-1])  # "UPDATE 1", "INSERT 0 1", "DELETE 0"
        return int(self._sqlite(conn, "execute", self.compiled("sqlite").params(params)).rowcount)

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a write once per row of parameters (one `executemany`)."""
        if conn.dialect.name == "postgresql":
            _Postgres(conn, self).many(rows)
            return
        compiled = self.compiled("sqlite")
        self._sqlite(conn, "executemany", [compiled.params(row) for row in rows])

    def _sqlite(self, conn: Connection, method: str, params: list[Any]) -> sqlite3.Cursor:
        dbapi = conn.connection.dbapi_connection
        sql = self.compiled("sqlite").sql
        try:
            cursor: sqlite3.Cursor = getattr(dbapi, method)(sql, params)
        except sqlite3.Error as exc:
            # As SQLAlchemy would raise it (IntegrityError, OperationalError...): the callers
            # and `faults` know those.
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
        return cursor


class _Postgres:
    """One run of a statement on the asyncpg connection under `conn`, from inside
    `AsyncConnection.run_sync` (whose greenlet lets `await_` wait for asyncpg)."""

    def __init__(self, conn: Connection, statement: Statement) -> None:
        self.conn = conn
        self.compiled = statement.compiled("postgresql")
        # SQLAlchemy's adapter of the asyncpg connection; it begins a transaction lazily, at
        # a connection's first statement, unless the connection is in autocommit.
        adapter: Any = conn.connection.dbapi_connection
        self.adapter = adapter
        self.raw: Any = adapter._connection  # the asyncpg.Connection

    def run(self, method: str, params: Mapping[str, Any]) -> Any:
        args = self.compiled.params(params)
        return self._await(getattr(self.raw, method)(self.compiled.sql, *args), args)

    def many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        args = [self.compiled.params(row) for row in rows]
        self._await(self.raw.executemany(self.compiled.sql, args), args)

    def _await(self, call: Coroutine[Any, Any, Any], args: Any) -> Any:
        adapter = self.adapter
        try:
            if adapter._transaction is None and not adapter.autocommit:
                await_(adapter._start_transaction())
            return await_(call)
        except Exception as exc:
            call.close()  # not awaited if the BEGIN failed
            raise self._translated(exc, args) from exc

    def _translated(self, exc: Exception, args: Any) -> Exception:
        """`exc` as SQLAlchemy raises a driver's error: its DB-API class (IntegrityError,
        OperationalError...), and the connection invalidated when it is the connection that
        failed, so that the pool drops it rather than handing it out again."""
        dbapi_error: Exception = exc
        try:
            self.adapter._handle_exception(exc)  # raises the DB-API form of asyncpg's error
        except Exception as translated:
            dbapi_error = translated
        dialect = self.conn.dialect
        lost = dialect.is_disconnect(dbapi_error, self.adapter, None)  # type: ignore[arg-type]
        if lost:
            self.conn.invalidate(dbapi_error)
        return DBAPIError.instance(
            self.compiled.sql,
            args,
            dbapi_error,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        )
