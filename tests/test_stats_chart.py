"""``mailops stats --days N``: per sender per day charts and quota bars, through the real CLI.

The attempts come from real sends to an aiosmtpd server (sent, a recipient
refused with 550: failed, a daily limit reached: deferred); then their times
are moved to chosen days, as a log of several days would hold them. The
chart is read as cron mail and a pipe would: NO_COLOR, 80 columns, not a
terminal.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from mailops.history import day_starts
from mailops.store import Store
from tests.fixtures_cli import Workspace, run_mailops
from tests.smtp_servers import refusing


def _day(offset: int) -> datetime:
    """Noon (UTC, the workspace's zone) ``offset`` days from today."""
    today = datetime.now(UTC).date()
    return datetime.combine(today + timedelta(days=offset), datetime.min.time(), UTC) + timedelta(hours=12)


#: how long the fixture and its test may take; the charts name today's date, so all of it must fall on one UTC day
_DAY_MARGIN_S = 180


def _same_utc_day_ahead(margin: float = _DAY_MARGIN_S) -> None:
    """Wait past UTC midnight when it is less than ``margin`` seconds away (at most ``margin`` seconds, once)."""
    now = time.time()
    to_midnight = 86400 - now % 86400
    if to_midnight < margin:
        time.sleep(to_midnight + 1)


@pytest.fixture
def history(workspace: Workspace, database_url: str, server, cli) -> Workspace:
    """On SQLite and PostgreSQL: sales: 2 sent (today), 1 failed (yesterday); 1 deferred for quota (today, no sender); support: nothing."""
    # the quota counters, the moved attempts and the dates the test expects are all "today": a run that
    # crossed midnight would compare two different days
    _same_utc_day_ahead()
    workspace.use_database(database_url)
    workspace.write_config(
        {
            "sales": workspace.sender(server, daily_limit=2, monthly_limit=1000),
            "support-with-a-rather-long-sender-name": workspace.sender(server, email="support@example.com", auth=False),
        },
        routes={"default": "sales"},
    )
    server.rcpt_hook = refusing("gone@example.org")
    assert cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "b").exit_code == 1
    for n in range(3):
        cli("send", "--to", f"c{n}@example.org", "--subject", "S", "--body", "b")
    rows = workspace.query("SELECT id, outcome FROM attempts ORDER BY id")
    assert [o for _, o in rows] == ["failed", "sent", "sent", "deferred"]
    days = {rows[0][0]: -1, rows[1][0]: 0, rows[2][0]: 0, rows[3][0]: 0}
    store = Store(database_url)
    try:
        with store.write() as conn:
            for attempt, offset in days.items():
                conn.execute(
                    sa.text("UPDATE attempts SET at = :at WHERE id = :id"),
                    {"at": _day(offset).timestamp(), "id": attempt},
                )
    finally:
        store.close()
    return workspace


