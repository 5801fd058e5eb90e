"""PostgreSQL: a delivery group's transaction in one round trip (two when an outcome runs statements of its own).

Through SQLAlchemy every statement waits for its reply, and psycopg adds a
round trip for the ``BEGIN`` of each transaction and one for its ``COMMIT``:
a group that reserves ahead for one message and records the previous one's
outcome took six round trips (``BEGIN``, the day and month counters, the log
row, the message row, ``COMMIT``). Here the group's transaction runs on the
psycopg connection in pipeline mode, with ``BEGIN`` and ``COMMIT`` written
out as statements (the connection is in autocommit mode for the time of the
group, so psycopg does not start a transaction of its own with its own
round trip).

A group whose outcomes only add rows to the group's batch (a message the
server accepted for every recipient: its log row and its ``messages``
update) is ONE round trip (:meth:`Pipelined.run`): ``BEGIN``, one
all-or-nothing reservation per sender (:func:`mailops.quota.take_all`), the
log rows, the sent messages' updates and ``COMMIT``, sent together. A
sender whose reservation did not fit (a counter without room, or without a
row yet) gets none: the outcomes still commit, and its worker reserves on
its next turn as it does without reserving ahead (in a transaction of its
own, which creates the row or says which limit blocks).

A group of one message (the usual one when a sender has one connection:
nobody else's write is waiting) is ONE statement, without ``BEGIN`` and
``COMMIT`` (:func:`one_statement`, :meth:`Pipelined.single`): its
reservation, log row and ``messages`` update as data-modifying CTEs of a
statement run in autocommit mode, which is its own transaction. psycopg's
pipeline mode costs client CPU per statement: measured, 0.08 ms per group
this way against 0.22 ms for the five statements in a pipeline. PostgreSQL
leaves the order of a statement's sub-statements open; here the
reservations are what the statement returns, so they run first, and the
other two run at its end. No lock cycle can come of it either way: the
message row is held by this process alone (its lease), and the quota rows
are locked in period order as everywhere.

Any other group (a deferral, a refused recipient, a sender's health to
record) takes two round trips around SQLAlchemy's statements:

1. ``BEGIN`` and the reservations, sent together; their replies are read
   (a sender whose reservation did not fit reserves through SQLAlchemy,
   :func:`mailops.quota.reserve_many`);
2. the outcomes run through SQLAlchemy on the same connection, inside that
   transaction;
3. the log rows, the sent messages' updates and ``COMMIT``, sent together.

Either way the statements are the same conditional ones as before and run in
the same order (quota rows first, then messages and the log, then
``sender_state``), so what two processes can see of each other and the order
they lock rows in do not change (no lock cycle between two processes'
groups); the one-trip group holds its quota row locks for less time, not
more. The outcome of a message and the reservation for the worker's next
one still commit in one transaction, before the worker sends the next
message's end of data (the crash policy in :class:`mailops.delivery._Worker`).
The SQL is compiled once (:mod:`mailops.hotsql`); psycopg prepares it on
the server after a few uses (its ``prepare_threshold``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection

from . import hotsql

#: psycopg prepares a statement, and caches its conversion, only up to this length and number of parameters
#: (psycopg's MAX_CACHED_STATEMENT_LENGTH and MAX_CACHED_STATEMENT_PARAMS): a longer group goes as a pipeline
MAX_STATEMENT_LENGTH = 4096
MAX_STATEMENT_PARAMS = 50


def one_statement(
    statements: list[tuple[str, dict[str, Any]]], batches: list[tuple[str, list[dict[str, Any]]]]
) -> tuple[str, dict[str, Any]] | None:
    """``statements`` (each returning rows) and the one row of each batch as ONE statement of data-modifying
    CTEs, which returns one row: how many rows each of ``statements`` returned. None when a batch has more
    than one row, two parts give one parameter name different values, or the statement would be too long
    for psycopg to prepare: the group then goes as a pipeline (:meth:`Pipelined.run`)."""
    parts = list(statements)
    for sql, rows in batches:
        if len(rows) > 1:
            return None
        parts += [(sql, row) for row in rows]
    params: dict[str, Any] = {}
    for _, values in parts:
        for name, value in values.items():
            if params.setdefault(name, value) is not value and params[name] != value:
                return None
    ctes = ", ".join(f"w{index} AS ({sql})" for index, (sql, _) in enumerate(parts))
    counts = ", ".join(f"(SELECT count(*) FROM w{index})" for index in range(len(statements)))
    sql = f"WITH {ctes} SELECT {counts}".rstrip()  # no returning statement: a row of no columns
    if len(sql) > MAX_STATEMENT_LENGTH or len(params) > MAX_STATEMENT_PARAMS:
        return None
    return sql, params


@functools.cache  # asked at every group transaction; libpq's version does not change within a process
def supported() -> bool:
    """True when psycopg's libpq has pipeline mode (14 or later; the psycopg[binary] wheels bring one); with an
    older system libpq the group transaction runs statement by statement through SQLAlchemy."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


class Pipelined:
    """The driver side of one group transaction on PostgreSQL (see the module's docstring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pg: Any = conn.connection.driver_connection
        self.open = False

    def run(
        self,
        statements: list[tuple[str, dict[str, Any]]],
        batches: list[tuple[str, list[dict[str, Any]]]],
        *,
        commit: bool,
    ) -> list[list[tuple[Any, ...]]]:
        """In one round trip: ``BEGIN`` (unless the transaction is open already), ``statements``, each batch's
        statement once per row, and ``COMMIT`` if ``commit``; the rows each of ``statements`` returned."""
        with hotsql.errors(self.conn):
            begin = not self.open
            if begin:
                self.pg.autocommit = True
                self.open = True
            with self.pg.pipeline():
                if begin:
                    self.pg.execute("BEGIN")
                cursors = [self.pg.execute(sql, params) for sql, params in statements]
                for sql, rows in batches:
                    if rows:
                        self.pg.cursor().executemany(sql, rows)
                if commit:
                    self.pg.execute("COMMIT")
            if commit:
                self.open = False
            return [cur.fetchall() for cur in cursors]

    def single(self, sql: str, params: dict[str, Any]) -> list[int]:
        """A statement of :func:`one_statement` as its own transaction (autocommit mode), in one round trip;
        the number of rows each of its returning statements returned."""
        with hotsql.errors(self.conn):
            self.pg.autocommit = True
            row = self.pg.execute(sql, params).fetchone()
        return [int(count) for count in row]

    def begin(self, statements: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
        """``BEGIN`` and ``statements`` in one round trip; the rows each statement returned."""
        return self.run(statements, [], commit=False)

    def finish(self, batches: list[tuple[str, list[dict[str, Any]]]], commit: bool) -> None:
        """Each batch's statement once per row, then ``COMMIT`` unless ``commit`` is False, in one round trip."""
        self.run([], batches, commit=commit)

    def commit(self) -> None:
        """``COMMIT`` on its own (after statements SQLAlchemy ran last)."""
        with hotsql.errors(self.conn):
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
def transaction(conn: Connection) -> Iterator[Pipelined]:
    """A :class:`Pipelined` group transaction on ``conn`` (inside its SQLAlchemy transaction, before any
    statement of it); rolled back unless committed, and the connection's mode restored, whatever happens."""
    tx = Pipelined(conn)
    try:
        yield tx
    finally:
        tx.close()
