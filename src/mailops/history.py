"""Reading the log: filtered attempt rows, per-sender statistics, and time filters.

The queries are SQL text run by a :class:`~mailops.reader.Reader`, so
``mailops log`` and ``stats`` never import SQLAlchemy (see :mod:`mailops.reader`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from . import counters, health
from .errors import UsageError

if TYPE_CHECKING:
    from .config import Config
    from .reader import Reader
    from .store import Store

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


_AHEAD = re.compile(r"^\s*\+\s*(\d+)\s*([mhdw])\s*$")
#: how far ahead ``send --at`` may schedule: beyond it a typo (a year 2062) would hide a message for ever
MAX_AHEAD = 366 * 86400


def parse_at(value: str, tz: ZoneInfo, now: float, *, option: str = "--at") -> float:
    """Epoch seconds of a future time: ``+30m``, ``+2h``, ``+1d``, ``+1w``, or an ISO date-time (config zone).

    UsageError for text that is neither, a time not after ``now``, or one more than a year ahead.
    """
    match = _AHEAD.match(value)
    if match:
        at = now + int(match.group(1)) * _UNITS[match.group(2)]
    else:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise UsageError(
                f"{option} {value!r}: expected +30m, +2h, +1d or a date-time such as 2026-12-24T09:00 "
                f"(in {tz.key} unless it names its zone)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=tz)
        at = parsed.timestamp()
    if at <= now:
        raise UsageError(
            f"{option} {value!r}: {local_time(at, tz)} {tz.key} is not in the future (now: {local_time(now, tz)}); "
            "give a later time"
        )
    if at - now > MAX_AHEAD:
        raise UsageError(f"{option} {value!r}: more than a year ahead; give a nearer time")
    return at


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
#: what ``stats`` counts: successes (sent, partial) among tries (and failed, deferred)
_STATS_OUTCOMES = ("sent", "partial", "failed", "deferred")


#: the columns of ``mailops log --json``, in this order
LOG_COLUMNS = (
    "id",
    "at",
    "message_pk",
    "batch",
    "route",
    "sender",
    "from_addr",
    "recipients",
    "subject",
    "template",
    "message_id",
    "smtp_code",
    "smtp_text",
    "outcome",
    "detail",
    "duration",
)
#: ``mailops log`` also shows the message's note (see gateway): one primary-key lookup per row shown
_NOTE = "(SELECT note FROM messages WHERE messages.id = attempts.message_pk)"
_LIKE_ESCAPE = "/"


def _contains(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its ``%``, ``_`` and escape character taken literally."""
    for char in (_LIKE_ESCAPE, "%", "_"):
        text = text.replace(char, _LIKE_ESCAPE + char)
    return f"%{text}%"


#: the trigram index of ``log --to`` (tables.RECIPIENT_SEARCH; importing tables would load SQLAlchemy)
RECIPIENT_SEARCH = "attempts_fts"
#: ``log --to`` on SQLite probes the trigram index for at most this many candidate rows; more (a broad
#: pattern such as ``example.org``) and the newest-first scan of the log finds the newest matches sooner
PROBE_CAP = 10000


def _trigram_query(text: str) -> str | None:
    """An FTS5 query matching the rows whose text holds every trigram of ``text`` (None under 3 characters).

    Each trigram is a quoted string (FTS5 syntax characters in it are text); rows holding them all are a
    superset of the rows containing ``text``, which the LIKE of the query then narrows exactly.
    """
    grams = dict.fromkeys(text[i : i + 3] for i in range(len(text) - 2))
    if not grams:
        return None
    return " AND ".join('"' + gram.replace('"', '""') + '"' for gram in grams)


def _probe(db: Reader, to: str) -> str | None:
    """The FTS5 query for ``--to`` when the trigram index narrows it to at most PROBE_CAP rows, else None."""
    query = _trigram_query(to)
    if query is None or db.dialect != "sqlite":
        return None
    # migration 011 leaves it out where SQLite lacks FTS5 or its trigram tokenizer
    if not db.all("SELECT 1 AS found FROM sqlite_master WHERE name = :name", name=RECIPIENT_SEARCH):
        return None
    found = db.all(
        f"SELECT rowid FROM {RECIPIENT_SEARCH} WHERE {RECIPIENT_SEARCH} MATCH :query LIMIT :cap",
        query=query,
        cap=PROBE_CAP + 1,
    )
    return query if len(found) <= PROBE_CAP else None


