"""The store on a real SQLite file: migrations, tables/schema agreement, WAL, cross-process writes, errors.

Concurrency tests start real Python processes (not threads): the locks that
matter are SQLite's file locks between processes, as when two cron runs overlap.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mailops import migrations, tables
from mailops.errors import StoreError
from mailops.store import Store, mask_url
from tests.fixtures_cli import run_mailops

REPO_ROOT = Path(__file__).resolve().parent.parent
ALL_TABLES = {
    "messages",
    "attempts",
    "usage",
    "sender_state",
    "route_state",
    "events",
    "suppressions",
    "attachments",
}


def url_for(path: Path) -> str:
    """The SQLAlchemy URL mailops builds for a database file."""
    return f"sqlite:///{path}"


def raw_rows(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Read the file directly with sqlite3, behind the store's back."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def table_names(path: Path) -> set[str]:
    """Tables in the file, without SQLite's own."""
    rows = raw_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {name for (name,) in rows}


# ---------------------------------------------------------------- migrations


def test_blank_database_gets_every_migration_and_reopening_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mailops.db"

    store = Store.open(url_for(path))

    expected = [name for name, _ in migrations.MIGRATIONS]
    assert [name for (name,) in raw_rows(path, "SELECT name FROM schema_migrations ORDER BY applied_at")] == expected
    assert table_names(path) == ALL_TABLES | {"schema_migrations", *tables.RECIPIENT_SEARCH_SHADOW}
    assert store.pending_migrations() == []
    assert store.schema_version() == expected[-1]
    first_applied = raw_rows(path, "SELECT name, applied_at FROM schema_migrations")
    store.close()

    again = Store.open(url_for(path))
    assert again.migrate() == []
    assert raw_rows(path, "SELECT name, applied_at FROM schema_migrations") == first_applied
    again.close()


def test_upgrade_from_the_first_schema_applies_a_new_step_once_and_keeps_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mailops.db"
    old = Store(url_for(path))  # no automatic migration: build the "released" first schema by hand
    with old.write() as conn:
        assert migrations.upgrade(conn, steps=migrations.MIGRATIONS[:1]) == ["001_initial"]
        conn.execute(sa.text("INSERT INTO events (at, kind, detail) VALUES (1.5, 'purge', 'kept across upgrades')"))
        conn.execute(sa.text("INSERT INTO usage (sender, period, count) VALUES ('sales', 'day:2026-11-23', 7)"))
    old.close()

    calls: list[str] = []

    def _m999_event_actor(conn: Connection) -> None:
        calls.append("999")
        conn.execute(sa.text("ALTER TABLE events ADD COLUMN actor TEXT"))

    released_later = [name for name, _ in migrations.MIGRATIONS[1:]]  # real steps after the first
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, ("999_event_actor", _m999_event_actor)])

    store = Store(url_for(path))
    assert store.pending_migrations() == [*released_later, "999_event_actor"]
    assert store.migrate() == [*released_later, "999_event_actor"]
    store.close()
    assert calls == ["999"]
    assert [n for (n,) in raw_rows(path, "SELECT name FROM schema_migrations ORDER BY applied_at, name")] == [
        "001_initial",
        *released_later,
        "999_event_actor",
    ]
    assert "actor" in {row[1] for row in raw_rows(path, "PRAGMA table_info(events)")}
    assert raw_rows(path, "SELECT at, kind, detail, actor FROM events") == [
        (1.5, "purge", "kept across upgrades", None)
    ]
    assert raw_rows(path, "SELECT sender, period, count FROM usage") == [("sales", "day:2026-11-23", 7)]

    reopened = Store.open(url_for(path))  # every command opens the store: the step must not run again
    assert reopened.schema_version() == "999_event_actor"
    reopened.close()
    assert calls == ["999"]


def test_a_failing_migration_step_is_rolled_back_and_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mailops.db"
    Store.open(url_for(path)).close()

    def _m002_broken(conn: Connection) -> None:
        conn.execute(sa.text("ALTER TABLE events ADD COLUMN half_done TEXT"))
        raise RuntimeError("step crashed half-way")

    released = [name for name, _ in migrations.MIGRATIONS]
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, ("999_broken", _m002_broken)])
    with pytest.raises(RuntimeError, match="half-way"):
        Store.open(url_for(path))

    assert sorted(n for (n,) in raw_rows(path, "SELECT name FROM schema_migrations")) == released
    assert "half_done" not in {row[1] for row in raw_rows(path, "PRAGMA table_info(events)")}


def test_the_tables_match_the_migrated_schema(tmp_path: Path) -> None:
    """A column added to tables.py without a migration (or the reverse) fails here: tables.py is the one
    definition the code queries, the migrations create what it describes."""
    path = tmp_path / "mailops.db"
    store = Store.open(url_for(path))
    inspector = sa.inspect(store.engine)

    # the trigram index of `log --to` is FTS5's virtual table and its own tables: SQL text in tables.py,
    # compared with the database in tests/test_log_search.py
    assert set(tables.metadata.tables) == set(inspector.get_table_names()) - {
        migrations.MIGRATIONS_TABLE,
        *tables.RECIPIENT_SEARCH_SHADOW,
    }
    for name, table in tables.metadata.tables.items():
        db_columns = inspector.get_columns(name)
        assert [c["name"] for c in db_columns] == [c.name for c in table.columns], name
        assert [c["nullable"] for c in db_columns] == [c.nullable for c in table.columns], name
        assert inspector.get_pk_constraint(name)["constrained_columns"] == [c.name for c in table.primary_key], name
    store.close()


