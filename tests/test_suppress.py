"""The suppression list: suppress add/remove/list/import, send leaving suppressed recipients out, bounces feeding it.

Against a real aiosmtpd server and the workspace database (SQLite; the shared-store tests cover PostgreSQL).
"""

from __future__ import annotations

import json

import pytest

from mailops.suppress import is_nonexistent_recipient
from tests.smtp_servers import refusing


@pytest.fixture
def srv(smtp_server):
    return smtp_server()


@pytest.fixture
def ws(workspace, srv):
    workspace.write_config({"sales": workspace.sender(srv)}, routes={"default": "sales"})
    return workspace


def _listed(cli):
    result = cli("suppress", "list", "--json")
    assert result.exit_code == 0, result.stderr
    return {e["address"]: (e["source"], e["reason"]) for e in json.loads(result.stdout)}


def test_add_list_remove(ws, cli):
    added = cli("suppress", "add", "Gone@Example.org", "Jane <jane@example.org>", "--reason", "asked to stop")
    assert (added.exit_code, added.stdout) == (0, "added 2 address(es) to the suppression list\n")
    again = cli("suppress", "add", "gone@example.org")
    assert again.stdout == "added 0 address(es) to the suppression list; 1 already listed\n"
    assert _listed(cli) == {
        "gone@example.org": ("manual", "asked to stop"),
        "jane@example.org": ("manual", "asked to stop"),
    }
    table = cli("suppress", "list")
    assert "gone@example.org" in table.stdout and "asked to stop" in table.stdout
    removed = cli("suppress", "remove", "GONE@example.org", "nobody@example.org")
    assert removed.stdout == "removed 1 address(es) from the suppression list; 1 were not listed\n"
    assert list(_listed(cli)) == ["jane@example.org"]


def test_add_refuses_a_bad_address_and_adds_nothing(ws, cli):
    result = cli("suppress", "add", "ok@example.org", "not-an-address")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("mailops: error: suppress add: 'not-an-address' is not a valid email address"), line
    assert _listed(cli) == {}


def test_import_lines_and_csv(ws, cli):
    lines = ws.root / "dead.txt"
    lines.write_text("# bounced in November\na@example.org\n\nB@example.org\n", encoding="utf-8")
    result = cli("suppress", "import", lines)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"imported 2 address(es) from {lines}: 2 new, 0 already listed\n"
    table = ws.csv(
        "unsubscribed.csv", [{"name": "C", "email": "c@example.org"}, {"name": "A", "email": "a@example.org"}]
    )
    result = cli("suppress", "import", table, "--reason", "unsubscribed")
    assert result.stdout == f"imported 2 address(es) from {table}: 1 new, 1 already listed\n"
    assert _listed(cli) == {
        "a@example.org": ("import", "imported from dead.txt"),
        "b@example.org": ("import", "imported from dead.txt"),
        "c@example.org": ("import", "unsubscribed"),
    }


def test_import_names_the_bad_line_and_adds_nothing(ws, cli):
    path = ws.root / "dead.txt"
    path.write_text("a@example.org\nnope\n", encoding="utf-8")
    result = cli("suppress", "import", path)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"mailops: error: {path} line 2: 'nope' is not a valid email address"), line
    assert _listed(cli) == {}


def test_import_csv_without_email_column(ws, cli):
    table = ws.csv("x.csv", [{"mail": "a@example.org", "name": "A"}])
    result = cli("suppress", "import", table)
    assert result.exit_code == 2
    assert result.stderr == (
        f"mailops: error: {table}: a CSV file needs an 'email' column (columns: mail, name); rename the column\n"
    )


