"""Mail that lands: what receivers see, checked on what a real aiosmtpd server received.

Date stamped at hand-over (send, deliver, test-smtp), ...
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import pytest

from mailops import cli as cli_module
from mailops.compose import stamp_date
from tests.smtp_servers import refusing

DAY = 86400.0


@pytest.fixture
def srv(smtp_server):
    return smtp_server()


def _config(workspace, srv, **top):
    workspace.write_config({"sales": workspace.sender(srv)}, routes={"default": "sales"}, **top)


def _date_of(received) -> datetime:
    [value] = received.message.get_all("Date")
    return parsedate_to_datetime(str(value))


# ---------------------------------------------------------------- Date at hand-over


def test_a_message_delivered_a_day_late_is_dated_at_delivery(workspace, srv, cli, monkeypatch):
    _config(workspace, srv, timezone="Europe/Berlin")
    queued_at = time.time() - DAY
    with monkeypatch.context() as patch:
        patch.setattr(cli_module, "_now", lambda: queued_at)
        queued = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--queue-only")
    assert queued.exit_code == 0, queued.stderr
    [(stored,)] = workspace.query("SELECT mime FROM messages")
    stored = bytes(stored) if not isinstance(stored, bytes) else stored
    assert b"Date: " in stored and parsedate_to_datetime(
        stored.split(b"\r\nDate: ", 1)[1].split(b"\r\n", 1)[0].decode()
    ).timestamp() == pytest.approx(queued_at, abs=1)

    before = int(time.time())
    delivered = cli("deliver")
    after = time.time()

    assert delivered.exit_code == 0, delivered.stderr
    [received] = srv.messages
    date = _date_of(received)
    assert before <= date.timestamp() <= after  # stamped at hand-over, not a day earlier
    assert date.utcoffset() == datetime.fromtimestamp(before, ZoneInfo("Europe/Berlin")).utcoffset()  # configured zone
    # Everything else is the stored message, byte for byte (Message-ID included)
    assert received.data.replace(b"\r\n", b"\n") == stamp_date(stored, received.message["Date"]).replace(b"\r\n", b"\n")
    assert workspace.query("SELECT mime FROM messages") == [(stored,)]


def test_each_attempt_gets_its_own_date(workspace, srv, cli, monkeypatch):
    """A temporary refusal, then a retry: the second hand-over carries the later Date, same Message-ID."""
    _config(workspace, srv)
    srv.rcpt_hook = refusing("a@example.org", reply="451 4.7.1 try later")
    with monkeypatch.context() as patch:
        patch.setattr(cli_module, "_now", lambda: time.time() - DAY)
        first = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B")
    assert first.exit_code == 1 and srv.messages == []
    srv.rcpt_hook = None
    with sqlite3.connect(workspace.db_path) as conn:  # due now rather than after the backoff
        conn.execute("UPDATE messages SET due_at = 0 WHERE state = 'deferred'")

    before = int(time.time())
    again = cli("deliver")
    assert again.exit_code == 0, again.stderr
    [received] = srv.messages
    assert before <= _date_of(received).timestamp() <= time.time()
    [(message_id,)] = workspace.query("SELECT message_id FROM messages")
    assert received.message["Message-ID"] == message_id


def test_every_message_of_a_run_is_dated_when_it_goes(workspace, srv, cli):
    _config(workspace, srv, timezone="America/New_York")
    data = workspace.csv("rows.csv", [{"email": f"u{i}@example.org"} for i in range(3)])
    before = int(time.time())
    result = cli("send", "--data", data, "--subject", "S", "--body", "B")
    assert result.exit_code == 0, result.stderr
    assert len(srv.messages) == 3
    for received in srv.messages:
        date = _date_of(received)
        assert before <= date.timestamp() <= time.time()
        assert str(received.message["Date"]).endswith(("-0500", "-0400"))


def test_test_smtp_dates_its_message_in_the_configured_zone(workspace, srv, cli):
    _config(workspace, srv, timezone="Asia/Tokyo")
    before = int(time.time())
    result = cli("test-smtp", "sales", "--send-to", "check@example.org")
    assert result.exit_code == 0, result.output
    [received] = srv.messages
    assert before <= _date_of(received).timestamp() <= time.time()
    assert str(received.message["Date"]).endswith("+0900")


@pytest.mark.parametrize(
    ("mime", "stamped"),
    [
        (
            b"From: a@b.c\r\nDate: old\r\nMessage-ID: <1@b.c>\r\n\r\nDate: body\r\n",
            b"From: a@b.c\r\nDate: NEW\r\nMessage-ID: <1@b.c>\r\n\r\nDate: body\r\n",
        ),
        (b"From: a@b.c\r\ndate: old\r\n folded\r\nDate: second\r\n\r\nb\r\n", b"From: a@b.c\r\nDate: NEW\r\n\r\nb\r\n"),
        (b"From: a@b.c\nSubject: s\n\nb\n", b"From: a@b.c\nSubject: s\nDate: NEW\n\nb\n"),
        (b"Date: old\r\nFrom: a@b.c\r\n\r\nb", b"Date: NEW\r\nFrom: a@b.c\r\n\r\nb"),
    ],
)
def test_stamp_date_replaces_or_inserts_one_date_and_keeps_every_other_byte(mime, stamped):
    assert stamp_date(mime, "NEW") == stamped
