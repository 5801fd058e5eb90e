"""Quotas and pacing, enforced by atomic reservations in the database.

A send first reserves its units of every limit of its sender with conditional
UPDATEs (``count = count + n WHERE count <= limit - n``) inside the caller's
write transaction, so concurrent processes can never overspend; a send that
did not happen gives its reservation back. ``n`` is 1, or the message's
number of recipients for the daily and monthly counters of a sender whose
``limit_unit`` is ``recipients`` (the per-minute counter always counts
messages). On PostgreSQL the UPDATE waits for a
concurrent reservation of the same counter and re-checks ``count < limit`` on
the committed row, so READ COMMITTED is enough; a transaction that takes
several of a sender's counters takes the day row first, so two of them never
wait on each other in a cycle. Periods are keys such as
``day:2026-11-23`` computed in the config's timezone, so usage rolls over at
midnight by itself with no cron job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import hotsql, tables
from .config import Sender
from .counters import period_keys
from .counters import usage as usage  # re-exported: routing, send --dry-run and stats read quota.usage
from .store import insert_ignore

USAGE = tables.Usage
SENDER_STATE = tables.SenderState


@dataclass(frozen=True)
class Reservation:
    """Units taken from a sender's counters for one message."""

    sender: str
    periods: tuple[str, ...]
    amounts: tuple[int, ...] = ()  # units taken from each of ``periods`` (empty: one each)


@dataclass(frozen=True)
class Blocked:
    """A sender may not send now: which limit, and the epoch time it may send again."""

    sender: str
    kind: str  # day | month | minute | interval
    reason: str
    until: float


def period_end(kind: str, ts: float, tz: ZoneInfo) -> float:
    """Epoch time at which the period of ``kind`` containing ``ts`` ends (local midnight, month start)."""
    local = datetime.fromtimestamp(ts, tz)
    if kind == "minute":
        start = local.replace(second=0, microsecond=0)
        return (start + timedelta(minutes=1)).timestamp()
    if kind == "day":
        nxt = (local + timedelta(days=1)).date()
    else:
        nxt = (local.replace(day=28) + timedelta(days=4)).replace(day=1).date()
    # Build the wall-clock midnight in the zone (handles DST days of 23 or 25 hours).
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()


#: the last second's period keys: (whole second, timezone, keys); one tuple, replaced whole (threads share it)
_KEYS_OF_SECOND: tuple[float, ZoneInfo, dict[str, str]] | None = None


def _period_keys(now: float, tz: ZoneInfo) -> dict[str, str]:
    """:func:`period_keys`, computed once per second and timezone (a reservation needs them every time, and
    working them out costs more than the reservation's statements on SQLite). Keys change only on whole
    seconds (zone offsets are whole seconds). The dict is shared: callers must not change it."""
    global _KEYS_OF_SECOND
    second = now // 1
    cached = _KEYS_OF_SECOND
    if cached is not None and cached[0] == second and cached[1] is tz:
        return cached[2]
    keys = period_keys(now, tz)
    _KEYS_OF_SECOND = (second, tz, keys)
    return keys


def _limits(sender: Sender) -> list[tuple[str, int | None, str]]:
    return [
        ("day", sender.daily_limit, "daily limit"),
        ("month", sender.monthly_limit, "monthly limit"),
        ("minute", sender.per_minute, "per-minute limit"),
    ]


# Built once: statement construction costs more than executing it on the hot path.
_UNITS = sa.bindparam("b_units", type_=sa.Integer)
_INCREMENT = (
    sa.update(USAGE)
    .where((USAGE.c.sender == sa.bindparam("b_sender")) & (USAGE.c.period == sa.bindparam("b_period")))
    .values(count=USAGE.c.count + _UNITS)
)
# b_room is limit - units, computed from the config: the database alone decides whether the units fit.
_INCREMENT_BELOW = _INCREMENT.where(USAGE.c.count <= sa.bindparam("b_room", type_=sa.Integer))
_GIVE_BACK = (
    sa.update(USAGE)
    .where(
        (USAGE.c.sender == sa.bindparam("b_sender"))
        & (USAGE.c.period == sa.bindparam("b_period"))
        & (USAGE.c.count > 0)
    )
    .values(count=sa.case((USAGE.c.count > _UNITS, USAGE.c.count - _UNITS), else_=0))
)


