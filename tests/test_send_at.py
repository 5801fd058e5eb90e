"""``send --at WHEN``: messages queued for later, sent by ``deliver`` once due, listed and cancellable."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures_cli import iso

PASSWORD = "s3cret-pass"


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD})


def _config(workspace, srv, tz="Europe/Berlin"):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        timezone=tz,
    )


def _send(cli, *args):
    return cli("send", "--to", "ops@example.org", "--subject", "Later", "--body", "B", *args)


def _queued(workspace):
    return workspace.query("SELECT state, due_at FROM messages")


def test_an_iso_time_is_read_in_the_configured_zone(workspace, srv, cli):
    _config(workspace, srv)
    day = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=30)).date()
    when = f"{day.isoformat()}T09:30"
    expected = datetime(day.year, day.month, day.day, 9, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()

    result = _send(cli, "--at", when)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"queued 1 message(s) due at {day.isoformat()} 09:30:00 Europe/Berlin; 'mailops deliver' sends them when due"
    ]
    assert _queued(workspace) == [("queued", expected)]
    assert srv.messages == []


def test_a_relative_time_is_due_later_and_deliver_waits_for_it(workspace, srv, cli):
    _config(workspace, srv)
    before = time.time()
    assert _send(cli, "--at", "+2h").exit_code == 0
    after = time.time()
    [(state, due_at)] = _queued(workspace)
    assert state == "queued" and before + 7200 <= due_at <= after + 7200

    # not due: deliver sends nothing, and says nothing went wrong
    assert cli("deliver", "-q").exit_code == 0
    assert srv.messages == []
    listed = json.loads(cli("queue", "list", "--json").stdout)
    assert [(m["state"], m["due_at"], m["subject"]) for m in listed["messages"]] == [
        ("queued", iso(due_at, "Europe/Berlin"), "Later")
    ]

    # its time comes (moved behind mailops' back): the next deliver sends it
    with sqlite3.connect(workspace.db_path) as conn:
        conn.execute("UPDATE messages SET due_at = ?", (time.time() - 1,))
    assert cli("deliver", "-q").exit_code == 0
    assert [m.subject for m in srv.messages] == ["Later"]
    assert workspace.states() == {"sent": 1}


def test_a_scheduled_message_can_be_cancelled(workspace, srv, cli):
    _config(workspace, srv)
    assert _send(cli, "--at", "+1d", "--batch", "xmas").exit_code == 0
    result = cli("queue", "cancel", "--batch", "xmas")
    assert (result.exit_code, result.stdout.strip()) == (0, "cancelled 1 message(s)")
    assert workspace.states() == {"cancelled": 1}


@pytest.mark.parametrize(
    ("when", "line"),
    [
        (
            "tomorrow",
            "mailops: error: --at 'tomorrow': expected +30m, +2h, +1d or a date-time such as 2026-12-24T09:00 "
            "(in Europe/Berlin unless it names its zone)",
        ),
        (
            "2001-01-01T10:00",
            "mailops: error: --at '2001-01-01T10:00': 2001-01-01 10:00:00 Europe/Berlin is not in the future (now: NOW); "
            "give a later time",
        ),
        ("+400d", "mailops: error: --at '+400d': more than a year ahead; give a nearer time"),
    ],
)
def test_a_bad_or_past_time_is_exit_2_and_nothing_is_queued(workspace, srv, cli, when, line):
    _config(workspace, srv)
    result = _send(cli, "--at", when)
    assert result.exit_code == 2
    [got] = result.stderr.splitlines()
    if "NOW" in line:
        head, tail = line.split("NOW")
        assert got.startswith(head) and got.endswith(tail)
    else:
        assert got == line
    assert srv.messages == []
    if workspace.db_path.exists():
        assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]
