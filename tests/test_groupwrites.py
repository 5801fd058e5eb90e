"""The delivery group transaction's writes (``_GroupWrites``) on the driver's cursor: SQLite and PostgreSQL.

A group here is what workers hand to the group commit: a reservation ahead for a sender's next message
and/or the previous message's outcome. The statements run on real databases; only the deliverer around
them is reduced to what the group writes read (its clock and timezone).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from mailops import hotsql, quota, tables
from mailops.config import Sender
from mailops.counters import period_keys
from mailops.delivery import _Batch, _GroupWrites, _Job, _Result, _Write
from mailops.errors import StoreError
from mailops.store import Store
from tests.test_pgpipeline import _create_rows as _create_counters

UTC = ZoneInfo("UTC")
NOW = 1_800_000_000.0


def _sender(**limits: object) -> Sender:
    return Sender(key="s", email="s@example.com", host="127.0.0.1", port=25, security="none", username="s", **limits)  # type: ignore[arg-type]


@pytest.fixture
def sqlite_store(tmp_path: Path):
    store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
    yield store
    store.close()


@pytest.fixture
def pg_store(pg_url: str):
    store = Store.open(pg_url)
    yield store
    store.close()


def _writes_of(store: Store) -> _GroupWrites:
    deliverer: Any = SimpleNamespace(clock=lambda: NOW, config=SimpleNamespace(timezone=UTC), outbox=None)
    return _GroupWrites(deliverer)


def _message(store: Store) -> int:
    """A claimed message row; its id."""
    row = {
        "created_at": NOW,
        "updated_at": NOW,
        "run_id": "r",
        "candidates": "s",
        "nominal_sender": "s",
        "envelope_from": "s@example.com",
        "recipients": json.dumps(["a@example.com"]),
        "to_header": "a@example.com",
        "subject": "hello",
        "message_id": "<m@example.com>",
        "mime": b"Subject: hello\r\n\r\nhi\r\n",
        "state": "sending",
        "due_at": NOW,
        "attempts": 0,
    }
    with store.write() as conn:
        return int(conn.execute(sa.insert(tables.Message).values(**row)).inserted_primary_key[0])


def _sent(msg_id: int, recipients: str = "a@example.com") -> Any:
    """A plain outcome, as delivery's _record_sent makes it for a message accepted for every recipient."""

    def outcome(conn: Any, batch: _Batch) -> _Result:
        msg: Any = SimpleNamespace(id=msg_id)
        batch.attempts.append({"at": NOW, "message_pk": msg_id, "recipients": recipients, "outcome": "sent"})
        batch.sent.append((msg, "s", NOW, {"a@example.com": "sent"}))
        return _Result(_Job(msg), "sent", "s")

    return outcome


def _job() -> _Job:
    msg: Any = SimpleNamespace(pending_recipients=["b@example.com"])
    return _Job(msg)


def _counts(store: Store) -> dict[str, int]:
    with store.read() as conn:
        rows = conn.execute(sa.select(tables.Usage.c.period, tables.Usage.c.count).where(tables.Usage.c.sender == "s"))
        return {period.split(":")[0]: count for period, count in rows}


def _log_and_state(store: Store, msg_id: int) -> tuple[list[str], str]:
    with store.read() as conn:
        log = list(conn.execute(sa.select(tables.Attempt.c.outcome)).scalars())
        state = conn.execute(sa.select(tables.Message.c.state).where(tables.Message.c.id == msg_id)).scalar_one()
    return log, state


def _apply(store: Store, writes: list[_Write]) -> list[tuple[Any, Any]]:
    with store.write() as conn:
        return _writes_of(store)(conn, writes)


# ------------------------------------------------------------------ SQLite: statements on the sqlite3 cursor


def test_sqlite_group_reserves_ahead_and_records_the_outcome_on_the_cursor(sqlite_store: Store) -> None:
    msg_id = _message(sqlite_store)
    _create_counters(sqlite_store, day=3, month=40)
    sender = _sender(daily_limit=10, monthly_limit=100)
    [(ahead, result)] = _apply(sqlite_store, [_Write(sender, _job(), _sent(msg_id), plain=True)])
    assert isinstance(ahead, quota.Reservation) and ahead.amounts == (1, 1)
    assert result.outcome == "sent"
    assert _counts(sqlite_store) == {"day": 4, "month": 41}
    assert _log_and_state(sqlite_store, msg_id) == (["sent"], "sent")