def _increment(sender: str, period: str, limit: int | None, units: int) -> tuple[Any, dict[str, object]]:
    """The conditional UPDATE that takes ``units`` from a counter (below ``limit`` when there is one) and its
    parameters."""
    params: dict[str, object] = {"b_sender": sender, "b_period": period, "b_units": units}
    if limit is None:
        return _INCREMENT, params
    params["b_room"] = limit - units
    return _INCREMENT_BELOW, params


def _needs(sender: Sender, recipients: list[int]) -> list[tuple[str, int | None, int]]:
    """(kind, limit, the units all messages of ``recipients`` take) of each counter ``sender`` counts, in the
    order they are taken (minute counters only when limited)."""
    return [
        (kind, limit, sum(units(sender, count, kind) for count in recipients))
        for kind, limit, _label in _limits(sender)
        if not (kind == "minute" and limit is None)
    ]


def _held(sender: Sender, keys: dict[str, str], kinds: list[str], recipients: list[int]) -> list[Reservation]:
    """One reservation per message of ``recipients``, of the ``kinds`` counters taken for all of them."""
    periods = tuple(keys[k] for k in kinds)
    return [Reservation(sender.key, periods, tuple(units(sender, count, k) for k in kinds)) for count in recipients]


def _take(conn: Connection, sender: str, period: str, limit: int | None, units: int = 1) -> bool:
    stmt, params = _increment(sender, period, limit, units)
    if conn.execute(stmt, params).rowcount == 1:
        return True
    # First message of the period (no row yet), or the limit is reached: tell them apart.
    insert_ignore(conn, USAGE, {"sender": sender, "period": period, "count": 0})
    return conn.execute(stmt, params).rowcount == 1


def _give_back(
    conn: Connection, sender: str, periods: tuple[str, ...] | list[str], amounts: tuple[int, ...] = ()
) -> None:
    # One row at a time, in the order reserve() took them (day first): one UPDATE over several rows
    # would lock them in whatever order the table is scanned, and could deadlock with a reservation.
    for index, period in enumerate(periods):
        units = amounts[index] if index < len(amounts) else 1
        conn.execute(_GIVE_BACK, {"b_sender": sender, "b_period": period, "b_units": units})


def units(sender: Sender, recipients: int, kind: str) -> int:
    """What one message to ``recipients`` recipients takes from the ``kind`` counter of ``sender``."""
    if kind in ("day", "month") and sender.limit_unit == "recipients":
        return max(recipients, 1)
    return 1


def reserve(conn: Connection, sender: Sender, tz: ZoneInfo, now: float, recipients: int = 1) -> Reservation | Blocked:
    """Atomically take one message to ``recipients`` recipients from every limit of ``sender``, or say which
    limit blocks and until when.

    A recipient-counted daily or monthly limit takes ``recipients`` units,
    the others one. Must run inside a write transaction (``Store.write``).
    """
    keys = _period_keys(now, tz)
    taken: list[str] = []
    amounts: list[int] = []
    for kind, limit, label in _limits(sender):
        if kind == "minute" and limit is None:
            continue  # minute counters only matter when limited
        need = units(sender, recipients, kind)
        if not _take(conn, sender.key, keys[kind], limit, need):
            _give_back(conn, sender.key, taken, tuple(amounts))
            counts_recipients = kind != "minute" and sender.limit_unit == "recipients"
            what = (
                f"{label} of {limit} recipients has no room for {need} more"
                if counts_recipients
                else f"{label} of {limit} reached"
            )
            return Blocked(
                sender=sender.key,
                kind=kind,
                reason=f"{what} for {sender.key}",
                until=period_end(kind, now, tz),
            )
        taken.append(keys[kind])
        amounts.append(need)
    if sender.min_interval > 0:
        insert_ignore(conn, SENDER_STATE, {"sender": sender.key})
        result = conn.execute(
            sa.update(SENDER_STATE)
            .where(
                (SENDER_STATE.c.sender == sender.key)
                & (SENDER_STATE.c.last_send_at.is_(None) | (SENDER_STATE.c.last_send_at <= now - sender.min_interval))
            )
            .values(last_send_at=now)
        )
        if result.rowcount != 1:
            _give_back(conn, sender.key, taken, tuple(amounts))
            last = conn.execute(
                sa.select(SENDER_STATE.c.last_send_at).where(SENDER_STATE.c.sender == sender.key)
            ).scalar_one()
            return Blocked(
                sender=sender.key,
                kind="interval",
                reason=f"min_interval of {sender.min_interval:g} s for {sender.key}",
                until=(last or now) + sender.min_interval,
            )
    return Reservation(sender=sender.key, periods=tuple(taken), amounts=tuple(amounts))


