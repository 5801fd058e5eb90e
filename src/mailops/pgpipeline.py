"""PostgreSQL: a delivery group's transaction in two round trips instead of one per statement.

Through SQLAlchemy every statement waits for its reply, and psycopg adds a
round trip for the ``BEGIN`` of each transaction and one for its ``COMMIT``:
a group that reserves ahead for one message and records the previous one's
outcome took six round trips (``BEGIN``, the day and month counters, the log
row, the message row, ``COMMIT``). Here the group's transaction runs on the
psycopg connection in pipeline mode, with ``BEGIN`` and ``COMMIT`` written
out as statements (the connection is in autocommit mode for the time of the
group, so psycopg does not start a transaction of its own with its own
round trip):

1. ``BEGIN`` and one all-or-nothing reservation per sender
   (:func:`mailops.quota.take_all`), sent together; their replies are read;
2. the outcomes (rarely a statement of their own: a deferral, a suppression)
   run through SQLAlchemy on the same connection, inside that transaction;
3. the sent messages' updates, their log rows and ``COMMIT``, sent together.

The statements are the same conditional ones as before and run in the same
order (quota rows first, then messages and the log), so what two processes
can see of each other and the order they lock rows in do not change; psycopg
prepares them on the server after a few uses (its ``prepare_threshold``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_COMPILED: dict[tuple[int, tuple[str, ...]], tuple[str, dict[str, Any]]] = {}


@functools.cache  # asked at every group transaction; libpq's version does not change within a process
def supported() -> bool:
    """True when psycopg's libpq has pipeline mode (14 or later; the psycopg[binary] wheels bring one); with an
    older system libpq the group transaction runs statement by statement through SQLAlchemy."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


def compiled(conn: Connection, stmt: Any, keys: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """SQL text of a SQLAlchemy statement for psycopg (``%(name)s`` parameters) and its fixed parameters,
    compiled once per statement and set of ``keys`` (the columns an INSERT's rows give)."""
    key = (id(stmt), keys)
    found = _COMPILED.get(key)
    if found is None:
        done = stmt.compile(dialect=conn.dialect, column_keys=list(keys) or None)
        found = _COMPILED[key] = (str(done), dict(done.params))
    return found


def rows(
    conn: Connection, stmt: Any, params: list[dict[str, Any]], keys: tuple[str, ...] = ()
) -> tuple[str, list[dict[str, Any]]]:
    """``stmt`` as psycopg SQL with one parameter set per item of ``params`` (its fixed parameters added)."""
    sql, fixed = compiled(conn, stmt, keys)
    return sql, [{**fixed, **one} for one in params]


class Pipelined:
    """The driver side of one group transaction on PostgreSQL (see the module's docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pg: Any = conn.connection.driver_connection
        self.open = False

    def begin(self, statements: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
        """``BEGIN`` and ``statements`` in one round trip; the rows each statement returned."""
        with self._errors():
            self.pg.autocommit = True
            self.open = True
            with self.pg.pipeline():
                self.pg.execute("BEGIN")
                cursors = [self.pg.execute(sql, params) for sql, params in statements]
            return [cur.fetchall() for cur in cursors]

    def finish(self, batches: list[tuple[str, list[dict[str, Any]]]], commit: bool) -> None:
        """Each batch's statement once per row, then ``COMMIT`` unless ``commit`` is False, in one round trip."""
        with self._errors():
            with self.pg.pipeline():
                for sql, rows in batches:
                    if rows:
                        self.pg.cursor().executemany(sql, rows)
                if commit:
                    self.pg.execute("COMMIT")
            if commit:
                self.open = False

    def commit(self) -> None:
        """``COMMIT`` on its own (after statements SQLAlchemy ran last)."""
        with self._errors():
            self.pg.execute("COMMIT")
            self.open = False

    def close(self) -> None:
        """Roll back what is still open and give the connection its normal mode back; a connection that cannot
        take it is invalidated (the pool then never hands it out in autocommit mode)."""
        try:
            if self.open:
                self.pg.execute("ROLLBACK")
                self.open = False
            self.pg.autocommit = False
        except Exception:  # noqa: BLE001 - broken connection: it must not go back to the pool as it is
            with contextlib.suppress(Exception):
                self.conn.invalidate()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """psycopg's errors as SQLAlchemy's (as every other statement raises them), so the store's handling
        of a database that fails (one line, group not split) applies."""
        import psycopg

        try:
            yield
        except psycopg.Error as exc:
            raise sa.exc.DBAPIError.instance(
                None, None, exc, psycopg.Error, connection_invalidated=bool(self.pg.closed)
            ) from exc


@contextmanager
def transaction(conn: Connection) -> Iterator[Pipelined]:
    """A :class:`Pipelined` group transaction on ``conn`` (inside its SQLAlchemy transaction, before any
    statement of it); rolled back unless committed, and the connection's mode restored, whatever happens."""
    tx = Pipelined(conn)
    try:
        yield tx
    finally:
        tx.close()