def test_sqlite_take_on_cursor_is_all_or_nothing_and_the_group_then_reserves_as_before(sqlite_store: Store) -> None:
    _create_counters(sqlite_store, day=5, month=100)  # the month is full, the day is not
    sender = _sender(daily_limit=10, monthly_limit=100)
    with sqlite_store.write() as conn:
        assert quota.take_on_cursor(conn, sender, UTC, NOW, [1]) is None
    assert _counts(sqlite_store) == {"day": 5, "month": 100}  # the day's unit taken first was given back
    [(ahead, _)] = _apply(sqlite_store, [_Write(sender, _job(), None)])
    assert isinstance(ahead, quota.Blocked) and ahead.kind == "month"  # reserve_many says which limit blocks
    assert _counts(sqlite_store) == {"day": 5, "month": 100}


def test_sqlite_first_reservation_of_a_period_creates_the_counters(sqlite_store: Store) -> None:
    [(ahead, _)] = _apply(sqlite_store, [_Write(_sender(daily_limit=10), _job(), None)])
    assert isinstance(ahead, quota.Reservation)
    assert _counts(sqlite_store) == {"day": 1, "month": 1}


def test_sqlite_a_failing_cursor_statement_rolls_back_the_whole_group(sqlite_store: Store) -> None:
    msg_id = _message(sqlite_store)
    _create_counters(sqlite_store, day=0, month=0)
    good, bad = _sent(msg_id), _sent(msg_id, recipients=None)  # type: ignore[arg-type]  # NOT NULL
    sender = _sender(daily_limit=10)
    with pytest.raises(sa.exc.IntegrityError):  # as SQLAlchemy raises it: the group commit splits the group
        _apply(sqlite_store, [_Write(sender, _job(), good, plain=True), _Write(sender, None, bad, plain=True)])
    assert _counts(sqlite_store) == {"day": 0, "month": 0}  # the reservation went with the group
    assert _log_and_state(sqlite_store, msg_id) == ([], "sending")


def test_sqlite_a_failure_of_the_database_on_the_cursor_is_the_one_line_store_error(sqlite_store: Store) -> None:
    _create_counters(sqlite_store, day=0, month=0)
    with pytest.raises(StoreError), sqlite_store.write() as conn:
        assert quota.take_on_cursor(conn, _sender(), UTC, NOW, [1]) is not None
        hotsql.execute_many(conn, [("UPDATE no_such_table SET x = :x", [{"x": 1}])])  # sqlite3.OperationalError
    assert _counts(sqlite_store) == {"day": 0, "month": 0}


# ------------------------------------------------------------------ PostgreSQL: the one-trip pipeline