def reserve_many(
    conn: Connection, sender: Sender, tz: ZoneInfo, now: float, recipients: list[int]
) -> list[Reservation | Blocked]:
    """:func:`reserve` for several messages of one sender (``recipients``: each one's recipient count), in order.

    When they all fit, one conditional UPDATE per counter takes the units of
    all of them (the database still decides whether the sum fits, so a limit
    is never overspent); when they do not, they are reserved one by one, so
    the first ones get their units and the rest are blocked, as if reserved
    in turn. Pacing (``min_interval``) is a time per message: one by one too.
    """
    if len(recipients) > 1 and sender.min_interval <= 0:
        keys = _period_keys(now, tz)
        kinds: list[str] = []
        amounts: list[int] = []
        for kind, limit, need in _needs(sender, recipients):
            if not _take(conn, sender.key, keys[kind], limit, need):
                _give_back(conn, sender.key, [keys[k] for k in kinds], tuple(amounts))
                break
            kinds.append(kind)
            amounts.append(need)
        else:
            return [*_held(sender, keys, kinds, recipients)]
    return [reserve(conn, sender, tz, now, count) for count in recipients]


def take_all(
    sender: Sender, tz: ZoneInfo, now: float, recipients: list[int]
) -> tuple[str, dict[str, object], int, list[Reservation]] | None:
    """PostgreSQL: one statement that takes the units of all messages ``recipients`` counts from every counter
    of ``sender``, or nothing; returns (SQL, parameters, the number of rows it returns when it took them, the
    reservations then made), or None for a sender paced by ``min_interval`` (reserved one by one).

    The counters are locked in period order ("day:" before "minute:" and "month:", as :func:`reserve` and
    :func:`reset` take them), then each is checked against its room on the locked, current row: when any
    has no room, or a row does not exist yet, nothing is taken and no row comes back, and the caller
    reserves with :func:`reserve_many` (which inserts missing rows and says which limit blocks).
    """
    if sender.min_interval > 0:
        return None
    keys = _period_keys(now, tz)
    params: dict[str, object] = {"q_sender": sender.key}
    values: list[str] = []
    kinds: list[str] = []
    for kind, limit, need in _needs(sender, recipients):
        n = len(kinds)
        params.update({f"q_p{n}": keys[kind], f"q_u{n}": need, f"q_r{n}": None if limit is None else limit - need})
        values.append(f"(%(q_p{n})s::text, %(q_u{n})s::integer, %(q_r{n})s::integer)")
        kinds.append(kind)
    params["q_n"] = len(kinds)
    sql = (
        f"WITH wanted(period, units, room) AS (VALUES {', '.join(values)}), "
        "locked AS (SELECT usage.period, usage.count FROM usage "
        "WHERE usage.sender = %(q_sender)s::text AND usage.period IN (SELECT period FROM wanted) "
        "ORDER BY usage.period FOR UPDATE) "
        "UPDATE usage SET count = usage.count + wanted.units FROM wanted "
        "WHERE usage.sender = %(q_sender)s::text AND usage.period = wanted.period "
        "AND (SELECT count(*) FROM locked JOIN wanted AS w ON w.period = locked.period "
        "WHERE w.room IS NULL OR locked.count <= w.room) = %(q_n)s::integer "
        "RETURNING usage.period"
    )
    return sql, params, len(kinds), _held(sender, keys, kinds, recipients)


