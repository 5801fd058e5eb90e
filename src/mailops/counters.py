"""Quota counters: their period keys, and how many messages they hold now.

The counters are written by :mod:`mailops.quota` (reservations in write
transactions); reading them needs no SQLAlchemy, so ``mailops stats`` runs
:func:`usage` through its light :class:`~mailops.reader.Reader` while routing
and ``send --dry-run`` run it inside their Store transactions.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from .reader import Reader

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def period_keys(ts: float, tz: ZoneInfo) -> dict[str, str]:
    """The counter keys for the day, month and minute containing ``ts``."""
    local = datetime.fromtimestamp(ts, tz)
    return {
        "day": f"day:{local:%Y-%m-%d}",
        "month": f"month:{local:%Y-%m}",
        "minute": f"minute:{local:%Y-%m-%dT%H:%M}",
    }


def usage(conn: Reader | Connection, sender_keys: list[str], tz: ZoneInfo, now: float) -> dict[str, dict[str, int]]:
    """Messages counted today and this month per sender: ``{key: {"day": n, "month": m}}``."""
    keys = period_keys(now, tz)
    out = {key: {"day": 0, "month": 0} for key in sender_keys}
    rows = Reader.over(conn).all(
        "SELECT sender, period, count FROM usage WHERE sender IN (:senders) AND period IN (:periods)",
        senders=list(sender_keys),
        periods=[keys["day"], keys["month"]],
    )
    for row in rows:
        out[row["sender"]]["day" if row["period"].startswith("day:") else "month"] = row["count"]
    return out
