"""Reading the database with plain SQL, without SQLAlchemy: what ``mailops log`` and ``stats`` run.

Importing SQLAlchemy and the tables takes about 0.4 s of process
start, many times what these commands' queries take. The read
queries (:func:`mailops.history.query_log`, :func:`~mailops.history.sender_stats`,
:func:`mailops.counters.usage`, :func:`mailops.health.load`) are therefore
portable SQL text with ``:name`` placeholders run by a :class:`Reader`, which
sits either on a DB-API connection of its own (:func:`open_reader`: stdlib
``sqlite3`` opened read-only, or ``psycopg``) or on a transaction of the
:class:`~mailops.store.Store` (:meth:`Reader.over`), so the commands that
write use the very same queries.

:func:`open_reader` is only for a database whose schema is current; for a
missing, blank or older one it returns None and the caller opens the Store,
which creates or migrates it as every command does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

from .dburl import (
    BUSY_TIMEOUT_SECONDS,
    connect_failure,
    is_store_failure,
    postgres_settings,
    sqlite_path,
    store_error,
)
from .errors import StoreError
from .migrations import MIGRATIONS, MIGRATIONS_TABLE

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

#: runs SQL in the driver's own placeholder style; returns the column names and the rows
Execute = Callable[[str, dict[str, Any]], tuple[list[str], Sequence[Sequence[Any]]]]

_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def _bind(sql: str, params: dict[str, Any], pyformat: bool) -> tuple[str, dict[str, Any]]:
    """SQL and parameters for the driver: a list or tuple value becomes one placeholder per item (for ``IN``),
    and ``:name`` becomes ``%(name)s`` for drivers of the pyformat style (psycopg)."""
    if not params:
        return sql, {}
    bound: dict[str, Any] = {}

    def placeholder(name: str) -> str:
        return f"%({name})s" if pyformat else f":{name}"

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        value = params[name]
        if isinstance(value, (list, tuple)):
            names = [f"{name}__{i}" for i in range(len(value))]
            bound.update(zip(names, value, strict=True))
            return ", ".join(placeholder(n) for n in names) or "NULL"  # IN (NULL) matches nothing, like IN ()
        bound[name] = value
        return placeholder(name)

    if pyformat:
        sql = sql.replace("%", "%%")
    return _PLACEHOLDER.sub(substitute, sql), bound


class Reader:
    """Runs read-only SQL text with ``:name`` placeholders and returns rows as dicts."""

    def __init__(self, execute: Execute, *, pyformat: bool, close: Callable[[], None] | None = None) -> None:
        self._execute = execute
        self._pyformat = pyformat
        self._close = close
        #: the backend, for the few queries whose best form differs: ``sqlite`` or ``postgresql``
        self.dialect = "postgresql" if pyformat else "sqlite"

    @classmethod
    def over(cls, conn: Reader | Connection) -> Reader:
        """A reader inside a SQLAlchemy transaction (a ``Store.read()`` or ``write()`` connection); a reader as is.

        Statements go through SQLAlchemy's ``exec_driver_sql``: they join the
        transaction, and a lost connection or a lock timeout becomes the Store's
        one-line error as any other statement of the transaction would.
        """
        if isinstance(conn, Reader):
            return conn

        def execute(sql: str, params: dict[str, Any]) -> tuple[list[str], Sequence[Sequence[Any]]]:
            result = conn.exec_driver_sql(sql, params) if params else conn.exec_driver_sql(sql)
            return list(result.keys()), result.fetchall()

        return cls(execute, pyformat=conn.dialect.name != "sqlite")

    def all(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """Every row of a query, each as ``{column: value}`` in the query's column order."""
        names, rows = self._execute(*_bind(sql, params, self._pyformat))
        return [dict(zip(names, row, strict=True)) for row in rows]

    def close(self) -> None:
        """Close the reader's own connection (nothing for one made by :meth:`over`)."""
        if self._close is not None:
            self._close()
            self._close = None


def _dbapi_execute(conn: Any, driver: Any, url: str) -> Execute:
    """Execute on a DB-API connection of ``driver`` (the sqlite3 or psycopg module); a failure of the
    database (not of the SQL) becomes the one-line error the Store would give for it."""

    def execute(sql: str, params: dict[str, Any]) -> tuple[list[str], Sequence[Sequence[Any]]]:
        cur = conn.cursor()
        try:
            if params:
                cur.execute(sql, params)
            else:
                cur.execute(sql)
            return [d[0] for d in cur.description], cur.fetchall()
        except driver.DatabaseError as exc:
            # as Store.read(): locked or lost, "file is not a database", no rights; programming errors stay
            if is_store_failure(exc, driver.OperationalError, driver.DatabaseError):
                raise store_error(url, exc, BUSY_TIMEOUT_SECONDS) from None
            raise
        finally:
            cur.close()

    return execute


def _connect_sqlite(path: Path) -> tuple[Any, Any] | None:
    import sqlite3

    if not path.is_file():
        return None  # the Store creates it (or says why it cannot)
    try:
        # read-only: this path never creates, migrates or changes a database
        conn = sqlite3.connect(
            f"file:{quote(str(path))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None
        )
    except sqlite3.Error:
        return None
    try:
        # one snapshot for every query of the command, as in Store.read() (psycopg opens its transaction itself)
        conn.execute("BEGIN")
    except sqlite3.Error:
        conn.close()
        return None
    return conn, sqlite3


def _connect_postgres(url: str) -> tuple[Any, Any] | None:
    parts = urlsplit(url)
    if parts.scheme not in _POSTGRES_SCHEMES:
        return None  # another driver or a malformed URL: the Store reports it
    try:
        import psycopg
    except ImportError:
        return None  # the Store says which package to install
    # as the Store's engine: the same settings, and the URL's query string wins
    given = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    settings = {k: v for k, v in postgres_settings(BUSY_TIMEOUT_SECONDS).items() if k not in given}
    try:
        conn = psycopg.connect(parts._replace(scheme="postgresql").geturl(), **settings)
    except psycopg.OperationalError as exc:
        if connect_failure((str(exc).splitlines() or [""])[0]) is not None:
            # the server is down or refuses us: say so now rather than have the Store wait for it again
            raise store_error(url, exc, BUSY_TIMEOUT_SECONDS) from None
        return None
    except psycopg.Error:
        return None
    return conn, psycopg


def open_reader(url: str) -> Reader | None:
    """A reader on its own connection when the database exists and has every migration, else None.

    None also when the URL is not one it knows or the driver is missing: the
    caller then opens the Store, which creates or migrates the database or
    reports the problem exactly as every other command does. A PostgreSQL
    server that cannot be reached raises the Store's one-line error at once.
    """
    path = sqlite_path(url)
    found = _connect_sqlite(path) if path is not None else _connect_postgres(url)
    if found is None:
        return None
    conn, driver = found
    reader = Reader(_dbapi_execute(conn, driver, url), pyformat=path is None, close=conn.close)
    try:
        applied = {row["name"] for row in reader.all(f"SELECT name FROM {MIGRATIONS_TABLE}")}
    except (driver.Error, StoreError):  # no such table, not a database, no rights...: the Store deals with it
        reader.close()
        return None
    known = {name for name, _ in MIGRATIONS}
    if applied != known:  # older (to migrate) or newer (to refuse): the Store does either
        reader.close()
        return None
    return reader