# ---------------------------------------------------------------- WAL and write locking


def test_wal_is_on(tmp_path: Path) -> None:
    path = tmp_path / "mailops.db"
    store = Store.open(url_for(path))
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    store.close()
    # WAL is a property of the file: a plain sqlite3 connection sees it too
    assert raw_rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_write_takes_the_write_lock_at_begin(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: another writer is locked out before the first statement, reads still work."""
    path = tmp_path / "mailops.db"
    store = Store.open(url_for(path))
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with store.write() as conn:
            conn.execute(sa.text("SELECT 1"))  # a read only: a deferred BEGIN would hold no write lock yet
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
            assert other.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)  # WAL: readers are not blocked
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.close()


INCREMENTS = 200

INCREMENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import sqlalchemy as sa
    from mailops.store import Store

    url, go, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    store = Store.open(url)
    deadline = time.monotonic() + 30
    while not go.exists():  # start together with the other process
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.005)
    for _ in range(n):
        with store.write() as conn:  # read, then write from what was read: lost updates show here
            value = conn.execute(sa.text("SELECT counter FROM route_state WHERE route = 'counter'")).scalar_one()
            conn.execute(sa.text("UPDATE route_state SET counter = :v WHERE route = 'counter'"), {"v": value + 1})
    print("done")
    """
)


def _start_python(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 60) -> list[tuple[int, str, str]]:
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def test_two_processes_incrementing_one_counter_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "mailops.db"
    store = Store.open(url_for(path))
    with store.write() as conn:
        conn.execute(sa.text("INSERT INTO route_state (route, counter) VALUES ('counter', 0)"))
    store.close()
    go = tmp_path / "go"

    procs = [_start_python(INCREMENT_SCRIPT, url_for(path), str(go), str(INCREMENTS)) for _ in range(2)]
    time.sleep(0.3)  # let both import and open; each also waits for the go file, bounded
    go.touch()
    results = _finish(procs)

    for code, out, err in results:
        assert (code, out.strip()) == (0, "done"), err
        assert "locked" not in err
    assert raw_rows(path, "SELECT counter FROM route_state WHERE route = 'counter'") == [(2 * INCREMENTS,)]


OPEN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mailops.store import Store

    url, go = sys.argv[1], Path(sys.argv[2])
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.002)
    store = Store.open(url)
    print(store.schema_version())
    """
)


def test_two_processes_opening_a_blank_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "mailops.db"  # the folder does not exist either
    go = tmp_path / "go"

    procs = [_start_python(OPEN_SCRIPT, url_for(path), str(go)) for _ in range(2)]
    time.sleep(0.3)
    go.touch()
    results = _finish(procs)

    last = migrations.MIGRATIONS[-1][0]
    for code, out, err in results:
        assert (code, out.strip()) == (0, last), err
    assert raw_rows(path, "SELECT name FROM schema_migrations") == [(name,) for name, _ in migrations.MIGRATIONS]
    assert table_names(path) == ALL_TABLES | {"schema_migrations", *tables.RECIPIENT_SEARCH_SHADOW}


# ---------------------------------------------------------------- safe display and errors


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://mailops:s3cret@db.internal:5432/mail", "postgresql://mailops:***@db.internal:5432/mail"),
        ("postgresql+psycopg://mailops:p%40ss:w0rd@db/mail", "postgresql+psycopg://mailops:***@db/mail"),
        ("postgresql://mailops:pa/ss@db/mail", "postgresql://mailops:***@db/mail"),
        (
            "postgresql://db.internal/mail?user=mailops&password=s3cret",
            "postgresql://db.internal/mail?user=mailops&password=***",
        ),
        ("postgresql://mailops@db.internal/mail", "postgresql://mailops@db.internal/mail"),
        ("sqlite:////var/lib/mailops/mailops.db", "sqlite:////var/lib/mailops/mailops.db"),
    ],
)
def test_mask_url_hides_passwords(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_database_folder_that_cannot_be_created_is_one_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be\n")

    with pytest.raises(StoreError) as info:
        Store.open(url_for(blocker / "data" / "mailops.db"))

    assert info.value.exit_code == 2
    assert str(info.value) == (
        f"cannot create the database folder {blocker / 'data'}: Not a directory; "
        "set 'database:' in senders.yaml to a writable path"
    )


def test_a_file_that_is_not_a_database_is_one_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are notes, not a database\n" * 100)

    with pytest.raises(StoreError) as info:
        Store.open(url_for(path))

    assert str(info.value) == (
        f"database sqlite:///{path}: file is not a database; "
        "point 'database:' in senders.yaml at a mailops database or at a new file"
    )
    assert path.read_text() == "these are notes, not a database\n" * 100  # untouched


def test_a_folder_as_database_is_one_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        Store.open(url_for(tmp_path))

    assert str(info.value) == (
        f"database sqlite:///{tmp_path}: unable to open database file; "
        "check 'database:' in senders.yaml and that it is reachable"
    )


def test_unusable_database_through_the_cli_is_one_line_exit_2(tmp_path: Path, workspace) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x\n")
    workspace.write_config(
        {"sales": workspace.sender(None, port=2525, auth=False)}, database=str(blocker / "db" / "mailops.db")
    )

    result = run_mailops("stats")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"mailops: error: cannot create the database folder {blocker / 'db'}: Not a directory; "
        "set 'database:' in senders.yaml to a writable path\n"
    )
