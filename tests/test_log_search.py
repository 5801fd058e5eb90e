"""``mailops log --to``: the trigram index over the log's recipients (migration 011), on SQLite and PostgreSQL.

The rows are loaded straight into ``attempts`` (as many as the tests need, not a million: timing lives in
``bench/run.py``), then read through the real CLI. On SQLite the FTS5 index is kept by triggers, so the
tests also check that it holds exactly the rows of the log after inserts, deletes and a migration of a
database that already had rows. On PostgreSQL the GIN index of pg_trgm is the planner's business: the
tests check that it exists and that the answers are the same.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from mailops import history, migrations, tables
from mailops.reader import open_reader
from mailops.store import Store
from tests.fixtures_cli import epoch, log_json

NOW = time.time()


@pytest.fixture
def logdb(workspace, database_url: str):
    """A workspace on ``database_url`` (SQLite file or PostgreSQL) whose schema is current."""
    workspace.use_database(database_url)
    workspace.write_config({"s0": workspace.sender(None, port=2525, auth=False), "s1": workspace.sender(None)})
    Store.open(database_url).close()
    return workspace


def _load(url: str, rows: list[dict[str, Any]]) -> None:
    """Insert attempt rows (``at`` counts up with the list unless given: the last is the newest)."""
    store = Store(url)
    full = [
        {
            "at": NOW - 100_000 + i,
            "sender": "s0",
            "route": "default",
            "outcome": "sent",
            "subject": "S",
            "batch": None,  # every row the same keys: an executemany takes the first row's
            **row,
        }
        for i, row in enumerate(rows)
    ]
    with store.write() as conn:
        conn.execute(sa.insert(tables.Attempt), full)
    store.close()


def _customers(n: int) -> list[dict[str, Any]]:
    return [{"recipients": f"customer{i}@example.org"} for i in range(n)]


def _recipients(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [row["recipients"] for row in rows]


def _probed(url: str, to: str) -> bool:
    """True when ``log --to`` reads the trigram index's rows rather than scanning the log."""
    reader = open_reader(url)
    assert reader is not None
    try:
        return history._probe(reader, to.strip().lower()) is not None
    finally:
        reader.close()


def _sqlite_index_matches_the_log(workspace) -> None:
    """FTS5's own check that the external-content index holds exactly what attempts holds (raises if not)."""
    store = Store(workspace.database_url)
    with store.write() as conn:
        conn.execute(sa.text("INSERT INTO attempts_fts(attempts_fts, rank) VALUES ('integrity-check', 1)"))
    store.close()


def test_a_rare_address_among_many_is_found_case_insensitively_as_a_substring(logdb, cli) -> None:
    rows = _customers(3000)
    rows[1234]["recipients"] = "Boss@Example.com, customer1234@example.org"  # several recipients in one row
    rows[2000]["recipients"] = "xcustomer1234@example.org"  # a part of it is enough, as before
    _load(logdb.database_url, rows)

    found = log_json(cli, "--to", "  CUSTOMER1234@example.ORG ")
    assert _recipients(found) == [["xcustomer1234@example.org"], ["Boss@Example.com", "customer1234@example.org"]]
    assert _recipients(log_json(cli, "--to", "boss@example")) == [["Boss@Example.com", "customer1234@example.org"]]
    assert log_json(cli, "--to", "nobody@example.org") == []
    if logdb.database_url.startswith("sqlite"):
        assert _probed(logdb.database_url, "CUSTOMER1234@example.ORG")  # the index, not a scan of 3,000 rows
        _sqlite_index_matches_the_log(logdb)


