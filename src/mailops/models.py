"""Database tables as SQLModel classes.

Times are stored as UTC epoch seconds (floats): portable across SQLite and
PostgreSQL, cheap to compare, and free of timezone ambiguity; the CLI shows
them in the config's timezone. The schema itself is created and changed only
by ``migrations.py``; these classes describe it, and a test checks that the
two agree.

The code queries through the Core copies in ``tables.py`` instead: importing
SQLModel and the ORM would add about 160 ms to every start of ``send`` and
``deliver``. A test checks that those tables match these classes, so a change
here must be made there too.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel

from .states import (  # noqa: F401 - re-exported: the states belong with the schema
    CANCELLED,
    DEFERRED,
    DUE_STATES,
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    STAGED,
    STATES,
)


class Message(SQLModel, table=True):
    """One rendered message in the outbox, stored before any SMTP traffic."""

    __tablename__ = "messages"

    id: int | None = Field(default=None, primary_key=True)
    created_at: float
    updated_at: float
    run_id: str  # the `send` invocation that queued it
    batch: str | None = None
    dedup_key: str | None = None
    route: str | None = None
    strategy: str = "failover"
    candidates: str  # JSON list of sender keys, in the route's order
    nominal_sender: str  # the sender the message was rendered for
    sender: str | None = None  # the sender that sent it (or last tried)
    envelope_from: str
    recipients: str  # JSON list of envelope recipients
    to_header: str
    subject: str
    template: str | None = None
    message_id: str
    mime: bytes
    row: int | None = None
    state: str
    due_at: float
    lease_until: float | None = None
    claimed_by: str | None = None
    attempts: int = 0
    first_attempt_at: float | None = None
    sent_at: float | None = None
    reason: str | None = None  # why deferred or failed, one line
    recipient_status: str | None = None  # JSON {address: "sent" | "failed: 550 ..."}
    keep_date: bool | None = None  # a piped message's own Date: not stamped at hand-over (None/False: stamped)
    note: str | None = None  # what mailops changed in a piped message (a From rewrite), shown with its log rows


class Attempt(SQLModel, table=True):
    """The log: one row per delivery attempt or decision about a message."""

    __tablename__ = "attempts"

    id: int | None = Field(default=None, primary_key=True)
    at: float
    message_pk: int | None = None
    batch: str | None = None
    route: str | None = None
    sender: str | None = None
    from_addr: str | None = None
    recipients: str  # comma-separated envelope recipients
    subject: str | None = None
    template: str | None = None
    message_id: str | None = None
    smtp_code: int | None = None
    smtp_text: str | None = None
    outcome: str  # sent | partial | deferred | failed | skipped | error
    detail: str | None = None
    duration: float | None = None


class Usage(SQLModel, table=True):
    """Quota counters: one row per sender and period (``day:2026-11-23``, ``month:2026-11``, ``minute:...``)."""

    __tablename__ = "usage"

    sender: str = Field(primary_key=True)
    period: str = Field(primary_key=True)
    count: int = 0


class SenderState(SQLModel, table=True):
    """Per-sender pacing and health."""

    __tablename__ = "sender_state"

    sender: str = Field(primary_key=True)
    last_send_at: float | None = None
    healthy: bool | None = None
    checked_at: float | None = None
    last_error: str | None = None
    settings: str | None = None
    last_error_at: float | None = None
    token_expires_at: float | None = None  # OAuth2: when the last access token expires (password status)
    token_problem: str | None = None  # OAuth2: why a rotated refresh token could not be stored (doctor)


class RouteState(SQLModel, table=True):
    """Round-robin position per route, shared by every process."""

    __tablename__ = "route_state"

    route: str = Field(primary_key=True)
    counter: int = 0


class Event(SQLModel, table=True):
    """Operator actions that change counters or the queue (reset-counts, purge), kept for the record."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    at: float
    kind: str
    detail: str


class Suppression(SQLModel, table=True):
    """An address mailops does not send to: added by hand, imported, or after a permanent refusal."""

    __tablename__ = "suppressions"

    address: str = Field(primary_key=True)  # addr_spec, lower case
    added_at: float
    reason: str | None = None  # the operator's --reason, or the server's reply to a bounce
    source: str  # manual | import | bounce
