"""Database URLs, connection settings and their one-line errors, without SQLAlchemy.

Shared by :mod:`mailops.store` (the SQLAlchemy engine every command that
writes uses) and :mod:`mailops.reader` (the plain DB-API connection of
``mailops log`` and ``stats``), so both connect the same way and report an
unreachable or unusable database in the same words.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import StoreError

BUSY_TIMEOUT_SECONDS = float(os.environ.get("MAILOPS_BUSY_TIMEOUT", "60"))
#: seconds to wait for a database server to accept a connection (a URL's own ?connect_timeout= wins)
CONNECT_TIMEOUT_SECONDS = 10


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print), in the user part or the query string."""
    url = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
    # libpq also takes the password as a query parameter: postgresql://host/db?password=...
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL, else None."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None


def postgres_settings(busy_timeout: float) -> dict[str, Any]:
    """libpq parameters every PostgreSQL connection gets unless the URL's query string sets them."""
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        # a server or network that vanishes mid-statement is noticed in about a minute, not hours
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        # like SQLite's busy timeout: a row lock held by a stuck process ends in a clear error
        "options": f"-c lock_timeout={int(busy_timeout * 1000)}",
        "application_name": "mailops",  # tells a DBA's pg_stat_activity who is connected
    }


def connect_failure(text: str) -> str | None:
    """The reason from a server connection failure (``Connection refused``...), or None for other errors."""
    # psycopg: 'connection failed: connection to server at "h", port 5432 failed: FATAL:  database "x" does not exist'
    # or "failed to resolve host 'h': ..." or "connection timeout expired"
    if not (
        text.startswith(("connection failed", "connection timeout", "failed to resolve host", "connection is bad"))
    ):
        return None
    reason = re.sub(r"^connection failed:\s*", "", text)
    reason = re.sub(r'^connection to server at "[^"]*", port \d+ failed:\s*', "", reason)
    reason = re.sub(r'^connection to server on socket "[^"]*" failed:\s*', "", reason)
    return re.sub(r"^(FATAL|ERROR):\s+", "", reason).strip() or text


def _first_line(exc: Exception) -> str:
    """The driver's message (SQLAlchemy keeps the driver's exception as ``orig``), first line only."""
    return (str(getattr(exc, "orig", exc)).splitlines() or [type(exc).__name__])[0]


def sqlstate(exc: Exception) -> str | None:
    """PostgreSQL's SQLSTATE of a driver error, bare or wrapped by SQLAlchemy (None on SQLite)."""
    return getattr(getattr(exc, "orig", exc), "sqlstate", None)


def is_store_failure(exc: Exception, operational: type, plain: type, invalidated: bool = False) -> bool:
    """True for a failure of the database itself rather than of the SQL: locked or lost (``operational``),
    the driver's plain ``DatabaseError`` class (not IntegrityError & co.: "file is not a database",
    corruption), an invalidated connection, or a database user without rights on PostgreSQL."""
    return isinstance(exc, operational) or type(exc) is plain or invalidated or sqlstate(exc) == "42501"


def store_error(url: str, exc: Exception, busy_timeout: float) -> StoreError:
    """The one-line error for a database failure (a driver's exception, bare or wrapped by SQLAlchemy)."""
    text = _first_line(exc)
    reason = connect_failure(text)
    if reason is not None:
        if "does not exist" in reason:
            fix = "create it (createdb -O USER NAME on the server) or fix 'database:' in senders.yaml"
        elif "authentication failed" in reason or "no password supplied" in reason:
            fix = "put the password in ~/.pgpass or PGPASSWORD for this user, or fix the user in 'database:'"
        else:
            fix = "check that the server is running and reachable from this host and 'database:' in senders.yaml"
        return StoreError(
            f"cannot connect to the database {mask_url(url)}: {reason}; {fix} "
            "(or MAILOPS_DATABASE_URL); nothing was sent and queued messages stay in the outbox"
        )
    state = sqlstate(exc)
    if state == "42501":  # insufficient_privilege
        return StoreError(
            f"database {mask_url(url)}: {text}; the database user must own the database "
            "(createdb -O USER NAME, or ALTER DATABASE NAME OWNER TO USER)"
        )
    if "not a database" in text:
        return StoreError(
            f"database {mask_url(url)}: file is not a database; point 'database:' in senders.yaml "
            "at a mailops database or at a new file"
        )
    if "locked" in text or "busy" in text or state == "55P03":  # 55P03: PostgreSQL's lock_timeout
        return StoreError(
            f"the database {mask_url(url)} stayed locked by another mailops process for {busy_timeout:.0f} s; "
            "nothing was lost, run the command again"
        )
    return StoreError(f"database {mask_url(url)}: {text}; check 'database:' in senders.yaml and that it is reachable")
