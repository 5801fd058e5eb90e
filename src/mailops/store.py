"""The database: engine, transactions that are safe across processes, and migrations.

SQLite is the embedded default. pysqlite's deferred transactions take the
write lock only at the first write, so two processes that both read then
write get "database is locked" or lose an update. Every writing transaction
here starts with ``BEGIN IMMEDIATE`` (the write lock up front) and waits up
to the busy timeout for it; reads use plain deferred transactions, which WAL
lets run beside a writer.

PostgreSQL (``database: postgresql+psycopg://...``) is the shared store of
several hosts. Transactions there are plain READ COMMITTED ones: every write
mailops makes is a single conditional statement (``UPDATE ... WHERE count <
limit``, ``INSERT ... ON CONFLICT DO NOTHING``, claims with ``FOR UPDATE
SKIP LOCKED``) that PostgreSQL re-checks on the locked row, and the few steps
that must not interleave (migrations, queueing a batch) take a
transaction-scoped advisory lock (:func:`serialize`).

``mailops log`` and ``stats`` read a database whose schema is current
without this module or SQLAlchemy (:mod:`mailops.reader`); the URL handling,
connection settings and error messages both use are in :mod:`mailops.dburl`.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, DBAPIError, OperationalError

from . import migrations
from .dburl import (
    BUSY_TIMEOUT_SECONDS,
    is_store_failure,
    mask_url,
    postgres_settings,
    sqlite_path,
    store_error,
)
from .errors import StoreError

#: pooled connections per process: one per delivery worker thread (senders x connections) plus the dispatcher
POOL_SIZE, POOL_OVERFLOW = 20, 20
#: seconds a :class:`KeptConnection` may idle before the next transaction checks out a fresh (pinged) one instead
KEEP_IDLE_CONNECTION = 2.0


def _enable_wal(cur: Any) -> None:
    """Switch to WAL; retried because the switch can fail with "locked" without waiting on the busy handler
    (e.g. while another process is creating the same new database)."""
    import sqlite3

    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _make_engine(url: str) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the database folder {path.parent}: {exc.strerror}; "
                "set 'database:' in senders.yaml to a writable path"
            ) from None
        engine = sa.create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "isolation_level": None, "check_same_thread": False},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Autocommit at the driver level: we issue BEGIN ourselves (below), and
            # PRAGMA journal_mode must run outside any transaction.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            # Takes effect on a new, empty file (before its first table); an existing one is switched once by
            # migration 008 and Store.migrate. Freed pages then go back to the file system (Store.reclaim_space).
            cur.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _enable_wal(cur)
            # NORMAL in WAL mode survives any process crash; only a power cut may
            # lose the last commits (then a message can be sent twice, never lost
            # once its enqueue was synced by a checkpoint).
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(
            f"database URL {mask_url(url)!r} is not a valid URL; check 'database:' in senders.yaml "
            "(e.g. postgresql+psycopg://mailops@db.internal/mailops)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        # libpq-style postgresql:// (or postgres://) would pick psycopg2 in SQLAlchemy; mailops uses psycopg 3
        parsed = parsed.set(drivername="postgresql+psycopg")
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        # Every network wait is bounded; libpq parameters written in the URL's query string win.
        defaults = postgres_settings(BUSY_TIMEOUT_SECONDS)
        options["connect_args"] = {k: v for k, v in defaults.items() if k not in parsed.query}
        options.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    try:
        return sa.create_engine(parsed, **options)
    except ImportError as exc:
        postgres = parsed.get_backend_name() == "postgresql"
        hint = (
            "pip install 'mailops[postgres]' (or '.[postgres]' in the checkout)" if postgres else "install its driver"
        )
        raise StoreError(
            f"database URL {mask_url(url)!r} needs the driver module {exc.name or exc}, which is not installed; "
            f"run: {hint}"
        ) from None
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise StoreError(
            f"database URL {mask_url(url)!r} is not usable: {exc}; check 'database:' in senders.yaml"
        ) from None


class Store:
    """One database (SQLite file or server URL) with write/read transactions and migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self.dialect = self.engine.dialect.name
        # SQLite has one writer at a time. Threads of this process queue on a Python lock
        # (woken at once) instead of SQLite's busy handler, which polls with growing sleeps.
        self._write_lock: threading.Lock | None = threading.Lock() if self.dialect == "sqlite" else None

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Open the database and bring its schema up to date (run on first use of every command)."""
        store = cls(url)
        if migrate:
            store.migrate()
        return store

    @contextmanager
    def _failures_as_store_errors(self) -> Iterator[None]:
        """Turn a failure of the database itself into the one-line StoreError; SQL errors pass through."""
        try:
            yield
        except DBAPIError as exc:
            if is_store_failure(exc, OperationalError, DatabaseError, exc.connection_invalidated):
                raise store_error(self.url, exc, BUSY_TIMEOUT_SECONDS) from None
            raise

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that holds the write lock from its first statement (``BEGIN IMMEDIATE``)."""
        lock = self._write_lock or contextlib.nullcontext()
        with self._failures_as_store_errors(), lock, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def write_on(self, conn: Connection) -> Iterator[Connection]:
        """:meth:`write` on a connection the caller keeps across transactions (``engine.connect()``): no pool
        checkout, and on PostgreSQL no ping, per transaction; for a hot loop of short writes."""
        lock = self._write_lock or contextlib.nullcontext()
        with self._failures_as_store_errors(), lock, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction; in WAL mode it never waits for a writer."""
        with self._failures_as_store_errors(), self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="DEFERRED")
            with conn.begin():
                yield conn

    def check_not_newer(self) -> None:
        """StoreError if a newer mailops has migrated this database: its schema may mean what this one cannot read."""
        with self.read() as conn:
            newer = migrations.unknown(conn)
        if newer:
            raise StoreError(
                f"this database was written by a newer mailops (schema step {newer[-1]!r} is unknown to this "
                f"version): {mask_url(self.url)}; upgrade mailops on this host, or point 'database:' at another "
                "database; nothing was sent"
            )

    def migrate(self) -> list[str]:
        """Apply pending migrations; safe when several processes start at once. Refuses a newer schema."""
        self.check_not_newer()
        with self.read() as conn:
            if not migrations.pending(conn):
                return []
        with self.write() as conn:
            ran = migrations.upgrade(conn)
        if "008_incremental_vacuum" in ran:
            self._switch_to_incremental_vacuum()
        return ran

    def _raw_sqlite(self, script: str, busy_seconds: float) -> bool:
        """Run ``script`` on a pooled SQLite connection outside any transaction (VACUUM and incremental_vacuum
        cannot run inside one); False if the database stayed busy for ``busy_seconds``."""
        import sqlite3

        lock = self._write_lock or contextlib.nullcontext()
        with self._failures_as_store_errors(), lock, self.engine.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
            raw.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
            try:
                raw.executescript(script)  # steps each statement to the end (execute() frees one page only)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return False
                raise
            finally:
                raw.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        return True

    def _switch_to_incremental_vacuum(self) -> None:
        """Rewrite an SQLite database made before migration 008 once, so that its auto_vacuum mode takes
        effect; skipped (and tried again by the next command) while another process keeps it busy."""
        if self.dialect != "sqlite":
            return
        with self.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
        if mode != 2:  # 2 = INCREMENTAL
            self._raw_sqlite("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;", 5.0)

    def reclaim_space(self) -> None:
        """SQLite: give the free pages (dropped bodies, purged messages) back to the file system; a database
        still busy elsewhere keeps them for the next time. PostgreSQL reuses the space by itself (autovacuum)."""
        if self.dialect != "sqlite":
            return
        with self.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
        if mode != 2:
            self._switch_to_incremental_vacuum()
            return
        self._raw_sqlite("PRAGMA incremental_vacuum;", 1.0)

    def sizes(self) -> dict[str, int]:
        """Bytes the messages (outbox bodies), the stored attachments and the log take in the database."""
        groups = {"messages": ["messages"], "attachments": ["attachments"], "log": ["attempts"]}
        with self.read() as conn:
            if self.dialect == "postgresql":
                size = sa.func.pg_total_relation_size
                return {
                    name: sum(int(conn.execute(sa.select(size(sa.literal(t)))).scalar_one() or 0) for t in tables)
                    for name, tables in groups.items()
                }
            pages: dict[str, int] | None
            try:  # the dbstat table counts pages, indexes included (when SQLite was built with it)
                pages = {
                    str(name): int(size or 0)
                    for name, size in conn.exec_driver_sql(
                        "SELECT tbl_name, SUM(pgsize) FROM dbstat JOIN sqlite_schema USING (name) GROUP BY tbl_name"
                    )
                }
            except DBAPIError:
                pages = None
        if pages is not None:
            return {name: sum(pages.get(t, 0) for t in tables) for name, tables in groups.items()}
        with self.read() as conn:  # without dbstat: the bytes of the large columns
            return {
                "messages": int(
                    conn.exec_driver_sql("SELECT COALESCE(SUM(LENGTH(mime)), 0) FROM messages").scalar_one()
                ),
                "attachments": int(conn.exec_driver_sql("SELECT COALESCE(SUM(size), 0) FROM attachments").scalar_one()),
                "log": int(
                    conn.exec_driver_sql(
                        "SELECT COALESCE(SUM(LENGTH(recipients) + COALESCE(LENGTH(subject), 0) + "
                        "COALESCE(LENGTH(smtp_text), 0) + COALESCE(LENGTH(detail), 0) + 64), 0) FROM attempts"
                    ).scalar_one()
                ),
            }

    def pending_migrations(self) -> list[str]:
        """Names of migrations not applied yet (for doctor and ``db status``)."""
        with self.read() as conn:
            return migrations.pending(conn)

    def schema_version(self) -> str | None:
        """The last applied migration's name."""
        with self.read() as conn:
            names = migrations.applied(conn)
        return names[-1] if names else None

    def row_counts(self) -> dict[str, int]:
        """Rows per table, for status displays."""
        out = {}
        with self.read() as conn:
            for table in ("messages", "attachments", "attempts", "usage", "sender_state", "route_state", "events"):
                out[table] = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()
        return out

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