def test_send_leaves_suppressed_recipients_out(ws, srv, cli):
    cli("suppress", "add", "gone@example.org", "--reason", "550 5.1.1 user unknown")
    data = ws.csv(
        "rows.csv", [{"email": "ok@example.org"}, {"email": "Gone@example.org"}, {"email": "ok2@example.org"}]
    )
    result = cli("send", "--data", data, "--subject", "S", "--body", "B")
    assert result.exit_code == 0, result.stderr
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == ["ok2@example.org", "ok@example.org"]
    assert "left out 1 suppressed recipient(s); 1 message(s) not queued (every recipient suppressed):" in result.stdout
    assert "  rows.csv row 2: Gone@example.org: 550 5.1.1 user unknown" in result.stdout.splitlines()
    assert ws.query("SELECT COUNT(*) FROM messages") == [(2,)]


def test_send_json_and_preview_show_the_suppressed(ws, srv, cli):
    cli("suppress", "add", "gone@example.org")
    result = cli(
        "send", "--to", "ok@example.org", "--cc", "gone@example.org", "--subject", "S", "--body", "B", "--json"
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["suppressed_recipients"], data["suppressed_messages"]) == (1, 0)
    assert data["suppressed"] == [
        {"row": None, "label": "message", "recipient": "gone@example.org", "reason": "manual"}
    ]
    [received] = srv.messages
    assert received.rcpt_tos == ["ok@example.org"]

    preview = cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "B", "--dry-run", "--preview", "1")
    assert preview.exit_code == 0, preview.stderr
    assert "(suppressed, left out: gone@example.org: manual)" in preview.stdout.splitlines()
    assert "(not queued: every recipient is suppressed)" in preview.stdout.splitlines()


def test_a_message_to_suppressed_recipients_only_is_not_queued(ws, srv, cli):
    cli("suppress", "add", "gone@example.org")
    result = cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "B")
    assert result.exit_code == 0, result.stderr
    assert srv.messages == []
    assert ws.query("SELECT COUNT(*) FROM messages") == [(0,)]


def test_include_suppressed_overrides(ws, srv, cli):
    cli("suppress", "add", "gone@example.org")
    result = cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "B", "--include-suppressed")
    assert result.exit_code == 0, result.stderr
    assert [m.rcpt_tos for m in srv.messages] == [["gone@example.org"]]


def test_a_hard_bounce_is_suppressed_and_left_out_next_time(ws, srv, cli):
    srv.rcpt_hook = refusing("gone@example.org", reply="550 5.1.1 <gone@example.org>: user unknown")
    first = cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "B")
    assert first.exit_code == 1
    assert _listed(cli) == {"gone@example.org": ("bounce", "550 5.1.1 <gone@example.org>: user unknown")}
    srv.rcpt_hook = None
    second = cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "B")
    assert second.exit_code == 0
    assert srv.messages == []


def test_a_partial_refusal_suppresses_only_the_dead_one(ws, srv, cli):
    srv.rcpt_hook = refusing("gone@example.org", reply="550 5.1.1 user unknown")
    result = cli("send", "--to", "ok@example.org", "--cc", "gone@example.org", "--subject", "S", "--body", "B")
    assert result.exit_code == 1
    assert list(_listed(cli)) == ["gone@example.org"]


@pytest.mark.parametrize("reply", ["550 5.7.1 rejected by policy", "552 5.2.2 mailbox full", "450 4.1.1 try later"])
def test_other_refusals_are_not_suppressed(ws, srv, cli, reply):
    srv.rcpt_hook = refusing("x@example.org", reply=reply)
    cli("send", "--to", "x@example.org", "--subject", "S", "--body", "B")
    assert _listed(cli) == {}


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 user unknown", True),
        (554, "5.1.1 no mailbox", True),
        (556, "5.1.10 null MX", True),
        (553, "5.1.3 bad address syntax", True),
        (551, "5.1.6 mailbox moved", True),
        (550, "5.1.8 bad sender domain", False),
        (554, "5.1.3 x", False),
        (550, "user unknown", False),
        (550, "5.7.1 spam", False),
        (450, "4.1.1 later", False),
    ],
)
def test_what_counts_as_a_nonexistent_recipient(code, text, expected):
    assert is_nonexistent_recipient(code, text) is expected


