"""Sender health: recorded by test-smtp and by delivery, read by routing."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .models import SenderState
from .store import insert_ignore

SENDER_STATE = SenderState.__table__

#: how long a sender that failed (auth, TLS, connection) is skipped before it is tried again
UNHEALTHY_COOLDOWN = 600.0


@dataclass(frozen=True)
class Health:
    """Last known health of one sender."""

    healthy: bool | None  # None: never checked
    checked_at: float | None
    last_error: str | None


def record(conn: Connection, sender: str, ok: bool, now: float, error: str | None = None) -> None:
    """Store the outcome of a check or a delivery attempt as the sender's health."""
    insert_ignore(conn, SENDER_STATE, {"sender": sender})
    values: dict[str, object] = {"healthy": ok, "checked_at": now}
    if error is not None:
        values["last_error"] = error
    conn.execute(sa.update(SENDER_STATE).where(SENDER_STATE.c.sender == sender).values(**values))


def load(conn: Connection) -> dict[str, Health]:
    """Health of every sender that has a record."""
    rows = conn.execute(
        sa.select(SENDER_STATE.c.sender, SENDER_STATE.c.healthy, SENDER_STATE.c.checked_at, SENDER_STATE.c.last_error)
    )
    return {s: Health(h, c, e) for s, h, c, e in rows}


def is_cooling_down(health: Health | None, now: float) -> bool:
    """True while a recently failed sender should be skipped by routing."""
    return bool(
        health is not None
        and health.healthy is False
        and health.checked_at is not None
        and now - health.checked_at < UNHEALTHY_COOLDOWN
    )
