"""Database tables as SQLModel classes.

Times are stored as UTC epoch seconds (floats): portable across SQLite and
PostgreSQL, cheap to compare, and free of timezone ambiguity; the CLI shows
them in the config's timezone. The schema itself is created and changed only
by ``migrations.py``; these classes describe it for queries, and a test
checks that the two agree.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel

# Message states a user can see in `mailops queue`.
STAGED = "staged"  # written by a send that is still validating its batch; never delivered
QUEUED = "queued"
SENDING = "sending"  # claimed by a process; the lease says until when
SENT = "sent"
DEFERRED = "deferred"
FAILED = "failed"
CANCELLED = "cancelled"
DUE_STATES = (QUEUED, DEFERRED)
STATES = (STAGED, QUEUED, SENDING, SENT, DEFERRED, FAILED, CANCELLED)


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
