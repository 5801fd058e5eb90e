"""Reading the log: filtered attempt rows, per-sender statistics, and time filters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from . import health, quota
from .config import Config
from .errors import UsageError
from .models import Attempt, Event
from .store import Store

ATTEMPTS = Attempt.__table__
EVENTS = Event.__table__
_RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, tz: ZoneInfo, now: float, *, option: str = "--since") -> float:
    """Epoch seconds from ``24h``, ``7d``, ``30m``, ``2w``, a date ``2026-11-01`` or an ISO date-time (config zone)."""
    match = _RELATIVE.match(value)
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UsageError(
            f"{option} {value!r}: expected a duration such as 24h or 7d, or a date such as 2026-11-01"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.timestamp()


@dataclass
class LogFilter:
    """Filters of ``mailops log``."""

    sender: str | None = None
    route: str | None = None
    status: str | None = None
    to: str | None = None
    batch: str | None = None
    since: float | None = None
    limit: int = 50


OUTCOMES = ("sent", "partial", "deferred", "failed", "skipped")


def query_log(store: Store, flt: LogFilter) -> list[dict[str, Any]]:
    """Attempt rows, newest first."""
    query = sa.select(ATTEMPTS).order_by(ATTEMPTS.c.at.desc(), ATTEMPTS.c.id.desc()).limit(flt.limit)
    if flt.sender:
        query = query.where(ATTEMPTS.c.sender == flt.sender)
    if flt.route:
        query = query.where(ATTEMPTS.c.route == flt.route)
    if flt.status:
        if flt.status not in OUTCOMES:
            raise UsageError(f"--status {flt.status!r}: expected one of {', '.join(OUTCOMES)}")
        query = query.where(ATTEMPTS.c.outcome == flt.status)
    if flt.to:
        query = query.where(sa.func.lower(ATTEMPTS.c.recipients).contains(flt.to.strip().lower(), autoescape=True))
    if flt.batch:
        query = query.where(ATTEMPTS.c.batch == flt.batch)
    if flt.since is not None:
        query = query.where(ATTEMPTS.c.at >= flt.since)
    with store.read() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def sender_stats(store: Store, config: Config, since: float, now: float) -> list[dict[str, Any]]:
    """Per sender: usage against limits, success rate, average response time, last error, health."""
    keys = list(config.senders)
    with store.read() as conn:
        used = quota.usage(conn, keys, config.timezone, now)
        healths = health.load(conn)
        rows = conn.execute(
            sa.select(
                ATTEMPTS.c.sender,
                ATTEMPTS.c.outcome,
                sa.func.count(),
                sa.func.avg(ATTEMPTS.c.duration),
            )
            .where((ATTEMPTS.c.at >= since) & ATTEMPTS.c.sender.is_not(None))
            .group_by(ATTEMPTS.c.sender, ATTEMPTS.c.outcome)
        ).all()
    counts: dict[str, dict[str, int]] = {k: {} for k in keys}
    durations: dict[str, float | None] = {}
    for sender, outcome, n, avg in rows:
        counts.setdefault(sender, {})[outcome] = n
        if outcome in ("sent", "partial"):
            durations[sender] = avg
    out = []
    for key in keys:
        sender = config.senders[key]
        c = counts.get(key, {})
        ok = c.get("sent", 0) + c.get("partial", 0)
        tried = ok + c.get("failed", 0) + c.get("deferred", 0)
        h = healths.get(key)
        day, month = used[key]["day"], used[key]["month"]
        out.append(
            {
                "sender": key,
                "email": sender.email,
                "active": sender.active,
                "sent_today": day,
                "daily_limit": sender.daily_limit,
                "daily_usage_pct": round(100 * day / sender.daily_limit, 1) if sender.daily_limit else None,
                "sent_this_month": month,
                "monthly_limit": sender.monthly_limit,
                "monthly_usage_pct": round(100 * month / sender.monthly_limit, 1) if sender.monthly_limit else None,
                "attempts": tried,
                "success_rate": round(100 * ok / tried, 1) if tried else None,
                "avg_response_s": round(durations[key], 3) if durations.get(key) is not None else None,
                "last_error": h.last_error if h else None,
                "health": "unknown" if h is None or h.healthy is None else ("healthy" if h.healthy else "unhealthy"),
                "checked_at": h.checked_at if h else None,
            }
        )
    return out


def record_event(store: Store, kind: str, detail: str, now: float) -> None:
    """Keep an operator action (reset-counts, purge) on record."""
    with store.write() as conn:
        conn.execute(sa.insert(EVENTS).values(at=now, kind=kind, detail=detail))


def local_time(ts: float | None, tz: ZoneInfo) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS`` in the config zone (empty for None)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")


def humanize_wait(seconds: float) -> str:
    """``in 3 h 20 min`` style for deferral messages."""
    seconds = max(0, int(seconds))
    delta = timedelta(seconds=seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    hours, rem = divmod(seconds, 3600)
    if delta.days >= 2:
        return f"{delta.days} days"
    return f"{hours} h {rem // 60} min"
