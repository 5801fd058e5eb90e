"""Honest outcomes for unattended runs: every problem is printed (also with -q), counted and in the exit code.

Each test runs the real CLI against a real aiosmtpd server (or a closed port for a server that is down)
and checks the printed lines, the exit code, the outbox states and what the server received.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from tests.fixtures_cli import epoch, log_json
from tests.smtp_servers import refusing

PASSWORD = "s3cret-pass"


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD, "finance@example.com": PASSWORD})


def _config(workspace, srv, **sales_keys):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, **sales_keys)},
        routes={"default": "sales"},
    )


def _execute(workspace, sql: str) -> None:
    """Change the workspace database behind mailops' back (SQLite file or PostgreSQL), committed."""
    if workspace.database_url is None:
        with sqlite3.connect(workspace.db_path, timeout=30) as conn:
            conn.execute(sql)
        return
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(
        workspace.database_url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool
    )
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


def _no_ids(line: str) -> str:
    return re.sub(r"(message|retry) \d+", r"\1 N", line)


def _send(cli, *args):
    return cli("send", *args, "--subject", "S", "--body", "B")


# ---------------------------------------------------------------- 1. -q is quiet on success only


def test_quiet_success_prints_nothing(workspace, srv, cli):
    _config(workspace, srv)
    result = _send(cli, "--to", "ok@example.org", "-q")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert len(srv.messages) == 1


def test_quiet_prints_a_refused_recipient_on_stderr(workspace, srv, cli):
    _config(workspace, srv)
    srv.rcpt_hook = refusing("gone@example.org")

    loud = _send(cli, "--to", "gone@example.org")
    # the first refusal (5.1.1) put gone@ on the suppression list; send to it anyway to see the refusal again
    quiet = _send(cli, "--to", "gone@example.org", "-q", "--include-suppressed")

    assert loud.exit_code == quiet.exit_code == 1
    assert quiet.stdout == ""
    lines = quiet.stderr.splitlines()
    assert any(
        line.startswith("  failed: 'S' to gone@example.org: rcpt: 550 ") and "no such user" in line for line in lines
    ), quiet.stderr
    # the same problem lines as without -q (but for the message's id)
    assert {_no_ids(line) for line in lines} <= {_no_ids(line) for line in loud.output.splitlines()}
    assert workspace.states() == {"failed": 2}
    assert srv.messages == []


def test_quiet_prints_a_server_that_is_down(workspace, srv, cli, closed_port):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, port=closed_port)},
        routes={"default": "sales"},
    )
    result = _send(cli, "--to", "a@example.org", "-q")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "1 message(s) deferred until" in result.stderr
    assert f"127.0.0.1:{closed_port}" in result.stderr and "refused" in result.stderr
    assert workspace.states() == {"deferred": 1}


def test_quiet_prints_a_quota_deferral(workspace, srv, cli):
    _config(workspace, srv, daily_limit=1)
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(2)])
    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "-q")
    assert result.exit_code == 1
    assert result.stdout == ""
    # the time carries its zone, as every time mailops prints does
    assert re.search(r"1 message\(s\) deferred until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in ", result.stderr)
    assert "quota: daily limit of 1 reached for sales" in result.stderr, result.stderr
    assert workspace.states() == {"sent": 1, "deferred": 1}
    assert len(srv.messages) == 1


# ---------------------------------------------------------------- 2. partial refusal fails that recipient


def test_partial_refusal_is_a_failure_of_that_recipient(shared, srv, cli):
    _config(shared, srv)
    srv.rcpt_hook = refusing("gone@example.org")

    result = _send(cli, "--to", "ok@example.org", "--to", "gone@example.org")

    assert result.exit_code == 1, result.output
    assert "sent 1, deferred 0, failed 0; 1 recipient(s) refused in 1 message(s)" in result.stdout
    assert "gone@example.org refused: 550 5.1.1 no such user; the other recipients got the message" in result.stdout
    [received] = srv.messages
    assert received.rcpt_tos == ["ok@example.org"]
    assert shared.states() == {"sent": 1}
    failed = log_json(cli, "--status", "failed")
    assert [(r["recipients"], r["smtp_code"], r["smtp_text"]) for r in failed] == [
        (["gone@example.org"], 550, "5.1.1 no such user")
    ]
    as_json = json.loads(
        _send(cli, "--to", "ok2@example.org", "--to", "gone@example.org", "--json", "--include-suppressed").stdout
    )
    assert as_json["refused_recipients"] == 1 and as_json["partially_refused_messages"] == 1
    assert any("gone@example.org refused" in p for p in as_json["problems"])


