"""The hottest statements on SQLite, run on the DB-API connection with their SQL compiled once.

SQLAlchemy's execution of a cached statement still costs tens of microseconds of Python per
call (cache key, parameters, result set-up): on the three statements every task runs (read by
id, insert, conditional update) it was a third of the event loop's time under load. A
`Statement` keeps the SQLAlchemy construct, for PostgreSQL and as the one definition, and on
SQLite runs the SQL it compiled once through `sqlite3` directly, in the same connection and so
the same transaction. Rows come back as dicts; Boolean columns as bools, as SQLAlchemy gives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Boolean, Connection
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.selectable import Select

_SQLITE = pysqlite.dialect()


class Statement:
    """`stmt`, compiled once for SQLite (positional `?` parameters, in `order`)."""

    def __init__(self, stmt: Executable) -> None:
        self.stmt = stmt
        compiled = stmt.compile(dialect=_SQLITE)  # type: ignore[attr-defined]
        self.sql = str(compiled)
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.defaults = compiled.params  # values the statement holds itself (SQLite's OFFSET 0)
        columns = stmt.selected_columns if isinstance(stmt, Select) else ()
        self.booleans = frozenset(c.name for c in columns if isinstance(c.type, Boolean))

    def _params(self, params: Mapping[str, Any]) -> list[Any]:
        defaults = self.defaults
        return [params[name] if name in params else defaults[name] for name in self.order]

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        if conn.dialect.name != "sqlite":
            return [dict(row._mapping) for row in conn.execute(self.stmt, params)]
        cursor = self._run(conn, "execute", self._params(params))
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
        if conn.dialect.name != "sqlite":
            return int(conn.execute(self.stmt, params).rowcount)
        return int(self._run(conn, "execute", self._params(params)).rowcount)

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a write once per row of parameters (one `executemany`)."""
        if conn.dialect.name != "sqlite":
            conn.execute(self.stmt, list(rows))
            return
        self._run(conn, "executemany", [self._params(row) for row in rows])

    def _run(self, conn: Connection, method: str, params: list[Any]) -> sqlite3.Cursor:
        dbapi = conn.connection.dbapi_connection
        try:
            cursor: sqlite3.Cursor = getattr(dbapi, method)(self.sql, params)
        except sqlite3.Error as exc:
            # As SQLAlchemy would raise it (IntegrityError, OperationalError...): the callers
            # and `faults` know those.
            raise DBAPIError.instance(self.sql, params, exc, sqlite3.Error) from exc
        return cursor