def take_on_cursor(
    conn: Connection, sender: Sender, tz: ZoneInfo, now: float, recipients: list[int]
) -> list[Reservation] | None:
    """SQLite: :func:`reserve_many`'s units of all messages (``recipients``: each one's recipient count) taken
    from every counter of ``sender`` on the driver's cursor (:mod:`mailops.hotsql`), or nothing: None when
    a counter has no room or no row yet, or the sender is paced by ``min_interval``; the caller then
    reserves with :func:`reserve_many` (which inserts missing rows and says which limit blocks).

    The same conditional UPDATE per counter as :func:`reserve` (day, month, then minute), inside the
    caller's ``BEGIN IMMEDIATE`` transaction. One statement for all counters (as :func:`take_all` on
    PostgreSQL) is possible on SQLite too, but measured slower there: SQLite has no round trip to save,
    and the statement that checks every counter before taking any costs 15 us against 7 us for two
    primary-key UPDATEs; what one of those took is given back when a later one has no room.
    """
    if sender.min_interval > 0:
        return None
    keys = _period_keys(now, tz)
    taken: list[tuple[str, int]] = []
    kinds: list[str] = []
    with hotsql.errors(conn):
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for kind, limit, need in _needs(sender, recipients):
                stmt, params = _increment(sender.key, keys[kind], limit, need)
                sql, fixed = hotsql.compiled(conn, stmt)
                cur.execute(sql, {**fixed, **params})
                if cur.rowcount != 1:
                    sql, fixed = hotsql.compiled(conn, _GIVE_BACK)
                    for period, amount in taken:
                        cur.execute(sql, {**fixed, "b_sender": sender.key, "b_period": period, "b_units": amount})
                    return None
                taken.append((keys[kind], need))
                kinds.append(kind)
        finally:
            cur.close()
    return _held(sender, keys, kinds, recipients)


def release(conn: Connection, reservation: Reservation) -> None:
    """Give back a reservation whose message was not sent (failure before the server accepted it)."""
    _give_back(conn, reservation.sender, reservation.periods, reservation.amounts)


def headroom(sender: Sender, used: dict[str, int]) -> float:
    """How many more units (messages, or recipients for ``limit_unit: recipients``) the sender may send in the
    current day and month (inf when unlimited)."""
    room = float("inf")
    if sender.daily_limit is not None:
        room = min(room, sender.daily_limit - used.get("day", 0))
    if sender.monthly_limit is not None:
        room = min(room, sender.monthly_limit - used.get("month", 0))
    return max(room, 0.0)


def reset(
    conn: Connection, sender_keys: list[str], period: str, tz: ZoneInfo, now: float
) -> list[tuple[str, str, int]]:
    """Zero the current counters (``day``, ``month`` or ``all``); returns (sender, period key, old count).

    Log rows are never touched: the reset is recorded as an event by the caller.
    """
    keys = period_keys(now, tz)
    wanted = {"day": [keys["day"], keys["minute"]], "month": [keys["month"]]}
    chosen = wanted["day"] + wanted["month"] if period == "all" else wanted[period]
    cond = USAGE.c.sender.in_(sender_keys) & USAGE.c.period.in_(chosen)
    # Lock the counters first (PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes writers), in key order:
    # "day:" sorts first, as reserve() takes it, and the old counts reported are the ones really zeroed.
    locked = sa.select(USAGE.c.sender, USAGE.c.period, USAGE.c.count).where(cond)
    locked = locked.order_by(USAGE.c.sender, USAGE.c.period).with_for_update()
    rows = [(sender, key, n) for sender, key, n in conn.execute(locked) if n > 0]
    conn.execute(sa.update(USAGE).where(cond & (USAGE.c.count > 0)).values(count=0))
    if period in ("day", "all"):
        # min_interval pacing is a rate, not a count; a reset lets the next message go at once.
        conn.execute(sa.update(SENDER_STATE).where(SENDER_STATE.c.sender.in_(sender_keys)).values(last_send_at=None))
    return [(s, p, c) for s, p, c in rows if not p.startswith("minute:")]
