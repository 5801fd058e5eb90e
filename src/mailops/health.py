"""Sender health: recorded by test-smtp and by delivery, read by routing and ``mailops stats``.

Reading needs no SQLAlchemy (``stats`` runs :func:`load` through its light
:class:`~mailops.reader.Reader`); recording, which runs in the Store's write
transactions, imports the table and SQLAlchemy when first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .reader import Reader

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .config import Sender
    from .oauth import TokenNews
    from .store import Store

#: how long a sender that failed (auth, TLS, connection) is skipped before it is tried again
UNHEALTHY_COOLDOWN = 600.0


@dataclass(frozen=True)
class Health:
    """Last known health of one sender."""

    healthy: bool | None  # None: never checked
    checked_at: float | None
    last_error: str | None
    settings: str | None = None  # settings_of() the sender when measured (None: recorded before 003)
    last_error_at: float | None = None
    max_size: int | None = None  # SIZE the server announced at the last successful EHLO


def settings_of(sender: Sender) -> str:
    """The connection settings a health record is valid for: changing any of them makes it irrelevant."""
    return f"{sender.host}:{sender.port} {sender.security} user={sender.username} auth={sender.auth}"


def record(
    conn: Connection,
    sender: str,
    ok: bool,
    now: float,
    error: str | None = None,
    settings: str | None = None,
    *,
    max_size: int | None = None,
) -> None:
    """Store the outcome of a check or a delivery attempt as the sender's health (for ``settings``).

    A success also stores ``max_size``, the SIZE the server announced (None: it announced no limit).
    """
    import sqlalchemy as sa

    from .store import insert_ignore
    from .tables import SenderState

    insert_ignore(conn, SenderState, {"sender": sender})
    values: dict[str, object] = {"healthy": ok, "checked_at": now, "settings": settings}
    if ok:
        values["max_size"] = max_size
    if error is not None:
        values["last_error"] = error
        values["last_error_at"] = now
    conn.execute(sa.update(SenderState).where(SenderState.c.sender == sender).values(**values))


def record_tokens(conn: Connection, news: TokenNews) -> None:
    """Store what a run learnt about OAuth2 tokens (``oauth.take_news``): access token expiries and the
    problem (or its end) of storing a rotated refresh token."""
    import sqlalchemy as sa

    from .store import insert_ignore
    from .tables import SenderState

    for key in {*news.expires_at, *news.problems}:
        insert_ignore(conn, SenderState, {"sender": key})
        values: dict[str, object] = {}
        if key in news.expires_at:
            values["token_expires_at"] = news.expires_at[key]
        if key in news.problems:
            values["token_problem"] = news.problems[key]
        conn.execute(sa.update(SenderState).where(SenderState.c.sender == key).values(**values))


def record_token_news(store: Store) -> list[str]:
    """Record what this process's OAuth2 logins learnt since the last call (``oauth.take_news``); returns the
    problems as warning lines. Nothing to do, and nothing imported, when no OAuth2 sender logged in."""
    import sys

    oauth = sys.modules.get("mailops.oauth")
    if oauth is None:
        return []
    news: TokenNews = oauth.take_news()
    if news.expires_at or news.problems:
        with store.write() as conn:
            record_tokens(conn, news)
    return [problem for problem in news.problems.values() if problem]


def clear_token_problem(conn: Connection, sender: str) -> None:
    """A new refresh token was stored (``oauth login``/``oauth token``): an older storing problem is over."""
    import sqlalchemy as sa

    from .tables import SenderState

    conn.execute(
        sa.update(SenderState).where(SenderState.c.sender == sender).values(token_problem=None, token_expires_at=None)
    )


@dataclass(frozen=True)
class TokenState:
    """What the database knows of an OAuth2 sender's tokens."""

    expires_at: float | None  # the last access token's expiry (None: none obtained yet)
    problem: str | None  # a rotated refresh token that could not be stored


def load_tokens(conn: Reader | Connection) -> dict[str, TokenState]:
    """Token state of every sender that has a record."""
    rows = Reader.over(conn).all("SELECT sender, token_expires_at, token_problem FROM sender_state")
    return {r["sender"]: TokenState(r["token_expires_at"], r["token_problem"]) for r in rows}


def load(conn: Reader | Connection) -> dict[str, Health]:
    """Health of every sender that has a record."""
    rows = Reader.over(conn).all(
        "SELECT sender, healthy, checked_at, last_error, settings, last_error_at, max_size FROM sender_state"
    )
    # SQLite keeps booleans as 0 and 1
    return {
        r["sender"]: Health(
            None if r["healthy"] is None else bool(r["healthy"]),
            r["checked_at"],
            r["last_error"],
            r["settings"],
            r["last_error_at"],
            r["max_size"],
        )
        for r in rows
    }


def server_max_size(health: Health | None, sender: Sender) -> int | None:
    """The SIZE the sender's server announced when last reached with its current settings, if any."""
    if health is None or not health.healthy or not applies_to(health, settings_of(sender)):
        return None
    return health.max_size


def applies_to(health: Health | None, settings: str | None) -> bool:
    """True when ``health`` was measured with these settings (or the caller does not know them)."""
    return health is not None and (settings is None or health.settings is None or health.settings == settings)


def is_cooling_down(health: Health | None, now: float, settings: str | None = None) -> bool:
    """True while a recently failed sender should be skipped by routing.

    A failure measured with other settings (the operator fixed host, port,
    security, username or auth since) does not count: the sender is tried at once.
    """
    return bool(
        health is not None
        and applies_to(health, settings)
        and health.healthy is False
        and health.checked_at is not None
        and now - health.checked_at < UNHEALTHY_COOLDOWN
    )