class KeptConnection:
    """A connection kept across short write transactions: no pool checkout, and on PostgreSQL no ping, each.

    The dispatcher's claims and the group transactions (:mod:`mailops.groupcommit`) each keep one. After
    ``KEEP_IDLE_CONNECTION`` seconds idle, or after any failure, it goes back to the pool, which checks the
    next one: the server may have dropped an idle connection, and a group written on a dead one would hand
    its outcomes back (sent twice). Not thread-safe: one user at a time.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: Connection | None = None
        self._used_at = 0.0

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """:meth:`Store.write` on the kept connection."""
        if self._conn is not None and time.monotonic() - self._used_at > KEEP_IDLE_CONNECTION:
            self.close()
        if self._conn is None:
            try:
                self._conn = self.store.engine.connect()
            except sa.exc.DBAPIError:
                with self.store.write() as conn:  # the store's own one-line error, or a connection after all
                    yield conn
                return
        try:
            with self.store.write_on(self._conn) as conn:
                yield conn
        except BaseException:
            self.close()  # whatever broke, the next transaction starts on a checked connection
            raise
        self._used_at = time.monotonic()

    def close(self) -> None:
        """Give the connection back to the pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close: it is gone either way
                conn.close()


def serialize(conn: Connection, name: str) -> None:
    """Hold the lock ``name`` until the transaction ends, so steps under one name never interleave.

    PostgreSQL: a transaction-scoped advisory lock (other hosts wait for it).
    SQLite needs nothing: ``BEGIN IMMEDIATE`` already lets one writer at a time in.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_key(name))))


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` from a lock name."""
    return int.from_bytes(hashlib.blake2b(f"mailops:{name}".encode(), digest_size=8).digest(), "big", signed=True)


_INSERT_IGNORE: dict[tuple[str, str], Any] = {}


def upsert_insert(dialect: str, table: sa.Table) -> Any:
    """``INSERT`` into ``table`` with ``ON CONFLICT`` clauses, for ``dialect`` (``sqlite`` or ``postgresql``).

    Imports only that dialect's package: ``sqlalchemy.dialects.postgresql`` loads all of PostgreSQL's
    drivers' modules, about 30 ms at every start on SQLite.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def insert_ignore(conn: Connection, table: sa.Table, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
    """INSERT that silently skips rows whose primary key exists (SQLite and PostgreSQL)."""
    key = (conn.dialect.name, table.name)
    stmt = _INSERT_IGNORE.get(key)
    if stmt is None:
        stmt = _INSERT_IGNORE[key] = upsert_insert(conn.dialect.name, table).on_conflict_do_nothing()
    conn.execute(stmt, rows)
