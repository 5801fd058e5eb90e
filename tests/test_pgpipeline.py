"""PostgreSQL: the group transaction in pipeline mode, and the all-or-nothing reservation it sends."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from mailops import pgpipeline, quota, tables
from mailops.config import Sender
from mailops.counters import period_keys
from mailops.store import Store

UTC = ZoneInfo("UTC")
NOW = 1_800_000_000.0


@pytest.fixture
def store(pg_url: str):
    store = Store.open(pg_url)
    yield store
    store.close()


def _sender(**limits: object) -> Sender:
    return Sender(key="s", email="s@example.com", host="127.0.0.1", port=25, security="none", username="s", **limits)  # type: ignore[arg-type]


def _counts(store: Store) -> dict[str, int]:
    with store.read() as conn:
        rows = conn.execute(sa.select(tables.Usage.c.period, tables.Usage.c.count).where(tables.Usage.c.sender == "s"))
        return {period.split(":")[0]: count for period, count in rows}


def _take(store: Store, sender: Sender, recipients: list[int]) -> list[quota.Reservation] | None:
    """One pipelined transaction with take_all for ``recipients``; its reservations, or None if nothing was taken."""
    take = quota.take_all(sender, UTC, NOW, recipients)
    assert take is not None
    sql, params, expected, held = take
    with store.write() as conn, pgpipeline.transaction(conn) as tx:
        [rows] = tx.begin([(sql, params)])
        tx.finish([], commit=True)
    return held if len(rows) == expected else None


def _create_rows(store: Store, day: int = 0, month: int = 0) -> None:
    keys = period_keys(NOW, UTC)
    with store.write() as conn:
        conn.execute(
            sa.insert(tables.Usage),
            [
                {"sender": "s", "period": keys["day"], "count": day},
                {"sender": "s", "period": keys["month"], "count": month},
            ],
        )


def test_take_all_takes_nothing_while_a_counter_row_is_missing(store: Store) -> None:
    assert _take(store, _sender(daily_limit=10), [1]) is None
    assert _counts(store) == {}


def test_take_all_takes_every_counter_when_all_have_room(store: Store) -> None:
    _create_rows(store, day=7, month=50)
    held = _take(store, _sender(daily_limit=10, monthly_limit=100, limit_unit="recipients"), [1, 2])
    assert held is not None
    assert [r.amounts for r in held] == [(1, 1), (2, 2)]
    assert _counts(store) == {"day": 10, "month": 53}


def test_take_all_takes_nothing_when_one_counter_has_no_room(store: Store) -> None:
    _create_rows(store, day=9, month=50)
    assert _take(store, _sender(daily_limit=10, monthly_limit=100), [1, 1]) is None  # 2 do not fit in 1
    assert _counts(store) == {"day": 9, "month": 50}  # the month's counter did not keep a part of it
    assert _take(store, _sender(daily_limit=100, monthly_limit=50), [1]) is None  # the month is full
    assert _counts(store) == {"day": 9, "month": 50}


def test_take_all_leaves_a_paced_sender_to_reserve_one_by_one() -> None:
    assert quota.take_all(_sender(min_interval=2.0), UTC, NOW, [1]) is None


def test_a_failed_pipeline_rolls_back_and_gives_the_connection_back_in_its_normal_mode(store: Store) -> None:
    _create_rows(store, day=1, month=1)
    take = quota.take_all(_sender(), UTC, NOW, [1])
    assert take is not None
    with pytest.raises(sa.exc.DBAPIError), store.write() as conn, pgpipeline.transaction(conn) as tx:
        tx.begin([(take[0], take[1])])
        tx.finish([("INSERT INTO no_such_table VALUES (%(x)s)", [{"x": 1}])], commit=True)
    assert _counts(store) == {"day": 1, "month": 1}  # the reservation went with the failed transaction
    with store.engine.connect() as conn:  # every pooled connection is back out of autocommit mode
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]


# ------------------------------------------------------------------ one statement for a group of one message


def test_one_statement_puts_every_part_in_a_cte_and_counts_the_returning_ones() -> None:
    sql, params = pgpipeline.one_statement(  # type: ignore[misc]
        [("UPDATE t SET n = n + 1 WHERE k = %(k)s RETURNING k", {"k": 1})],
        [("INSERT INTO log (m) VALUES (%(m)s)", [{"m": "x"}]), ("UPDATE other SET x = 1", [])],
    )
    assert sql == (
        "WITH w0 AS (UPDATE t SET n = n + 1 WHERE k = %(k)s RETURNING k), w1 AS (INSERT INTO log (m) VALUES (%(m)s)) "
        "SELECT (SELECT count(*) FROM w0)"
    )
    assert params == {"k": 1, "m": "x"}


@pytest.mark.parametrize(
    "statements, batches",
    [
        ([], [("INSERT INTO log (m) VALUES (%(m)s)", [{"m": "x"}, {"m": "y"}])]),  # two rows: a pipeline
        ([("UPDATE t SET n = %(v)s RETURNING n", {"v": 1})], [("INSERT INTO log (v) VALUES (%(v)s)", [{"v": 2}])]),
        ([], [(f"INSERT INTO log (m) VALUES (%(m)s) -- {'x' * pgpipeline.MAX_STATEMENT_LENGTH}", [{"m": "x"}])]),
        ([], [("INSERT INTO log VALUES (...)", [{f"p{n}": n for n in range(pgpipeline.MAX_STATEMENT_PARAMS + 1)}])]),
    ],
    ids=["two-rows", "a-name-with-two-values", "too-long-to-prepare", "too-many-parameters"],
)
def test_one_statement_declines_what_it_cannot_write_as_one(statements, batches) -> None:
    assert pgpipeline.one_statement(statements, batches) is None


def test_one_statement_runs_as_its_own_transaction_and_restores_the_connection_mode(store: Store) -> None:
    _create_rows(store, day=0, month=0)
    take = quota.take_all(_sender(daily_limit=10), UTC, NOW, [1, 2])
    assert take is not None
    single = pgpipeline.one_statement([(take[0], take[1])], [])
    assert single is not None
    with store.write() as conn, pgpipeline.transaction(conn) as tx:
        assert tx.single(*single) == [take[2]]
    assert _counts(store) == {"day": 2, "month": 2}  # two messages, each counted once
    with store.engine.connect() as conn:
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