def test_partial_refusal_quiet_prints_it(workspace, srv, cli):
    _config(workspace, srv)
    srv.rcpt_hook = refusing("gone@example.org")
    result = _send(cli, "--to", "ok@example.org", "--to", "gone@example.org", "-q")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "gone@example.org refused: 550 5.1.1 no such user" in result.stderr


# ---------------------------------------------------------------- 3. no message loops or hangs in the queue


def test_retry_of_a_refused_message_retries_its_recipients(shared, srv, cli):
    _config(shared, srv)
    srv.rcpt_hook = refusing("gone@example.org")
    assert _send(cli, "--to", "gone@example.org").exit_code == 1
    assert shared.states() == {"failed": 1}

    retried = cli("queue", "retry", "--all")
    assert retried.exit_code == 0
    assert "1 message(s) due now" in retried.stdout
    assert "retrying 1 recipient(s) the server refused permanently (gone@example.org)" in retried.stdout

    srv.rcpt_hook = None  # the mailbox exists now
    delivered = cli("deliver", "-q")
    assert (delivered.exit_code, delivered.stdout, delivered.stderr) == (0, "", "")
    assert [m.rcpt_tos for m in srv.messages] == [["gone@example.org"]]
    assert shared.states() == {"sent": 1}


def test_retry_of_a_partly_refused_message_keeps_the_delivered_recipients(shared, srv, cli):
    _config(shared, srv)
    srv.rcpt_hook = refusing("gone@example.org")
    assert _send(cli, "--to", "ok@example.org", "--to", "gone@example.org").exit_code == 1
    [(msg_id,)] = shared.query("SELECT id FROM messages")

    retried = cli("queue", "retry", str(msg_id))
    assert "retrying 1 recipient(s) the server refused permanently (gone@example.org)" in retried.stdout
    srv.rcpt_hook = refusing("gone@example.org")
    again = cli("deliver", "-q")
    assert again.exit_code == 1
    assert "gone@example.org refused" in again.stderr or "gone@example.org" in again.stderr
    # the message went only once to the recipient who had it
    assert [m.rcpt_tos for m in srv.messages] == [["ok@example.org"]]
    assert all(state in ("failed", "sent") for state in shared.states())


def test_an_unexpected_error_fails_the_message_not_the_run(shared, srv, cli, monkeypatch):
    from mailops import transport

    _config(shared, srv)
    data = shared.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(3)])
    real_send = transport.SmtpSession.send

    def send(self, mime, mail_from, rcpt_to, **kwargs):
        if rcpt_to == ["u1@example.org"]:
            raise RuntimeError("boom in the transport")
        return real_send(self, mime, mail_from, rcpt_to, **kwargs)

    monkeypatch.setattr(transport.SmtpSession, "send", send)
    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "-q")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "internal error: RuntimeError('boom in the transport')" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == ["u0@example.org", "u2@example.org"]
    assert shared.states() == {"sent": 2, "deferred": 1}
    [(reason, due, updated)] = shared.query("SELECT reason, due_at, updated_at FROM messages WHERE state = 'deferred'")
    assert "internal error: RuntimeError('boom in the transport')" in reason
    assert due > updated  # backoff, not due again at once

    # --debug shows the traceback; a deliver of the message (due again) reports it the same way
    _execute(shared, "UPDATE messages SET due_at = 0 WHERE state = 'deferred'")
    debug = cli("--debug", "deliver", "-q")
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr and "boom in the transport" in debug.stderr
    assert shared.states() == {"sent": 2, "deferred": 1}


# ---------------------------------------------------------------- 4. re-running send --batch K finishes the batch


@pytest.fixture
def shared(workspace, database_url):
    """The workspace on an SQLite file or on a throw-away PostgreSQL database."""
    workspace.use_database(database_url)
    return workspace


def _batch_args(data):
    return ["send", "--data", data, "--subject", "S {{ n }}", "--body", "B", "--batch", "K"]


