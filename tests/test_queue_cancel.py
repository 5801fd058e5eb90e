"""``queue cancel`` says why it left a message alone (sent, failed, cancelled, in flight), with exit codes.

Through the real CLI with a real SMTP server and SQLite file: exact lines, exit codes and outbox states.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.fixtures_cli import CliResult, Workspace
from tests.smtp_servers import DEFAULT_PASSWORD as PASSWORD
from tests.smtp_servers import LocalSmtpServer, refusing


def _one_error_line(result: CliResult) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") + " UTC"


@pytest.fixture
def sent_failed_queued(workspace: Workspace, server: LocalSmtpServer, cli) -> Workspace:
    """Message 1 sent, 2 failed for good (550 at RCPT), 3 queued."""
    server.rcpt_hook = refusing("gone@example.org")
    workspace.write_config(
        {"sales": workspace.sender(server, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    assert cli("send", "--to", "ok@example.org", "--subject", "S", "--body", "B").exit_code == 0
    assert cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "B").exit_code == 1
    assert cli("send", "--to", "later@example.org", "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    assert workspace.query("SELECT id, state FROM messages ORDER BY id") == [(1, "sent"), (2, "failed"), (3, "queued")]
    return workspace


def _at(workspace: Workspace, msg_id: int, column: str = "updated_at") -> str:
    [(ts,)] = workspace.query(f"SELECT {column} FROM messages WHERE id = ?", msg_id)
    return _utc(ts)


def test_cancelling_a_sent_message_says_when_it_went_exit_2(sent_failed_queued, cli, server):
    ws = sent_failed_queued

    result = cli("queue", "cancel", "1")

    assert result.exit_code == 2
    assert _one_error_line(result) == (
        f"mailops: error: message 1 was already sent at {_at(ws, 1, 'sent_at')}; nothing to cancel"
    )
    assert result.stdout == ""
    assert ws.states() == {"sent": 1, "failed": 1, "queued": 1}
    assert len(server.messages) == 1


def test_cancelling_a_failed_message_gives_the_reason_exit_2(sent_failed_queued, cli):
    ws = sent_failed_queued

    result = cli("queue", "cancel", "2")

    assert result.exit_code == 2
    assert _one_error_line(result) == (
        f"mailops: error: message 2 had already failed at {_at(ws, 2)} "
        "(rcpt: 550 all 1 recipients refused; gone@example.org: 5.1.1 no such user); nothing to cancel"
    )
    assert ws.states() == {"sent": 1, "failed": 1, "queued": 1}


def test_cancelling_twice_is_done_and_says_since_when(sent_failed_queued, cli):
    ws = sent_failed_queued

    first = cli("queue", "cancel", "3")
    second = cli("queue", "cancel", "3")

    assert (first.exit_code, first.stdout, first.stderr) == (0, "cancelled 1 message(s)\n", "")
    assert (second.exit_code, second.stderr) == (0, "")
    assert second.stdout.splitlines() == ["cancelled 0 message(s)", f"message 3 was already cancelled at {_at(ws, 3)}"]
    assert ws.states() == {"sent": 1, "failed": 1, "cancelled": 1}


def test_cancelling_a_message_in_flight_elsewhere_exit_1(sent_failed_queued, cli):
    ws = sent_failed_queued
    # another process's live claim (as a running deliver holds it)
    ws.query("UPDATE messages SET state = 'sending', claimed_by = 'other', lease_until = 4102444800 WHERE id = 3")

    result = cli("queue", "cancel", "3")

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "cancelled 0 message(s)",
        f"message 3 is being sent by another process (its claim runs until {_utc(4102444800)}); "
        "it cannot be cancelled now",
    ]
    assert ws.states() == {"sent": 1, "failed": 1, "sending": 1}


def test_cancelling_a_batch_counts_what_it_left_alone(workspace: Workspace, server, cli):
    workspace.write_config(
        {"sales": workspace.sender(server, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(3)])
    args = ["send", "--data", data, "--subject", "S", "--body", "B", "--batch", "b"]
    assert cli(*args, "--limit", "2").exit_code == 0
    assert cli(*args, "--queue-only").exit_code == 0
    [(last_sent,)] = workspace.query("SELECT MAX(sent_at) FROM messages WHERE state = 'sent'")

    first = cli("queue", "cancel", "--batch", "b")
    second = cli("queue", "cancel", "--batch", "b")

    assert (first.exit_code, first.stderr) == (0, "")
    assert first.stdout.splitlines() == [
        "cancelled 1 message(s)",
        f"2 message(s) already sent (the last at {_utc(last_sent)})",
    ]
    [(cancelled_at,)] = workspace.query("SELECT updated_at FROM messages WHERE state = 'cancelled'")
    assert (second.exit_code, second.stderr) == (0, "")
    assert second.stdout.splitlines() == [
        "cancelled 0 message(s)",
        f"2 message(s) already sent (the last at {_utc(last_sent)})",
        f"1 message(s) already cancelled (the last at {_utc(cancelled_at)})",
    ]

    # a batch that went out completely: nothing to cancel, exit 2
    other = workspace.csv("d.csv", [{"email": f"v{i}@example.org"} for i in range(2)])
    assert cli("send", "--data", other, "--subject", "S", "--body", "B", "--batch", "done").exit_code == 0
    [(done_at,)] = workspace.query("SELECT MAX(sent_at) FROM messages WHERE batch = 'done'")
    done = cli("queue", "cancel", "--batch", "done")
    assert done.exit_code == 2
    assert _one_error_line(done) == (
        f"mailops: error: batch 'done': 2 message(s) already sent (the last at {_utc(done_at)}); nothing to cancel"
    )
    assert workspace.states() == {"sent": 4, "cancelled": 1}
    assert len(server.messages) == 4