def test_the_list_is_shared_through_the_database(workspace, srv, cli, database_url):
    """On PostgreSQL too: a bounce recorded by delivery, the CLI commands, send leaving it out."""
    workspace.use_database(database_url)
    workspace.write_config({"sales": workspace.sender(srv)}, routes={"default": "sales"})
    srv.rcpt_hook = refusing("gone@example.org", reply="550 5.1.1 user unknown")
    first = cli("send", "--to", "ok@example.org", "--cc", "gone@example.org", "--subject", "S", "--body", "B")
    assert first.exit_code == 1
    assert cli("suppress", "add", "other@example.org").exit_code == 0
    assert _listed(cli) == {
        "gone@example.org": ("bounce", "550 5.1.1 user unknown"),
        "other@example.org": ("manual", None),
    }
    srv.rcpt_hook = None
    again = cli("send", "--to", "gone@example.org", "--to", "ok@example.org", "--subject", "S2", "--body", "B")
    assert again.exit_code == 0, again.output
    assert [m.rcpt_tos for m in srv.messages if m.subject == "S2"] == [["ok@example.org"]]
    assert cli("suppress", "remove", "gone@example.org", "other@example.org").exit_code == 0
    assert _listed(cli) == {}


def test_deliver_leaves_out_addresses_suppressed_after_queueing(ws, srv, cli):
    # queued while nobody was suppressed; then the addresses are suppressed before cron's deliver runs
    assert (
        cli(
            "send", "--to", "a@example.org", "--to", "b@example.org", "--subject", "both", "--body", "x", "--queue-only"
        ).exit_code
        == 0
    )
    assert cli("send", "--to", "c@example.org", "--subject", "only-c", "--body", "x", "--queue-only").exit_code == 0
    assert cli("send", "--to", "b@example.org", "--subject", "chosen", "--body", "x", "--queue-only").exit_code == 0
    assert cli("suppress", "add", "B@example.org", "c@example.org", "--reason", "asked to stop").exit_code == 0
    assert (
        cli("send", "--to", "b@example.org", "--subject", "anyway", "--body", "x", "--include-suppressed").exit_code
        == 0
    )
    srv.messages.clear()

    result = cli("deliver")

    assert result.exit_code == 0, result.output  # leaving them out is what the operator asked for
    assert sorted((m.subject, tuple(m.rcpt_tos)) for m in srv.messages) == [
        ("both", ("a@example.org",)),
    ]
    assert "not sent: 'only-c': every recipient is on the suppression list: c@example.org: asked to stop" in (
        result.output
    )
    assert "not sent: 'chosen': every recipient is on the suppression list: b@example.org: asked to stop" in (
        result.output
    )
    assert dict(ws.query("SELECT subject, state FROM messages")) == {
        "both": "sent",
        "only-c": "cancelled",
        "chosen": "cancelled",
        "anyway": "sent",  # queued (and sent) with --include-suppressed: the operator's choice stands
    }
    skipped = json.loads(cli("log", "--status", "skipped", "--json").stdout)
    assert sorted((r["subject"], r["recipients"], r["detail"]) for r in skipped) == [
        ("both", ["b@example.org"], "on the suppression list since the message was queued: asked to stop"),
        ("chosen", ["b@example.org"], "on the suppression list since the message was queued: asked to stop"),
        ("only-c", ["c@example.org"], "on the suppression list since the message was queued: asked to stop"),
    ]
    assert json.loads(cli("deliver", "--json").stdout)["cancelled_suppressed"] == 0


def test_a_message_queued_with_include_suppressed_is_delivered_later_to_them(ws, srv, cli):
    assert cli("suppress", "add", "b@example.org").exit_code == 0
    queued = cli(
        "send", "--to", "b@example.org", "--subject", "S", "--body", "x", "--include-suppressed", "--queue-only"
    )
    assert queued.exit_code == 0, queued.output
    assert cli("deliver", "-q").exit_code == 0
    assert [m.rcpt_tos for m in srv.messages] == [["b@example.org"]]