class _Waits:
    """Counts the round trips on one connection: the server's ReadyForQuery replies, in libpq's protocol
    trace (each one answers a Sync or a simple query, which the client then waits for)."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "libpq-trace.txt"
        self.count = 0

    def apply(self, store: Store, writes: list[_Write]) -> list[tuple[Any, Any]]:
        with store.write() as conn:
            pgconn = conn.connection.driver_connection.pgconn  # type: ignore[union-attr]
            with self.path.open("w") as trace:
                pgconn.trace(trace.fileno())
                try:
                    return _writes_of(store)(conn, writes)
                finally:
                    pgconn.untrace()
                    self.count = self.path.read_text().count("ReadyForQuery")


def test_pg_a_group_of_plain_outcomes_is_one_round_trip(pg_store: Store, tmp_path: Path) -> None:
    first, second = _message(pg_store), _message(pg_store)
    _create_counters(pg_store, day=0, month=0)
    sender = _sender(daily_limit=10, monthly_limit=100)
    waits = _Waits(tmp_path)
    writes = [_Write(sender, _job(), _sent(first), plain=True), _Write(sender, _job(), _sent(second), plain=True)]
    results = waits.apply(pg_store, writes)
    assert waits.count == 1
    assert all(isinstance(ahead, quota.Reservation) for ahead, _ in results)
    assert _counts(pg_store) == {"day": 2, "month": 2}
    assert _log_and_state(pg_store, first) == (["sent", "sent"], "sent")
    assert _log_and_state(pg_store, second)[1] == "sent"
    # The same group with an outcome that is not plain takes the two-pipeline path (more round trips).
    third = _message(pg_store)
    waits.apply(pg_store, [_Write(sender, _job(), _sent(third), plain=False)])
    assert waits.count > 1
    assert _counts(pg_store) == {"day": 3, "month": 3}


class _Statements(_Waits):
    """Also counts the statements the client sent (``Parse``/``Bind`` of the extended protocol, ``Query`` of
    the simple one: a statement psycopg has prepared is bound without a new Parse)."""

    def apply(self, store: Store, writes: list[_Write]) -> list[tuple[Any, Any]]:
        try:
            return super().apply(store, writes)
        finally:
            lines = self.path.read_text().splitlines()
            self.sent = [line.split("\t")[3] for line in lines if "\tF\t" in line and "\tBind\t" in line]
            self.sent += [line for line in lines if "\tF\t" in line and "\tQuery\t" in line]


def test_pg_a_group_of_one_message_is_one_statement_without_begin_or_commit(pg_store: Store, tmp_path: Path) -> None:
    _create_counters(pg_store, day=0, month=0)
    sender = _sender(daily_limit=10, monthly_limit=100)
    statements = _Statements(tmp_path)
    trips = []
    for _ in range(7):  # psycopg prepares a statement after its fifth run: the same one statement before and after
        msg_id = _message(pg_store)
        [(ahead, result)] = statements.apply(pg_store, [_Write(sender, _job(), _sent(msg_id), plain=True)])
        assert len(statements.sent) == 1
        trips.append(statements.count)
        assert isinstance(ahead, quota.Reservation)
        assert result.outcome == "sent"
        assert _log_and_state(pg_store, msg_id)[1] == "sent"
    assert sorted(trips) == [1] * 6 + [2]  # one round trip each, and once psycopg's own to prepare it
    assert _counts(pg_store) == {"day": 7, "month": 7}
    assert _log_and_state(pg_store, msg_id)[0] == ["sent"] * 7
    # Two messages in a group: the five statements in one pipeline (one round trip, as before).
    first, second = _message(pg_store), _message(pg_store)
    statements.apply(
        pg_store, [_Write(sender, _job(), _sent(first), plain=True), _Write(sender, None, _sent(second), plain=True)]
    )
    assert statements.count == 1
    assert len(statements.sent) > 1
    assert _counts(pg_store) == {"day": 8, "month": 8}


def test_pg_a_one_statement_group_without_a_reservation_ahead_records_the_outcome(
    pg_store: Store, tmp_path: Path
) -> None:
    msg_id = _message(pg_store)
    statements = _Statements(tmp_path)
    [(ahead, result)] = statements.apply(pg_store, [_Write(_sender(daily_limit=10), None, _sent(msg_id), plain=True)])
    assert (statements.count, len(statements.sent)) == (1, 1)
    assert (ahead, result.outcome) == (None, "sent")
    assert _log_and_state(pg_store, msg_id) == (["sent"], "sent")


@pytest.mark.parametrize("counters", ["full", "missing"])
def test_pg_one_trip_reservation_that_does_not_fit_commits_the_outcomes_and_reserves_nothing(
    pg_store: Store, tmp_path: Path, counters: str
) -> None:
    msg_id = _message(pg_store)
    if counters == "full":
        _create_counters(pg_store, day=10, month=10)
    waits = _Waits(tmp_path)
    [(ahead, result)] = waits.apply(pg_store, [_Write(_sender(daily_limit=10), _job(), _sent(msg_id), plain=True)])
    assert waits.count == 1
    assert ahead is None  # the worker reserves on its next turn, as without reserving ahead
    assert result.outcome == "sent"
    assert _log_and_state(pg_store, msg_id) == (["sent"], "sent")
    assert _counts(pg_store) == ({"day": 10, "month": 10} if counters == "full" else {})


def test_pg_a_failing_one_trip_group_rolls_back_and_is_the_sql_error(pg_store: Store) -> None:
    msg_id = _message(pg_store)
    _create_counters(pg_store, day=0, month=0)
    bad = _sent(msg_id, recipients=None)  # type: ignore[arg-type]  # NOT NULL
    with pytest.raises(sa.exc.IntegrityError):
        _apply(pg_store, [_Write(_sender(daily_limit=10), _job(), bad, plain=True)])
    assert _counts(pg_store) == {"day": 0, "month": 0}
    assert _log_and_state(pg_store, msg_id) == ([], "sending")
    with pg_store.engine.connect() as conn:  # the pooled connection is back out of autocommit mode
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]


def test_period_keys_kept_for_a_second_change_with_the_minute_and_the_timezone() -> None:
    start = 1_800_000_059.0  # 59 s into a minute (the epoch's minutes are UTC's and Paris's minutes)
    paris = ZoneInfo("Europe/Paris")
    for now, tz in [(start, UTC), (start + 0.9, UTC), (start + 1.0, UTC), (start + 1.0, paris), (start + 0.5, UTC)]:
        assert quota._period_keys(now, tz) == period_keys(now, tz)
    assert quota._period_keys(start + 0.9, UTC)["minute"] != quota._period_keys(start + 1.0, UTC)["minute"]