def test_a_broad_pattern_gives_the_newest_rows_up_to_the_limit_with_or_without_the_probe(
    logdb, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    _load(logdb.database_url, _customers(300))
    newest = [[f"customer{i}@example.org"] for i in range(299, 289, -1)]

    for cap in (10_000, 50):  # the probe holds every match; more matches than the probe takes: the scan
        monkeypatch.setattr(history, "PROBE_CAP", cap)
        assert _recipients(log_json(cli, "--to", "example.org", "--limit", "10")) == newest, cap
        ids = [row["id"] for row in log_json(cli, "--to", "@example", "--limit", "300")]
        assert len(ids) == 300 and ids == sorted(ids, reverse=True), cap
        # under 3 characters there is no trigram to look up: the scan
        assert _recipients(log_json(cli, "--to", "r2", "--limit", "1")) == [["customer299@example.org"]]
    if logdb.database_url.startswith("sqlite"):
        monkeypatch.setattr(history, "PROBE_CAP", 50)
        assert not _probed(logdb.database_url, "example.org") and _probed(logdb.database_url, "customer29")
        assert _recipients(log_json(cli, "--to", "customer29", "--limit", "3")) == [
            ["customer299@example.org"],
            ["customer298@example.org"],
            ["customer297@example.org"],
        ]


def test_like_wildcards_and_index_syntax_in_the_address_are_plain_characters(logdb, cli) -> None:
    rows = [
        {"recipients": "a_b@x.org"},
        {"recipients": "axb@x.org"},
        {"recipients": "c%d@x.org"},
        {"recipients": "cxd@x.org"},
        {"recipients": '"odd*"@x.org'},
        {"recipients": "odd@x.org"},
        {"recipients": "e/f@x.org"},
    ]
    _load(logdb.database_url, rows)

    assert _recipients(log_json(cli, "--to", "A_B@")) == [["a_b@x.org"]]
    assert _recipients(log_json(cli, "--to", "c%d")) == [["c%d@x.org"]]
    assert _recipients(log_json(cli, "--to", '"odd*"')) == [['"odd*"@x.org']]
    assert _recipients(log_json(cli, "--to", "e/f@")) == [["e/f@x.org"]]
    assert log_json(cli, "--to", "%@x") == [] and log_json(cli, "--to", "d OR x") == []


def test_to_combines_with_sender_status_since_and_batch(logdb, cli) -> None:
    rows = [
        {"recipients": "ann@example.org", "sender": "s0", "outcome": "sent", "at": NOW - 10 * 86400},
        {"recipients": "ann@example.org", "sender": "s1", "outcome": "failed", "at": NOW - 3600},
        {"recipients": "ann@example.org", "sender": "s0", "outcome": "sent", "at": NOW - 60, "batch": "b1"},
        {"recipients": "bob@example.org", "sender": "s0", "outcome": "sent", "at": NOW - 30},
    ]
    _load(logdb.database_url, rows)

    def ats(*args: str) -> list[float]:
        return [round(epoch(row["at"]) - NOW) for row in log_json(cli, "--to", "ann@example.org", *args)]

    assert ats() == [-60, -3600, -10 * 86400]
    assert ats("--sender", "s0") == [-60, -10 * 86400]
    assert ats("--status", "failed") == [-3600]
    assert ats("--since", "7d") == [-60, -3600]
    assert ats("--since", "7d", "--sender", "s0", "--status", "sent") == [-60]
    assert ats("--batch", "b1") == [-60]
    assert ats("--sender", "s1", "--status", "sent") == []


def test_rows_deleted_from_the_log_leave_the_index_and_purge_keeps_the_log_searchable(logdb, cli) -> None:
    _load(logdb.database_url, _customers(50))
    store = Store(logdb.database_url)
    with store.write() as conn:  # nothing in mailops deletes log rows today; an operator may
        conn.execute(sa.text("DELETE FROM attempts WHERE recipients = 'customer7@example.org'"))
        conn.execute(
            sa.text("UPDATE attempts SET recipients = 'renamed@example.org' WHERE recipients = 'customer8@example.org'")
        )
    store.close()

    assert log_json(cli, "--to", "customer7@") == []
    assert log_json(cli, "--to", "customer8@") == []
    assert _recipients(log_json(cli, "--to", "renamed@")) == [["renamed@example.org"]]
    purge = cli("queue", "purge", "--before", "2100-01-01")
    assert purge.exit_code == 0, purge.output
    assert _recipients(log_json(cli, "--to", "customer9@")) == [["customer9@example.org"]]
    if logdb.database_url.startswith("sqlite"):
        _sqlite_index_matches_the_log(logdb)
        gone = history._trigram_query("customer7@")
        assert logdb.query("SELECT count(*) FROM attempts_fts WHERE attempts_fts MATCH ?", gone) == [(0,)]


def drop_recipient_search(conn: Any, url: str) -> None:
    """Undo what migration 011 created (its trigram index, and on SQLite the triggers that keep it)."""
    if url.startswith("sqlite"):
        for name in ("attempts_fts_insert", "attempts_fts_delete", "attempts_fts_update"):
            conn.execute(sa.text(f"DROP TRIGGER {name}"))
        conn.execute(sa.text("DROP TABLE attempts_fts"))
    else:
        conn.execute(sa.text("DROP INDEX ix_attempts_recipients_trgm"))


def test_migration_011_indexes_the_rows_an_existing_database_already_has(logdb, cli) -> None:
    url = logdb.database_url
    store = Store(url)
    with store.write() as conn:  # back to the schema of step 010, with a log in it
        conn.execute(sa.text("DELETE FROM schema_migrations WHERE name = '011_recipient_search'"))
        drop_recipient_search(conn, url)
    store.close()
    _load(url, _customers(500))

    assert Store.open(url).migrate() == []  # Store.open applied it
    assert _recipients(log_json(cli, "--to", "Customer321@")) == [["customer321@example.org"]]
    if url.startswith("sqlite"):
        assert _probed(url, "customer321@")
        _sqlite_index_matches_the_log(logdb)
    else:
        assert logdb.query("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_attempts_recipients_trgm'") != []


def test_the_index_is_what_tables_py_describes(logdb) -> None:
    url = logdb.database_url
    assert history.RECIPIENT_SEARCH == tables.RECIPIENT_SEARCH  # log names it without importing tables
    if url.startswith("sqlite"):
        ddl = logdb.query(
            "SELECT sql FROM sqlite_master WHERE name = 'attempts_fts' OR tbl_name = 'attempts' AND type = 'trigger'"
            " ORDER BY rowid"
        )
        assert [sql for (sql,) in ddl] == list(tables.RECIPIENT_SEARCH_SQLITE)
        shadow = {
            n
            for (n,) in logdb.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'attempts_fts%'")
        }
        assert shadow == set(tables.RECIPIENT_SEARCH_SHADOW)
    else:
        [(indexdef,)] = logdb.query("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_attempts_recipients_trgm'")
        assert indexdef == tables.RECIPIENT_SEARCH_POSTGRESQL.replace("ON attempts", "ON public.attempts")
    assert "011_recipient_search" in [name for name, _ in migrations.MIGRATIONS]


def test_without_the_index_log_to_reads_the_log_and_answers_the_same(logdb, cli) -> None:
    """Where migration 011 built no index (an SQLite without FTS5 or its trigram tokenizer, a PostgreSQL without
    pg_trgm or the right to create it), ``log --to`` reads the log newest first and finds the same rows."""
    url = logdb.database_url
    rows = _customers(300)
    rows[123]["recipients"] = "Boss@Example.com, customer123@example.org"
    _load(url, rows)
    asked = ["CUSTOMER123@example.org", "boss@", "nobody@"]
    with_index = [_recipients(log_json(cli, "--to", to)) for to in asked]

    store = Store(url)
    with store.write() as conn:
        drop_recipient_search(conn, url)
    store.close()
    _load(url, [{"recipients": "late@example.org", "at": NOW}])  # written after: no trigger indexes it

    assert not _probed(url, "customer123@")
    assert [_recipients(log_json(cli, "--to", to)) for to in asked] == with_index
    assert with_index[1] == [["Boss@Example.com", "customer123@example.org"]] and with_index[2] == []
    assert _recipients(log_json(cli, "--to", "example.org", "--limit", "3")) == [
        ["late@example.org"],
        ["customer299@example.org"],
        ["customer298@example.org"],
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_where_the_backend_cannot_build_the_index_migration_011_is_a_no_op_and_log_to_still_answers(
    workspace, cli, tmp_path, request: pytest.FixtureRequest, backend: str
) -> None:
    """An SQLite without FTS5, a PostgreSQL role without the right to create pg_trgm: the database migrates
    all the same, and ``log --to`` reads the log."""
    # This machine's backends have both: the refusal is provoked where the backend would report it.
    if backend == "sqlite":
        import sqlite3

        url, refused, error = f"sqlite:///{tmp_path / 'plain.db'}", "CREATE VIRTUAL TABLE", sqlite3.OperationalError
        message = "no such module: fts5"
    else:
        url = request.getfixturevalue("pg_url")  # skips where no PostgreSQL is at hand, before psycopg is needed
        import psycopg

        refused, error = "CREATE EXTENSION", psycopg.errors.InsufficientPrivilege
        message = 'permission denied to create extension "pg_trgm"'

    def refuse(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(refused):
            raise error(message)

    workspace.use_database(url)
    workspace.write_config({"s0": workspace.sender(None, port=2525, auth=False)})
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", refuse)
    try:
        Store.open(url).close()
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", refuse)

    assert workspace.query("SELECT name FROM schema_migrations WHERE name = '011_recipient_search'") == [
        ("011_recipient_search",)
    ]
    if backend == "sqlite":
        assert workspace.query("SELECT name FROM sqlite_master WHERE name LIKE 'attempts_fts%'") == []
    else:
        assert workspace.query("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%trgm%'") == []
    _load(url, _customers(20))
    assert not _probed(url, "customer7@")
    assert _recipients(log_json(cli, "--to", "Customer7@")) == [["customer7@example.org"]]
