"""The suppression list: addresses mailops does not send to (dead mailboxes, people who asked).

Kept in the database, so on PostgreSQL every host shares it. Addresses are
stored folded to lower case (``addr_spec`` as parsed by ``compose``), so a
lookup ignores case. Fed by the operator (``mailops suppress add|import``) and
by delivery: a recipient a server refuses for good as nonexistent (RFC 3463
5.1.1 bad mailbox, 5.1.10 null MX, or 550/551/553 with a 5.1.x code) is added
with the server's reply. No SMTP and no printing here.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import InputError
from .store import insert_ignore
from .tables import Suppression

#: enhanced status code (RFC 3463) at the start of a reply text: "5.1.1 user unknown"
_ENHANCED_RE = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
#: 5.1.x codes about the sender's own address (RFC 3463): not a verdict on the recipient
_SENDER_SUBJECTS = {7, 8}
#: addresses looked up per statement (well under SQLite's and PostgreSQL's bind limits)
_CHUNK = 500


@dataclass(frozen=True)
class Entry:
    """One suppressed address."""

    address: str
    added_at: float
    reason: str | None
    source: str  # manual | import | bounce


def key(address: str) -> str:
    """The stored form of an address: its addr_spec folded to lower case."""
    return address.strip().lower()


def is_nonexistent_recipient(code: int, text: str) -> bool:
    """True when an SMTP reply refuses a recipient for good because the mailbox does not exist.

    5.1.1 (bad destination mailbox) and 5.1.10 (recipient address has null
    MX) with any 5xx reply code, and 550/551/553 with another 5.1.x code
    except 5.1.7 and 5.1.8, which are about the sender's address.
    """
    if not 500 <= code < 600:
        return False
    match = _ENHANCED_RE.match(text or "")
    if match is None or match.group(1) != "5" or match.group(2) != "1":
        return False
    detail = int(match.group(3))
    if detail in (1, 10):
        return True
    return code in (550, 551, 553) and detail not in _SENDER_SUBJECTS


def add(conn: Connection, addresses: Iterable[str], *, reason: str | None, source: str, now: float) -> int:
    """Add addresses (already validated); returns how many were new (an address already listed keeps its entry)."""
    keys = list(dict.fromkeys(key(a) for a in addresses))
    if not keys:
        return 0
    before = len(lookup(conn, keys))
    insert_ignore(
        conn, Suppression, [{"address": k, "added_at": now, "reason": reason, "source": source} for k in keys]
    )
    return len(keys) - before


def remove(conn: Connection, addresses: Iterable[str]) -> int:
    """Remove addresses; returns how many were listed."""
    keys = list(dict.fromkeys(key(a) for a in addresses))
    removed = 0
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        removed += conn.execute(sa.delete(Suppression).where(Suppression.c.address.in_(chunk))).rowcount or 0
    return removed


#: PostgreSQL: the entries of an array of stored forms (``b_keys``), in one statement whatever their number
LOOKUP_ANY = sa.select(Suppression.c.address, Suppression.c.reason, Suppression.c.source).where(
    Suppression.c.address == sa.any_(sa.bindparam("b_keys", type_=sa.ARRAY(sa.String)))
)


def reasons(rows: Iterable[Any]) -> dict[str, str]:
    """``(address, reason, source)`` rows as :func:`lookup` returns them: address -> reason (or source)."""
    return {address: reason or source for address, reason, source in rows}


def lookup(conn: Connection, addresses: Iterable[str]) -> dict[str, str]:
    """The listed ones of ``addresses`` (stored form) mapped to their reason (or their source when none)."""
    keys = list(dict.fromkeys(key(a) for a in addresses))
    found: dict[str, str] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        rows = conn.execute(
            sa.select(Suppression.c.address, Suppression.c.reason, Suppression.c.source).where(
                Suppression.c.address.in_(chunk)
            )
        )
        for address, reason, source in rows:
            found[address] = reason or source
    return found


def entries(conn: Connection) -> list[Entry]:
    """Every suppressed address, in address order."""
    rows = conn.execute(
        sa.select(Suppression.c.address, Suppression.c.added_at, Suppression.c.reason, Suppression.c.source).order_by(
            Suppression.c.address
        )
    )
    return [Entry(*row) for row in rows]


def read_import_file(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the addresses in ``path``: one address per line, or a CSV with an ``email`` column.

    Blank lines and lines starting with ``#`` are skipped. InputError for an
    unreadable file or a CSV without an ``email`` column.
    """
    from .files import read_text_file
    from .limits import DATA_FILE_MAX_BYTES

    text = read_text_file(path, DATA_FILE_MAX_BYTES)
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    if "," in first or first.strip().lower() == "email":
        reader = csv.DictReader(io.StringIO(text))
        columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        if "email" not in columns:
            shown = ", ".join(n for n in reader.fieldnames or [] if n) or "(none)"
            raise InputError(f"{path}: a CSV file needs an 'email' column (columns: {shown}); rename the column")
        column = columns["email"]
        out: list[tuple[int, str]] = []
        for row in reader:
            value: Any = row.get(column)
            if isinstance(value, str) and value.strip():
                out.append((reader.line_num, value.strip()))
        return out
    return [
        (number, line.strip())
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def all_reasons(conn: Connection) -> dict[str, str]:
    """Every suppressed address (stored form) mapped to its reason (or source): what ``send`` checks rows against.

    Read once per run: one query instead of one per row of a large merge.
    """
    rows = conn.execute(sa.select(Suppression.c.address, Suppression.c.reason, Suppression.c.source))
    return {address: reason or source for address, reason, source in rows}