def query_log(db: Reader, flt: LogFilter) -> list[dict[str, Any]]:
    """Attempt rows (the columns of LOG_COLUMNS, then ``note``: the message's, or None), newest first.

    ``--to`` matches a part of the recipients, case-insensitively (ASCII letters on SQLite, as its LIKE and
    lower() do). On SQLite a pattern of 3 characters or more that few rows hold is looked up in the trigram
    index (migration 011) and only those rows are read; a broad or short one reads the log newest first,
    which stops at ``--limit`` matches.
    """
    if flt.status and flt.status not in OUTCOMES:
        raise UsageError(f"--status {flt.status!r}: expected one of {', '.join(OUTCOMES)}")
    needle = flt.to.strip().lower() if flt.to else ""
    probe = _probe(db, needle) if needle else None
    # With the probe's rows in hand, no other index may drive the query: `+column` keeps SQLite's planner
    # from walking, say, one sender's index (a quarter of the log) and checking each row against the probe.
    col = "+{}".format if probe else "{}".format
    where: list[str] = []
    params: dict[str, Any] = {"limit": flt.limit}
    for column, value in (("sender", flt.sender), ("route", flt.route), ("batch", flt.batch)):
        if value:
            where.append(f"{col(column)} = :{column}")
            params[column] = value
    if flt.status:
        where.append(f"{col('outcome')} = :status")
        params["status"] = flt.status
    if probe:
        where.append(f"id IN (SELECT rowid FROM {RECIPIENT_SEARCH} WHERE {RECIPIENT_SEARCH} MATCH :probe)")
        params["probe"] = probe
    if needle:
        # SQLite's LIKE already ignores ASCII case, all its lower() folds: lower() would only cost a call a row
        recipients = "lower(recipients)" if db.dialect == "postgresql" else "recipients"
        where.append(f"{recipients} LIKE :to ESCAPE '{_LIKE_ESCAPE}'")
        params["to"] = _contains(needle)
    if flt.since is not None:
        where.append(f"{col('at')} >= :since")
        params["since"] = flt.since
    # what mailops changed in a piped message (a From rewrite) belongs to the message: shown with each of its rows
    sql = f"SELECT {', '.join(LOG_COLUMNS)}, {_NOTE} AS note FROM attempts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return db.all(sql + " ORDER BY at DESC, id DESC LIMIT :limit", **params)


def sender_stats(db: Reader, config: Config, since: float, now: float) -> list[dict[str, Any]]:
    """Per sender: usage against limits, success rate, average response time, last error, health."""
    keys = list(config.senders)
    used = counters.usage(db, keys, config.timezone, now)
    healths = health.load(db)
    # Only the counts used below: with sender and outcome pinned, the covering index
    # ix_attempts_sender_outcome_at is read from `since` on, not from the first row of the log.
    rows = db.all(
        "SELECT sender, outcome, count(*) AS n, avg(duration) AS avg_duration FROM attempts"
        " WHERE sender IN (:senders) AND outcome IN (:outcomes) AND at >= :since"
        " GROUP BY sender, outcome ORDER BY sender, outcome",
        senders=keys,
        outcomes=_STATS_OUTCOMES,
        since=since,
    )
    counts: dict[str, dict[str, int]] = {k: {} for k in keys}
    durations: dict[str, float | None] = {}
    for row in rows:
        sender, outcome = row["sender"], row["outcome"]
        counts[sender][outcome] = row["n"]
        if outcome in ("sent", "partial"):
            durations[sender] = row["avg_duration"]  # sent's when both: ORDER BY makes it so on every backend
    out = []
    for key in keys:
        sender = config.senders[key]
        c = counts.get(key, {})
        ok = c.get("sent", 0) + c.get("partial", 0)
        tried = ok + c.get("failed", 0) + c.get("deferred", 0)
        h = healths.get(key)
        current = h is None or health.applies_to(h, health.settings_of(sender))
        day, month = used[key]["day"], used[key]["month"]
        out.append(
            {
                "sender": key,
                "email": sender.email,
                "active": sender.active,
                "limit_unit": sender.limit_unit,  # what sent_today and sent_this_month count
                "sent_today": day,
                "daily_limit": sender.daily_limit,
                "daily_usage_pct": round(100 * day / sender.daily_limit, 1) if sender.daily_limit else None,
                "sent_this_month": month,
                "monthly_limit": sender.monthly_limit,
                "monthly_usage_pct": round(100 * month / sender.monthly_limit, 1) if sender.monthly_limit else None,
                "attempts": tried,
                "success_rate": round(100 * ok / tried, 1) if tried else None,
                "avg_response_s": round(d, 3) if (d := durations.get(key)) is not None else None,
                "last_error": h.last_error if h else None,
                "last_error_at": h.last_error_at if h else None,
                "health": (
                    "unknown"
                    if h is None or h.healthy is None
                    else "unknown (settings changed)"
                    if not current
                    else "healthy"
                    if h.healthy
                    else "unhealthy"
                ),
                "checked_at": h.checked_at if h else None,
            }
        )
    return out