def test_rerunning_the_same_batch_delivers_what_an_earlier_run_left(shared, srv, cli):
    _config(shared, srv)
    data = shared.csv("c.csv", [{"email": f"u{i}@example.org", "n": i} for i in range(6)])
    # an earlier run queued the batch and died: one message claimed by a dead process (lease expired),
    # one still claimed by a live one, one deferred and due again, three never tried
    assert cli(*_batch_args(data), "--queue-only").exit_code == 0
    _execute(
        shared,
        "UPDATE messages SET state = 'sending', claimed_by = 'dead', lease_until = 1 WHERE recipients LIKE '%u0@example.org%'",
    )
    _execute(
        shared,
        "UPDATE messages SET state = 'sending', claimed_by = 'live', lease_until = 9999999999 WHERE recipients LIKE '%u1@example.org%'",
    )
    _execute(
        shared,
        "UPDATE messages SET state = 'deferred', due_at = 1, reason = 'temporary failure: x' WHERE recipients LIKE '%u2@example.org%'",
    )

    again = cli(*_batch_args(data))

    assert again.exit_code == 1, again.output  # one message of the batch is still in flight elsewhere
    assert "6 row(s) already sent or queued under batch 'K': skipped" in again.stdout
    assert "sent 5, deferred 0, failed 0" in again.stdout
    assert "batch 'K': 6 message(s): 5 sent, 1 sending; left: 1 in flight in another process" in again.stdout
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == [f"u{i}@example.org" for i in (0, 2, 3, 4, 5)]

    # the live process finished elsewhere (or died and its lease ran out): the next run completes the batch
    _execute(shared, "UPDATE messages SET lease_until = 1 WHERE state = 'sending'")
    quiet = cli(*_batch_args(data), "-q")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == [f"u{i}@example.org" for i in range(6)]
    assert shared.states() == {"sent": 6}
    as_json = json.loads(cli(*_batch_args(data), "--json").stdout)
    assert as_json["backlog"]["batch_states"] == {"sent": 6}


def test_rerun_of_a_batch_with_a_deferred_message_exits_1_and_says_until_when(workspace, srv, cli):
    _config(workspace, srv)
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org", "n": i} for i in range(3)])
    assert cli(*_batch_args(data), "--queue-only").exit_code == 0
    _execute(workspace, "UPDATE messages SET state = 'deferred', due_at = 4102444800, reason = 'quota: x' WHERE id = 1")

    result = cli(*_batch_args(data), "-q")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert (
        "batch 'K': 3 message(s): 2 sent, 1 deferred; left: 1 deferred (the next at 2100-01-01 00:00:00 UTC)"
        in result.stderr
    )
    assert len(srv.messages) == 2


# ---------------------------------------------------------------- 7. backlog at the end of deliver and send


def test_deliver_reports_the_backlog(shared, srv, cli, closed_port):
    shared.write_config(
        {
            "sales": shared.sender(srv, email="sales@example.com", password=PASSWORD),
            "down": shared.sender(srv, email="finance@example.com", password=PASSWORD, port=closed_port),
        },
        routes={"default": "sales", "down": "down"},
    )
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    assert cli("send", "--to", "b@example.org", "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    assert (
        cli(
            "send", "--route", "down", "--to", "c@example.org", "--subject", "S", "--body", "B", "--queue-only"
        ).exit_code
        == 0
    )
    _execute(
        shared, "UPDATE messages SET state = 'sending', claimed_by = 'other', lease_until = 9999999999 WHERE id = 2"
    )

    result = cli("deliver")

    assert result.exit_code == 1
    assert "sent 1, deferred 1, failed 0" in result.stdout
    assert "left: 1 deferred (the next at " in result.stdout and "1 in flight in another process" in result.stdout
    as_json = json.loads(cli("deliver", "--json").stdout)
    assert as_json["backlog"]["deferred"] == 1 and as_json["backlog"]["in_flight_elsewhere"] == 1
    assert as_json["backlog"]["due_now"] == 0 and epoch(as_json["backlog"]["next_due_at"]) > time.time()
    assert [m.rcpt_tos for m in srv.messages] == [["a@example.org"]]


