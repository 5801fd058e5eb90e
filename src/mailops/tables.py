"""The database tables, defined once: what the code queries (SQLAlchemy Core).

This is the one description of the schema the code uses. It is created and
changed only by ``migrations.py``, whose steps keep frozen copies of the tables
as they were (never call ``create_all`` on this metadata); a test checks that
these tables match the migrated schema on SQLite and PostgreSQL.

Why Core tables rather than SQLModel classes: every command runs Core
statements only, and importing SQLModel with the ORM it pulls in costs each
start of ``send`` and ``deliver`` about 0.14 s of CPU and 5 MB (measured),
against start-up targets of the README (re-measured: sqlalchemy.orm 0.07 s,
sqlmodel with pydantic 0.10-0.11 s more); the classes would add a second
vocabulary (ORM sessions) that nothing uses; and sqlmodel 0.0.27 requires
SQLAlchemy < 2.1, which would pin the database layer to the older series.
"""

from __future__ import annotations

import sqlalchemy as sa

# String, not Text: statements compile with ``::VARCHAR`` bind casts on psycopg,
# as they always have. The columns are TEXT in the database either way.
metadata = sa.MetaData()

Message = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("batch", sa.String),
    sa.Column("dedup_key", sa.String),
    sa.Column("route", sa.String),
    sa.Column("strategy", sa.String, nullable=False, default="failover"),
    sa.Column("candidates", sa.String, nullable=False),
    sa.Column("nominal_sender", sa.String, nullable=False),
    sa.Column("sender", sa.String),
    sa.Column("envelope_from", sa.String, nullable=False),
    sa.Column("recipients", sa.String, nullable=False),
    sa.Column("to_header", sa.String, nullable=False),
    sa.Column("subject", sa.String, nullable=False),
    sa.Column("template", sa.String),
    sa.Column("message_id", sa.String, nullable=False),
    sa.Column("mime", sa.LargeBinary, nullable=False),
    sa.Column("row", sa.Integer),
    sa.Column("state", sa.String, nullable=False),
    sa.Column("due_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("claimed_by", sa.String),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("first_attempt_at", sa.Float),
    sa.Column("sent_at", sa.Float),
    sa.Column("reason", sa.String),
    sa.Column("recipient_status", sa.String),
    sa.Column("keep_date", sa.Boolean),
    sa.Column("note", sa.String),
    sa.Column("parts", sa.String),  # JSON [[offset, digest], ...]: attachment bodies spliced into mime; NULL: none
    sa.Column("include_suppressed", sa.Boolean),
    sa.Column("body_removed_at", sa.Float),  # when retention dropped mime (None: kept, or dropped before 012)
)

StoredAttachment = sa.Table(
    "attachments",
    metadata,
    sa.Column("digest", sa.String, primary_key=True),  # sha256 hex of data
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("refs", sa.Integer, nullable=False),  # messages whose parts name it; deleted at 0
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),  # the part's body as sent (base64 lines, CRLF)
)

Attempt = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("message_pk", sa.Integer),
    sa.Column("batch", sa.String),
    sa.Column("route", sa.String),
    sa.Column("sender", sa.String),
    sa.Column("from_addr", sa.String),
    sa.Column("recipients", sa.String, nullable=False),
    sa.Column("subject", sa.String),
    sa.Column("template", sa.String),
    sa.Column("message_id", sa.String),
    sa.Column("smtp_code", sa.Integer),
    sa.Column("smtp_text", sa.String),
    sa.Column("outcome", sa.String, nullable=False),
    sa.Column("detail", sa.String),
    sa.Column("duration", sa.Float),
)

Usage = sa.Table(
    "usage",
    metadata,
    sa.Column("sender", sa.String, primary_key=True),
    sa.Column("period", sa.String, primary_key=True),
    sa.Column("count", sa.Integer, nullable=False, default=0),
)

SenderState = sa.Table(
    "sender_state",
    metadata,
    sa.Column("sender", sa.String, primary_key=True),
    sa.Column("last_send_at", sa.Float),
    sa.Column("healthy", sa.Boolean),
    sa.Column("checked_at", sa.Float),
    sa.Column("last_error", sa.String),
    sa.Column("settings", sa.String),  # health.settings_of() of the sender when health was recorded
    sa.Column("last_error_at", sa.Float),
    sa.Column("token_expires_at", sa.Float),
    sa.Column("token_problem", sa.String),
    sa.Column("max_size", sa.Integer),  # SIZE the server announced at the last successful EHLO (None: no limit)
)

RouteState = sa.Table(
    "route_state",
    metadata,
    sa.Column("route", sa.String, primary_key=True),
    sa.Column("counter", sa.Integer, nullable=False, default=0),
)

Event = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("detail", sa.String, nullable=False),
)

Suppression = sa.Table(
    "suppressions",
    metadata,
    sa.Column("address", sa.String, primary_key=True),
    sa.Column("added_at", sa.Float, nullable=False),
    sa.Column("reason", sa.String),
    sa.Column("source", sa.String, nullable=False),
)

# ``mailops log --to``: a trigram index over ``attempts.recipients``, so that a rare address is found without
# reading the whole log. Not a Core table (neither backend's form is one): the SQL below is its definition,
# created by migration 011 (which keeps its own frozen copy), and a test compares it with the migrated schema.

#: SQLite (FTS5's trigram tokenizer, SQLite 3.34 or newer): an external-content index, so the text is not
#: stored twice; ``detail=none`` and ``columnsize=0`` keep only which rows hold each trigram (a third of the
#: size of a full index), enough for a probe whose rows are then checked with LIKE. The triggers keep it in
#: step with every insert, update and delete of attempts, whatever code (or operator) makes them.
RECIPIENT_SEARCH = "attempts_fts"
RECIPIENT_SEARCH_SQLITE = (
    "CREATE VIRTUAL TABLE attempts_fts USING fts5(recipients, content='attempts', content_rowid='id',"
    " tokenize='trigram', detail='none', columnsize=0)",
    "CREATE TRIGGER attempts_fts_insert AFTER INSERT ON attempts BEGIN"
    " INSERT INTO attempts_fts(rowid, recipients) VALUES (new.id, new.recipients); END",
    "CREATE TRIGGER attempts_fts_delete AFTER DELETE ON attempts BEGIN"
    " INSERT INTO attempts_fts(attempts_fts, rowid, recipients) VALUES ('delete', old.id, old.recipients); END",
    "CREATE TRIGGER attempts_fts_update AFTER UPDATE OF recipients ON attempts BEGIN"
    " INSERT INTO attempts_fts(attempts_fts, rowid, recipients) VALUES ('delete', old.id, old.recipients);"
    " INSERT INTO attempts_fts(rowid, recipients) VALUES (new.id, new.recipients); END",
)
#: FTS5's own tables behind it, which the schema inspector lists beside the Core tables
RECIPIENT_SEARCH_SHADOW = ("attempts_fts", "attempts_fts_data", "attempts_fts_idx", "attempts_fts_config")
#: PostgreSQL with the pg_trgm extension: a GIN trigram index that its planner uses for ``lower(recipients) LIKE``
RECIPIENT_SEARCH_POSTGRESQL = (
    "CREATE INDEX ix_attempts_recipients_trgm ON attempts USING gin (lower(recipients) gin_trgm_ops)"
)