#: ``stats --days`` draws at most this many days (one CASE branch per day in the query)
MAX_DAYS = 366
#: the series of ``stats --days``: partial (some recipients accepted) counts as sent, as in the success rate
DAILY_SERIES = {"sent": ("sent", "partial"), "deferred": ("deferred",), "failed": ("failed",)}


def day_starts(days: int, tz: ZoneInfo, now: float) -> list[datetime]:
    """Local midnights of the last ``days`` days (today last) in ``tz``, and the next midnight after today.

    Computed in the calendar, not as multiples of 86400 s, so a day with a
    daylight-saving change is that day (23 or 25 hours), not a shifted window.
    """
    today = datetime.fromtimestamp(now, tz).date()
    first = today - timedelta(days=days - 1)
    return [datetime.combine(first + timedelta(days=i), datetime.min.time(), tz) for i in range(days + 1)]


def daily_outcomes(db: Reader, config: Config, days: int, now: float) -> dict[str, Any]:
    """Attempts per sender per local day for the last ``days`` days (today included), by outcome.

    Returns ``{"timezone", "days": [ISO dates], "senders": [{"sender", "sent": [..],
    "deferred": [..], "failed": [..]}]}`` with one number per day in every
    list, for every configured sender (zeros included), then ``"sender": null``
    for attempts deferred before a sender was chosen (every sender of the
    route at its quota), when there are any. A message deferred
    three times counts three deferred attempts: these are attempts, as in
    ``mailops log``.
    """
    if not 1 <= days <= MAX_DAYS:
        raise UsageError(f"--days {days}: expected 1 to {MAX_DAYS}")
    keys = list(config.senders)
    starts = day_starts(days, config.timezone, now)
    bounds = {f"b{i}": start.timestamp() for i, start in enumerate(starts)}
    # The day index in SQL (portable CASE over the local midnights), so the database returns at most
    # senders x days x outcomes rows however long the log; the index on (sender, outcome, at) serves it.
    bucket = "CASE " + " ".join(f"WHEN at < :b{i + 1} THEN {i}" for i in range(days)) + " END"
    outcomes = [o for names in DAILY_SERIES.values() for o in names]
    rows = db.all(
        f"SELECT sender, outcome, {bucket} AS day, count(*) AS n FROM attempts"
        f" WHERE (sender IN (:senders) OR sender IS NULL) AND outcome IN (:outcomes) AND at >= :b0 AND at < :b{days}"
        " GROUP BY sender, outcome, day",
        senders=keys,
        outcomes=outcomes,
        **bounds,
    )
    series: dict[str | None, dict[str, list[int]]] = {key: {name: [0] * days for name in DAILY_SERIES} for key in keys}
    series_of = {o: name for name, names in DAILY_SERIES.items() for o in names}
    for row in rows:
        # sender NULL: deferred before any sender was chosen (every sender of the route at its quota)
        counts = series.setdefault(row["sender"], {name: [0] * days for name in DAILY_SERIES})
        counts[series_of[row["outcome"]]][int(row["day"])] += int(row["n"])
    order: list[str | None] = [*keys, None] if None in series else list(keys)
    return {
        "timezone": config.timezone.key,
        "days": [start.date().isoformat() for start in starts[:-1]],
        "senders": [{"sender": key, **series[key]} for key in order],
    }


def record_event(store: Store, kind: str, detail: str, now: float) -> None:
    """Keep an operator action (reset-counts, purge) on record."""
    import sqlalchemy as sa

    from .tables import Event

    with store.write() as conn:
        conn.execute(sa.insert(Event).values(at=now, kind=kind, detail=detail))


def local_time(ts: float | None, tz: ZoneInfo, *, zone: bool = False) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS`` in the config zone (empty for None).

    ``zone`` adds the zone's abbreviation for that moment (``2026-12-01 09:14:03 CET``; ``+03`` where the
    zone has none), as tables show times.
    """
    if ts is None:
        return ""
    try:
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S %Z" if zone else "%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        # a time no calendar holds (an old mailops could defer by 1e300 s): show it, never crash on it
        return f"(invalid time {ts!r})"


def humanize_wait(seconds: float) -> str:
    """``in 3 h 20 min`` style for deferral messages."""
    if not seconds < 100 * 365 * 86400:  # also inf and NaN: no timedelta holds them
        return "more than 100 years"
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