def _pipe(*args: str, columns: int = 80):
    return run_mailops("stats", *args, env={"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "xterm-256color"})


def test_days_json_gives_the_numbers_as_arrays_with_iso_dates(history):
    result = _pipe("--days", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    dates = [_day(offset).date().isoformat() for offset in (-3, -2, -1, 0)]
    assert data["timezone"] == "UTC"
    assert data["days"] == dates
    # the same rows as 'stats --json', each with its series: one number per day, today last
    sales, support = data["senders"]
    assert (sales["sender"], support["sender"]) == ("sales", "support-with-a-rather-long-sender-name")
    assert sales["daily"] == {"sent": [0, 0, 0, 2], "deferred": [0] * 4, "failed": [0, 0, 1, 0]}
    assert support["daily"] == {"sent": [0] * 4, "deferred": [0] * 4, "failed": [0] * 4}
    # the quota deferral: every sender of the route was full, so none was chosen
    assert data["without_sender"] == {"sent": [0] * 4, "deferred": [0, 0, 0, 1], "failed": [0] * 4}
    # quota: the counters (2 reserved today) against the limits; no limit is null
    assert {k: sales[k] for k in ("limit_unit", "sent_today", "daily_limit", "daily_usage_pct")} == {
        "limit_unit": "messages",
        "sent_today": 2,
        "daily_limit": 2,
        "daily_usage_pct": 100.0,
    }
    assert (sales["sent_this_month"], sales["monthly_limit"], sales["monthly_usage_pct"]) == (2, 1000, 0.2)
    assert (support["daily_limit"], support["daily_usage_pct"]) == (None, None)
    # the same shape as without --days, which only leaves out the dates and the series
    plain = json.loads(_pipe("--json").stdout)
    assert set(data) - set(plain) == {"days", "without_sender"}
    assert [{k: v for k, v in s.items() if k != "daily"} for s in data["senders"]] == plain["senders"]


def test_days_chart_at_80_columns_as_a_pipe(history):
    result = _pipe("--days", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "\x1b" not in result.stdout  # NO_COLOR, and not a terminal
    assert max(len(line) for line in lines) <= 80  # nothing wraps at 80 columns
    d = [_day(offset).date().isoformat() for offset in (-3, -2, -1, 0)]
    assert lines[:3] == [
        "attempts per day (UTC); the numbers are sent/deferred/failed",
        "█ sent  ▒ deferred  × failed",
        "",
    ]
    assert lines[3] == "sales <sales@example.com>"
    # one scale for all: the busiest day (today: 2 sent) fills the bar, a single failure fills half
    bar = 80 - 2 - 10 - 1 - 1 - len("2/0/0")
    empty = " " * (bar + 1) + "    -"
    assert lines[3:16] == [
        "sales <sales@example.com>",
        f"  {d[0]} {empty}",
        f"  {d[1]} {empty}",
        f"  {d[2]} {'×' * round(bar / 2)}{' ' * (bar - round(bar / 2) + 1)}0/0/1",
        f"  {d[3]} {'█' * bar} 2/0/0",
        "",
        "support-with-a-rather-long-sender-name <support@example.com>",
        "  no attempts in these 4 day(s)",
        "",
        "no sender: deferred before one was chosen (all at their quota)",
        f"  {d[0]} {empty}",
        f"  {d[1]} {empty}",
        f"  {d[2]} {empty}",
    ]
    assert lines[16] == f"  {d[3]} {'▒' * round(bar / 2)}{' ' * (bar - round(bar / 2) + 1)}0/1/0"
    numbers = len("2/1000 0.2%")
    quota_bar = 80 - (2 + 24 + 1 + 5 + 1) - len("[] ") - numbers
    assert lines[17:] == [
        "",
        "quota use",
        f"  sales                    today [{'█' * quota_bar}] 2/2 100%",
        f"                           month [{'·' * quota_bar}] 2/1000 0.2%",
        "  support-with-a-rather-l… today 0, no limit",
        "                           month 0, no limit",
    ]


def test_days_chart_narrow_terminal_still_fits_and_shows_a_single_failure(history):
    result = _pipe("--days", "3", columns=50)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 50
    assert lines[:3] == ["attempts per day (UTC); the numbers are sent/defe…", "█ sent  ▒ deferred  × failed", ""]
    bar = 50 - 2 - 10 - 1 - 1 - len("2/0/0")
    assert lines[3:7] == [
        "sales <sales@example.com>",
        f"  {_day(-2).date().isoformat()} {' ' * (bar + 1)}    -",
        f"  {_day(-1).date().isoformat()} {'×' * round(bar / 2)}{' ' * (bar - round(bar / 2) + 1)}0/0/1",
        f"  {_day(0).date().isoformat()} {'█' * bar} 2/0/0",
    ]
    assert lines[8] == "support-with-a-rather-long-sender-name <support@e…"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be from 1 to 366"),
        ("367", "must be from 1 to 366"),
        ("week", "Input should be a valid integer, unable to parse string as an integer"),
    ],
)
def test_days_out_of_range_is_one_line_exit_2(history, value, problem):
    result = _pipe("--days", value)
    assert (result.exit_code, result.stdout) == (2, "")
    assert (
        result.stderr == f"mailops: error: stats: Invalid value for '--days': {problem}; see 'mailops stats --help'\n"
    )


def test_a_day_is_a_calendar_day_across_a_daylight_saving_change():
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 3, 30, 10, 0, tzinfo=berlin).timestamp()  # clocks went forward on 29 March
    starts = day_starts(2, berlin, now)
    assert [s.isoformat() for s in starts] == [
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
        "2026-03-31T00:00:00+02:00",
    ]
    assert starts[1].timestamp() - starts[0].timestamp() == 23 * 3600
