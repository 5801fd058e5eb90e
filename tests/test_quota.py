"""Quota reservations against a real SQLite file: limits, rollover in the config's zone, pacing, release."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from mailops import quota
from mailops.config import Sender
from mailops.store import Store

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def sender(**limits) -> Sender:
    return Sender(
        key="sales",
        email="sales@example.com",
        host="127.0.0.1",
        port=25,
        security="none",
        username="sales@example.com",
        **limits,
    )


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'q.db'}")
    yield s
    s.close()


def take(store: Store, snd: Sender, when: float):
    with store.write() as conn:
        return quota.reserve(conn, snd, BERLIN, when)


def test_daily_limit_blocks_until_local_midnight_and_rolls_over_by_itself(store):
    snd = sender(daily_limit=2)
    assert isinstance(take(store, snd, at("2026-11-23T22:00")), quota.Reservation)
    assert isinstance(take(store, snd, at("2026-11-23T23:00")), quota.Reservation)
    blocked = take(store, snd, at("2026-11-23T23:59"))
    assert isinstance(blocked, quota.Blocked)
    assert blocked.kind == "day" and blocked.reason == "daily limit of 2 reached for sales"
    assert blocked.until == at("2026-11-24T00:00")  # Berlin midnight, not UTC midnight
    assert isinstance(take(store, snd, at("2026-11-24T00:00:01")), quota.Reservation)


def test_day_boundary_on_a_dst_change_is_local_midnight():
    assert quota.period_end("day", at("2026-03-29T12:00"), BERLIN) == at("2026-03-30T00:00")
    assert quota.period_end("day", at("2026-10-25T01:30"), BERLIN) == at("2026-10-26T00:00")


def test_monthly_limit_rolls_over_on_the_first(store):
    snd = sender(monthly_limit=1)
    assert isinstance(take(store, snd, at("2026-11-30T12:00")), quota.Reservation)
    blocked = take(store, snd, at("2026-11-30T13:00"))
    assert blocked.kind == "month" and blocked.until == at("2026-12-01T00:00")
    assert isinstance(take(store, snd, at("2026-12-01T00:00:01")), quota.Reservation)
    assert quota.period_end("month", at("2026-12-15T00:00"), BERLIN) == at("2027-01-01T00:00")


def test_per_minute_and_min_interval(store):
    snd = sender(per_minute=2)
    t = at("2026-11-23T10:00:10")
    assert isinstance(take(store, snd, t), quota.Reservation)
    assert isinstance(take(store, snd, t + 1), quota.Reservation)
    blocked = take(store, snd, t + 2)
    assert blocked.kind == "minute" and blocked.until == at("2026-11-23T10:01:00")
    assert isinstance(take(store, snd, at("2026-11-23T10:01:00")), quota.Reservation)

    paced = sender(min_interval=5)
    assert isinstance(take(store, paced, t), quota.Reservation)
    wait = take(store, paced, t + 2)
    assert wait.kind == "interval" and wait.until == pytest.approx(t + 5)
    assert isinstance(take(store, paced, t + 5), quota.Reservation)


def test_a_blocked_reservation_takes_nothing_and_release_gives_back(store):
    snd = sender(daily_limit=5, monthly_limit=1)
    now = at("2026-11-23T10:00")
    held = take(store, snd, now)
    assert isinstance(take(store, snd, now), quota.Blocked)  # month blocks; the day counter must not move
    with store.read() as conn:
        assert quota.usage(conn, ["sales"], BERLIN, now) == {"sales": {"day": 1, "month": 1}}
    with store.write() as conn:
        quota.release(conn, held)
    with store.read() as conn:
        assert quota.usage(conn, ["sales"], BERLIN, now) == {"sales": {"day": 0, "month": 0}}


def test_reset_zeroes_the_chosen_period_only(store):
    snd = sender()
    now = at("2026-11-23T10:00")
    for _ in range(3):
        take(store, snd, now)
    with store.write() as conn:
        cleared = quota.reset(conn, ["sales"], "day", BERLIN, now)
    assert cleared == [("sales", "day:2026-11-23", 3)]
    with store.read() as conn:
        assert quota.usage(conn, ["sales"], BERLIN, now) == {"sales": {"day": 0, "month": 3}}


def test_headroom():
    snd = sender(daily_limit=10, monthly_limit=100)
    assert quota.headroom(snd, {"day": 4, "month": 98}) == 2
    assert quota.headroom(sender(), {"day": 4, "month": 98}) == float("inf")


def test_a_recipient_counted_limit_takes_one_unit_per_recipient(store):
    snd = sender(daily_limit=10, monthly_limit=100, per_minute=50, limit_unit="recipients")
    t = at("2026-11-23T10:00")

    def reserve(n: int, when: float = t):
        with store.write() as conn:
            return quota.reserve(conn, snd, BERLIN, when, n)

    first = reserve(4)
    assert isinstance(first, quota.Reservation) and first.amounts == (4, 4, 1)  # day, month; minute counts messages
    assert isinstance(reserve(4), quota.Reservation)
    blocked = reserve(3)
    assert isinstance(blocked, quota.Blocked) and blocked.kind == "day"
    assert blocked.reason == "daily limit of 10 recipients has no room for 3 more for sales"
    assert isinstance(reserve(2), quota.Reservation)  # exactly up to the limit
    with store.read() as conn:
        assert quota.usage(conn, ["sales"], BERLIN, t) == {"sales": {"day": 10, "month": 10}}
    with store.write() as conn:
        quota.release(conn, first)
    with store.read() as conn:
        assert quota.usage(conn, ["sales"], BERLIN, t) == {"sales": {"day": 6, "month": 6}}
    assert isinstance(reserve(4), quota.Reservation)
    assert isinstance(reserve(1), quota.Blocked)


def test_a_message_limit_takes_one_unit_whatever_the_recipients(store):
    snd = sender(daily_limit=2)
    t = at("2026-11-23T10:00")
    with store.write() as conn:
        assert quota.reserve(conn, snd, BERLIN, t, 30).amounts == (1, 1)
        assert isinstance(quota.reserve(conn, snd, BERLIN, t, 30), quota.Reservation)
        assert quota.reserve(conn, snd, BERLIN, t, 1).reason == "daily limit of 2 reached for sales"
