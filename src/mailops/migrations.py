"""Schema migrations: an ordered registry of named steps, each applied once and recorded.

SQLAlchemy's ``create_all`` never alters an existing table, so the schema is
owned here from the first table on. Each step defines the tables it needs
with its own frozen SQLAlchemy metadata, so later edits to ``tables.py`` can
never change what an old step does. Steps must be portable (SQLite and
PostgreSQL) and are applied inside one write transaction each.

SQLAlchemy is imported inside the functions that use it: the light reader
of ``mailops log`` and ``stats`` (:mod:`mailops.reader`) checks the applied
step names against :data:`MIGRATIONS` without loading it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection

MIGRATIONS_TABLE = "schema_migrations"
#: pg_advisory_xact_lock key that serialises migrations on PostgreSQL ("mailops" in ASCII)
MIGRATION_LOCK_KEY = int.from_bytes(b"mailops", "big")


def _m001_initial(conn: Connection) -> None:
    import sqlalchemy as sa

    md = sa.MetaData()
    sa.Table(
        "messages",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("batch", sa.Text),
        sa.Column("dedup_key", sa.Text),
        sa.Column("route", sa.Text),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("candidates", sa.Text, nullable=False),
        sa.Column("nominal_sender", sa.Text, nullable=False),
        sa.Column("sender", sa.Text),
        sa.Column("envelope_from", sa.Text, nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("to_header", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("template", sa.Text),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("mime", sa.LargeBinary, nullable=False),
        sa.Column("row", sa.Integer),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("due_at", sa.Float, nullable=False),
        sa.Column("lease_until", sa.Float),
        sa.Column("claimed_by", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_attempt_at", sa.Float),
        sa.Column("sent_at", sa.Float),
        sa.Column("reason", sa.Text),
        sa.Column("recipient_status", sa.Text),
        sa.Index("ix_messages_state_due", "state", "due_at"),
        sa.Index("ix_messages_batch_dedup", "batch", "dedup_key"),
        sa.Index("ix_messages_run_state", "run_id", "state"),
    )
    sa.Table(
        "attempts",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("message_pk", sa.Integer),
        sa.Column("batch", sa.Text),
        sa.Column("route", sa.Text),
        sa.Column("sender", sa.Text),
        sa.Column("from_addr", sa.Text),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("template", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("smtp_code", sa.Integer),
        sa.Column("smtp_text", sa.Text),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("duration", sa.Float),
        sa.Index("ix_attempts_at", "at"),
        sa.Index("ix_attempts_sender_at", "sender", "at"),
        sa.Index("ix_attempts_batch", "batch"),
        sa.Index("ix_attempts_message", "message_pk"),
    )
    sa.Table(
        "usage",
        md,
        sa.Column("sender", sa.Text, primary_key=True),
        sa.Column("period", sa.Text, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False, server_default="0"),
    )
    sa.Table(
        "sender_state",
        md,
        sa.Column("sender", sa.Text, primary_key=True),
        sa.Column("last_send_at", sa.Float),
        sa.Column("healthy", sa.Boolean),
        sa.Column("checked_at", sa.Float),
        sa.Column("last_error", sa.Text),
    )
    sa.Table(
        "route_state",
        md,
        sa.Column("route", sa.Text, primary_key=True),
        sa.Column("counter", sa.Integer, nullable=False, server_default="0"),
    )
    sa.Table(
        "events",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    md.create_all(conn)


def _m002_stats_index(conn: Connection) -> None:
    import sqlalchemy as sa

    # Covering index for `mailops stats`: the per-sender/outcome aggregation over a time window
    # reads only this index (0.9 s -> 0.13 s over a million log rows).
    md = sa.MetaData()
    table = sa.Table(
        "attempts",
        md,
        sa.Column("sender", sa.Text),
        sa.Column("outcome", sa.Text),
        sa.Column("at", sa.Float),
        sa.Column("duration", sa.Float),
    )
    sa.Index("ix_attempts_sender_outcome_at", table.c.sender, table.c.outcome, table.c.at, table.c.duration).create(
        conn
    )


def _m003_health_settings(conn: Connection) -> None:
    import sqlalchemy as sa

    # Health belongs to the settings it was measured with (host, port, security, username, auth):
    # after the operator changes them, the old failures say nothing. And when the last error happened.
    conn.execute(sa.text("ALTER TABLE sender_state ADD COLUMN settings TEXT"))
    conn.execute(sa.text("ALTER TABLE sender_state ADD COLUMN last_error_at FLOAT"))


def _m004_suppressions(conn: Connection) -> None:
    import sqlalchemy as sa

    # The suppression list: one row per address (lower case), shared by every host on PostgreSQL.
    md = sa.MetaData()
    sa.Table(
        "suppressions",
        md,
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("added_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
    )
    md.create_all(conn)


def _m005_message_origin(conn: Connection) -> None:
    import sqlalchemy as sa

    # A message piped in with its own Date keeps it (delivery stamps only mailops' own Date), and what mailops
    # changed in a piped message (a From rewrite) is shown with every log row of it.
    conn.execute(sa.text("ALTER TABLE messages ADD COLUMN keep_date BOOLEAN"))
    conn.execute(sa.text("ALTER TABLE messages ADD COLUMN note TEXT"))


def _m006_token_state(conn: Connection) -> None:
    import sqlalchemy as sa

    # OAuth2 senders: when the last access token expires (password status shows it) and why a rotated
    # refresh token could not be stored (doctor shows it until a later refresh or login works).
    conn.execute(sa.text("ALTER TABLE sender_state ADD COLUMN token_expires_at FLOAT"))
    conn.execute(sa.text("ALTER TABLE sender_state ADD COLUMN token_problem TEXT"))


def _m007_attachments(conn: Connection) -> None:
    import sqlalchemy as sa

    # Each distinct attachment body (its base64 lines, as sent) is stored once, keyed by its sha256, and shared
    # by every message that carries it. A message keeps its own bytes without those bodies in ``mime`` and, in
    # ``parts``, where each one goes (JSON [[offset, digest], ...]; NULL: ``mime`` is the whole message, as in
    # every row written before this step). ``refs`` counts the messages whose ``parts`` name the attachment,
    # kept in the transactions that add or drop them; at 0 it is deleted. ``refs`` comes before ``data`` so
    # that reading it never reads the body.
    md = sa.MetaData()
    sa.Table(
        "attachments",
        md,
        sa.Column("digest", sa.Text, primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("refs", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    md.create_all(conn)
    conn.execute(sa.text("ALTER TABLE messages ADD COLUMN parts TEXT"))
    # Retention finds the bodies still kept after delivery ended, oldest first, without reading the others
    # (a partial index: a body once dropped leaves it). The predicate is outbox.KEPT_BODY, word for word,
    # so that the query matches it.
    kept = sa.text("state IN ('sent', 'failed') AND length(mime) > 0")
    messages = sa.Table("messages", sa.MetaData(), sa.Column("updated_at", sa.Float))
    # Only the connected dialect's keyword: naming another (postgresql_where on SQLite) makes SQLAlchemy import
    # that dialect's whole package to check it, 40-50 ms of every send that creates its database.
    where: dict[str, Any] = {f"{conn.dialect.name}_where": kept}
    sa.Index("ix_messages_kept_bodies", messages.c.updated_at, **where).create(conn)


def _m008_incremental_vacuum(conn: Connection) -> None:
    import sqlalchemy as sa

    # SQLite: give the space of dropped bodies back to the file system (PRAGMA incremental_vacuum after
    # retention and purge). A database created before this step only switches once it is rewritten:
    # Store.migrate runs that VACUUM after this transaction (it cannot run inside one). A new database
    # has the mode from its first connection (store._on_connect).
    if conn.dialect.name == "sqlite":
        conn.execute(sa.text("PRAGMA auto_vacuum = INCREMENTAL"))


def _m009_server_max_size(conn: Connection) -> None:
    import sqlalchemy as sa

    # The SIZE a sender's server announced at its last successful EHLO (RFC 1870): `send` refuses a message
    # larger than that before queueing it, as it does for max_message_size. Kept with the sender's health,
    # for the settings it was measured with.
    conn.execute(sa.text("ALTER TABLE sender_state ADD COLUMN max_size INTEGER"))


def _m010_include_suppressed(conn: Connection) -> None:
    import sqlalchemy as sa

    # Delivery leaves out recipients suppressed after a message was queued, except in messages queued with
    # --include-suppressed (the operator's choice when they were queued).
    conn.execute(sa.text("ALTER TABLE messages ADD COLUMN include_suppressed BOOLEAN"))


def _m011_recipient_search(conn: Connection) -> None:
    import sqlalchemy as sa

    # `log --to ADDR` read the whole log for a rare address (0.5 s per million rows). A trigram index over
    # attempts.recipients (tables.RECIPIENT_SEARCH_*) finds it at once; existing rows are indexed here. Where
    # the backend lacks what it needs (an SQLite without FTS5 or its trigram tokenizer, a PostgreSQL without
    # pg_trgm or the right to create it), the step does nothing and `log --to` scans as before.
    if conn.dialect.name == "sqlite":
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.text(
                        "CREATE VIRTUAL TABLE attempts_fts USING fts5(recipients, content='attempts',"
                        " content_rowid='id', tokenize='trigram', detail='none', columnsize=0)"
                    )
                )
        except sa.exc.OperationalError:  # "no such module: fts5" / "no such tokenizer: trigram"
            return
        for trigger in (
            "CREATE TRIGGER attempts_fts_insert AFTER INSERT ON attempts BEGIN"
            " INSERT INTO attempts_fts(rowid, recipients) VALUES (new.id, new.recipients); END",
            "CREATE TRIGGER attempts_fts_delete AFTER DELETE ON attempts BEGIN"
            " INSERT INTO attempts_fts(attempts_fts, rowid, recipients) VALUES ('delete', old.id, old.recipients);"
            " END",
            "CREATE TRIGGER attempts_fts_update AFTER UPDATE OF recipients ON attempts BEGIN"
            " INSERT INTO attempts_fts(attempts_fts, rowid, recipients) VALUES ('delete', old.id, old.recipients);"
            " INSERT INTO attempts_fts(rowid, recipients) VALUES (new.id, new.recipients); END",
        ):
            conn.execute(sa.text(trigger))
        conn.execute(sa.text("INSERT INTO attempts_fts(attempts_fts) VALUES ('rebuild')"))  # the existing rows
        return
    if conn.dialect.name == "postgresql":
        available = conn.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).first()
        if available is None:
            return
        try:
            with conn.begin_nested():
                conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        except sa.exc.DBAPIError:  # no right to create it (pg_trgm is trusted: a database owner may)
            return
        conn.execute(
            sa.text("CREATE INDEX ix_attempts_recipients_trgm ON attempts USING gin (lower(recipients) gin_trgm_ops)")
        )


def _m012_body_removed_at(conn: Connection) -> None:
    import sqlalchemy as sa

    # `queue show` of a message whose body retention dropped says so and when (its MIME is empty then).
    # Bodies dropped before this step have no time: they stay NULL here, shown as not recorded.
    conn.execute(sa.text("ALTER TABLE messages ADD COLUMN body_removed_at FLOAT"))


def _m013_claim_indexes(conn: Connection) -> None:
    import sqlalchemy as sa

    # A claim reads the first due messages of each state, of one run (`send`), one batch (`send --batch`) or
    # any, in (due_at, id) order (outbox._claim_statement): these indexes give that order, so a claim reads
    # about as many rows as it takes. PostgreSQL read and sorted every due message at each claim before: all
    # of a send's messages have one due time, and (state, due_at) or (run_id, state) left their id order to a
    # sort. (SQLite's indexes end with the rowid anyway.) Each new index serves what the one it replaces did.
    conn.execute(sa.text("CREATE INDEX ix_messages_state_due_id ON messages (state, due_at, id)"))
    conn.execute(sa.text("CREATE INDEX ix_messages_run_state_due ON messages (run_id, state, due_at, id)"))
    conn.execute(sa.text("CREATE INDEX ix_messages_batch_state_due ON messages (batch, state, due_at, id)"))
    conn.execute(sa.text("DROP INDEX ix_messages_state_due"))
    conn.execute(sa.text("DROP INDEX ix_messages_run_state"))


#: name -> step, applied in this order; never edit or reorder a released step, add a new one.
MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("001_initial", _m001_initial),
    ("002_stats_index", _m002_stats_index),
    ("003_health_settings", _m003_health_settings),
    ("004_suppressions", _m004_suppressions),
    ("005_message_origin", _m005_message_origin),
    ("006_token_state", _m006_token_state),
    ("007_attachments", _m007_attachments),
    ("008_incremental_vacuum", _m008_incremental_vacuum),
    ("009_server_max_size", _m009_server_max_size),
    ("010_include_suppressed", _m010_include_suppressed),
    ("011_recipient_search", _m011_recipient_search),
    ("012_body_removed_at", _m012_body_removed_at),
    ("013_claim_indexes", _m013_claim_indexes),
]


def _migrations_table() -> sa.Table:
    import sqlalchemy as sa

    return sa.Table(
        MIGRATIONS_TABLE,
        sa.MetaData(),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("applied_at", sa.Float, nullable=False),
    )


def applied(conn: Connection) -> list[str]:
    """Names of the steps already applied (empty for a blank database)."""
    import sqlalchemy as sa

    if not sa.inspect(conn).has_table(MIGRATIONS_TABLE):
        return []
    table = _migrations_table()
    # step names are numbered (001_, 002_...), so name order is application order on every database;
    # without ORDER BY, PostgreSQL may return them in any order and schema_version() would be wrong
    return [row[0] for row in conn.execute(sa.select(table.c.name).order_by(table.c.name))]


def unknown(conn: Connection) -> list[str]:
    """Applied steps this version does not know: a newer mailops wrote the database."""
    known = {name for name, _ in MIGRATIONS}
    return [name for name in applied(conn) if name not in known]


def pending(conn: Connection) -> list[str]:
    """Names of the steps not yet applied."""
    done = set(applied(conn))
    return [name for name, _ in MIGRATIONS if name not in done]


def upgrade(conn: Connection, steps: list[tuple[str, Callable[[Connection], None]]] | None = None) -> list[str]:
    """Apply every pending step inside the caller's write transaction; returns what was applied.

    On SQLite the caller holds the write lock (``BEGIN IMMEDIATE``); on
    PostgreSQL a transaction-scoped advisory lock is taken first. Either way
    two processes (or hosts) opening a blank database at once cannot both run
    a step: the second waits, then finds the steps applied.
    """
    import sqlalchemy as sa

    if conn.dialect.name == "postgresql":
        # Without it both would CREATE TABLE at once and one would fail on a duplicate catalog entry.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    table = _migrations_table()
    table.create(conn, checkfirst=True)
    done = set(applied(conn))
    ran = []
    for name, step in steps if steps is not None else MIGRATIONS:
        if name in done:
            continue
        step(conn)
        conn.execute(table.insert().values(name=name, applied_at=time.time()))
        ran.append(name)
    return ran