def test_max_seconds_with_work_left_is_not_an_error(workspace, srv, cli):
    import time as _time

    _config(workspace, srv)
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org", "n": i} for i in range(10)])
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--queue-only").exit_code == 0

    def slow(envelope):
        _time.sleep(0.3)  # a slow server: ten messages take three seconds at least

    srv.data_hook = slow
    result = cli("deliver", "--max-seconds", "1", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["interrupted"] is True and summary["deadline_reached"] is True
    assert summary["sent"] < 10
    assert summary["sent"] + summary["backlog"]["due_now"] == 10
    assert summary["deferred"] == summary["failed"] == 0
    assert workspace.states() == {"sent": summary["sent"], "queued": 10 - summary["sent"]}

    rest = cli("deliver", "--max-seconds", "0")
    assert rest.exit_code == 0
    assert f"stopped at --max-seconds; left: {10 - summary['sent']} due now" in rest.stdout
    assert len(srv.messages) == summary["sent"]


# ---------------------------------------------------------------- 8. doctor: a login that can never happen


def test_doctor_flags_security_none_with_auth_and_says_no_login_for_auth_false(workspace, smtp_server, cli):
    relay = smtp_server(mode="plain", auth=False)
    workspace.write_config(
        {
            "relay": workspace.sender(relay, email="relay@example.com"),
            "broken": {"email": "broken@example.com", "host": "127.0.0.1", "port": relay.port, "security": "none"},
        },
        routes={"default": "relay"},
    )
    workspace.template("renewal", "s", "b")

    result = cli("doctor", "--connect")

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert (
        "PROBLEM  broken: security: none with auth: true can never log in (mailops does not send a password "
        "unencrypted); set 'auth: false' for a local relay that needs no login, or 'security: starttls' / 'ssl' "
        "for a server that does"
    ) in lines
    assert f"ok       relay: connected (no login: auth false) to 127.0.0.1:{relay.port}" in lines
    assert relay.messages == [] and "AUTH" not in relay.commands

    # allow_plaintext_auth: the operator chose it; doctor does not flag the combination
    workspace.write_config(
        {"relay": workspace.sender(relay, email="relay@example.com", auth=True, allow_plaintext_auth=True)},
        routes={"default": "relay"},
    )
    assert "can never log in" not in cli("doctor").stdout


# ---------------------------------------------------------------- 5. health belongs to the settings it was measured with


def test_fixing_a_senders_port_makes_its_failure_history_irrelevant(shared, srv, cli, closed_port):
    def config(port):
        shared.write_config(
            {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD, port=port)},
            routes={"default": "sales"},
        )

    config(closed_port)
    data = shared.csv("c.csv", [{"email": f"u{i}@example.org", "n": i} for i in range(3)])
    first = cli(*_batch_args(data), "-q")
    assert first.exit_code == 1
    assert f"refused by 127.0.0.1:{closed_port}" in first.stderr
    assert shared.states() == {"deferred": 3}

    # same settings: the failure is recent, the sender is skipped without a connection
    assert cli("queue", "retry", "--batch", "K").exit_code == 0
    skipped = cli("deliver", "-q")
    assert skipped.exit_code == 1 and "unhealthy" in skipped.stderr
    assert shared.states() == {"deferred": 3}

    [row] = json.loads(cli("stats", "--json").stdout)["senders"]
    assert row["health"] == "unhealthy" and epoch(row["last_error_at"]) > 0 and str(closed_port) in row["last_error"]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: connect", cli("stats").stdout), cli("stats").stdout

    # the operator fixes the port: the next run tries it at once
    config(srv.port)
    assert json.loads(cli("stats", "--json").stdout)["senders"][0]["health"] == "unknown (settings changed)"
    assert cli("queue", "retry", "--batch", "K").exit_code == 0
    fixed = cli("deliver", "-q")
    assert (fixed.exit_code, fixed.stdout, fixed.stderr) == (0, "", "")
    assert shared.states() == {"sent": 3}
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == [f"u{i}@example.org" for i in range(3)]
    row = json.loads(cli("stats", "--json").stdout)["senders"][0]
    assert (
        row["health"] == "healthy" and epoch(row["last_error_at"]) > 0
    )  # when the last error happened stays on record


# ---------------------------------------------------------------- 6. missing credentials are a config error

NO_PASSWORD = (
    "no password for sender '{0}': run 'mailops password set {0}' "
    "(or set MAILOPS_PASSWORD_{1} / password_command on a headless machine)"
)


def test_a_route_without_credentials_is_refused_before_queueing(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=None),
            "finance": workspace.sender(srv, email="finance@example.com", password=None),
        },
        routes={"default": ["sales", "finance"]},
    )
    expected = (
        "mailops: error: route 'default': no sender can log in, nothing was queued: "
        + NO_PASSWORD.format("sales", "SALES")
        + "; "
        + NO_PASSWORD.format("finance", "FINANCE")
    )
    for args in (["--dry-run"], [], ["--queue-only"], ["-q"]):
        result = _send(cli, "--to", "a@example.org", *args)
        assert (result.exit_code, result.stdout, result.stderr.strip()) == (2, "", expected), args
    assert not workspace.db_path.exists()  # stopped before the outbox was even opened
    assert srv.connections == 0 and srv.messages == []


def test_a_sender_without_credentials_in_a_route_is_named_in_one_warning(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=None, priority=1),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD, priority=2),
        },
        routes={"default": ["sales", "finance"]},
    )
    result = _send(cli, "--to", "a@example.org", "-q")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "mailops: warning: route 'default': 1 of 2 senders cannot log in and are skipped: "
        + NO_PASSWORD.format("sales", "SALES")
    ]
    [received] = srv.messages
    assert received.mail_from == "finance@example.com"
    assert workspace.states() == {"sent": 1}


def test_deliver_reports_messages_whose_sender_lost_its_credentials(workspace, srv, cli):
    _config(workspace, srv)
    assert _send(cli, "--to", "a@example.org", "--queue-only").exit_code == 0
    assert cli("password", "delete", "sales").exit_code == 0

    result = cli("deliver", "-q")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert NO_PASSWORD.format("sales", "SALES") in result.stderr
    assert workspace.states() == {"deferred": 1}
    assert srv.connections == 0


def test_a_password_command_that_times_out_is_reported_as_such(workspace, srv, cli, monkeypatch):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=None, password_command="sleep 5")},
        routes={"default": "sales"},
    )
    monkeypatch.setenv("MAILOPS_PASSWORD_COMMAND_TIMEOUT", "0.2")
    result = _send(cli, "--to", "a@example.org", "-q")
    assert result.exit_code == 1
    assert (
        "password_command of sender 'sales' ('sleep 5') did not finish within 0.2 s; make it work without a "
        "terminal (cron has none) or raise MAILOPS_PASSWORD_COMMAND_TIMEOUT"
    ) in result.stderr
    assert "mailops password set" not in result.stderr
    assert workspace.states() == {"deferred": 1}

    monkeypatch.setenv("MAILOPS_PASSWORD_COMMAND_TIMEOUT", "soon")
    bad = _send(cli, "--to", "b@example.org")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (
        "mailops: error: route 'default': no sender can log in, nothing was queued: sender 'sales': "
        "MAILOPS_PASSWORD_COMMAND_TIMEOUT='soon': must be a number of seconds above 0, such as 10; fix or unset it"
    )
    assert workspace.states() == {"deferred": 1} and srv.messages == []


# ---------------------------------------------------------------- 552 from every candidate: failed, not deferred


def test_552_from_every_candidate_fails_the_message_at_once(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, priority=1),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD, priority=2),
        },
        routes={"default": ["sales", "finance"]},
    )
    srv.mail_hook = lambda address: "552 5.3.4 Message size exceeds fixed limit"

    result = _send(cli, "--to", "a@example.org", "-q")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert (
        "failed: 'S' to a@example.org: every sender refused it for good: sales: permanent 552 5.3.4 Message size exceeds fixed limit; finance: permanent 552 5.3.4 Message size exceeds fixed limit"
        in result.stderr
    ), result.stderr
    assert workspace.states() == {"failed": 1}
    [(reason,)] = workspace.query("SELECT reason FROM messages")
    assert reason.startswith("every sender refused it for good: sales: permanent 552")
    assert sum(1 for c in srv.commands if c == "MAIL") == 2 and srv.messages == []
    assert cli("deliver").exit_code == 0  # nothing left to retry
    assert sum(1 for c in srv.commands if c == "MAIL") == 2
    # a message too large says nothing about the sender: the next message goes at once
    srv.mail_hook = None
    assert _send(cli, "--to", "b@example.org", "-q").exit_code == 0
    assert [m.mail_from for m in srv.messages] == ["sales@example.com"]
