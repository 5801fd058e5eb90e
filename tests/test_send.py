"""`mailops send` end to end: real CLI, real STARTTLS+AUTH server, real SQLite file."""

from __future__ import annotations

import email
import json
from collections import Counter
from email import policy
from pathlib import Path

import pytest

from tests.fixtures_cli import log_json

PASSWORD = "s3cret-pass"
USERS = {f"{name}@example.com": PASSWORD for name in ("sales", "finance", "support", "a", "b", "c")}


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users=USERS)


def _text(msg, kind="plain"):
    """A body part's text with wire CRLFs folded to newlines."""
    return msg.get_body((kind,)).get_content().replace("\r\n", "\n")


def _pdf(path: Path, text: str) -> Path:
    path.write_bytes(b"%PDF-1.4\n% " + text.encode() + b"\n%%EOF\n")
    return path


def _renewal(workspace) -> None:
    workspace.template(
        "renewal",
        "Renewal for {{ name }} on {{ date }}\n",
        "Hello {{ name }},\nyour plan {{ plan }} renews on {{ date }}.\n-- {{ sender.name }}\n",
        "<p>Hello {{ name }}, plan <b>{{ plan }}</b></p>",
    )


def test_fifty_row_merge_with_per_row_pdfs_arrives_and_is_logged(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(
                srv, email="sales@example.com", password=PASSWORD, name="Sales Team", reply_to="renewals@example.com"
            ),
        },
        routes={"renewal": "sales"},
    )
    _renewal(workspace)
    invoices = workspace.root / "invoices"
    invoices.mkdir()
    rows = []
    for i in range(50):
        _pdf(invoices / f"inv-{i}.pdf", f"invoice {i}")
        rows.append(
            {
                "email": f"cust{i}@example.org",
                "name": f"Customer {i}",
                "plan": "Pro",
                "date": "2026-12-01",
                "attachments": f"invoices/inv-{i}.pdf",
            }
        )
    data = workspace.csv("customers.csv", rows)

    result = cli("send", "--route", "renewal", "--template", "renewal", "--data", data)

    assert result.exit_code == 0, result.output
    assert len(srv.messages) == 50
    by_rcpt = {m.rcpt_tos[0]: m for m in srv.messages}
    for i in range(50):
        msg = by_rcpt[f"cust{i}@example.org"].message
        assert msg["From"] == "Sales Team <sales@example.com>"
        assert msg["Reply-To"] == "renewals@example.com"
        assert msg["To"] == f"Customer {i} <cust{i}@example.org>"
        assert msg["Subject"] == f"Renewal for Customer {i} on 2026-12-01"
        assert msg["Message-ID"].endswith("@example.com>")
        assert f"Hello Customer {i},\nyour plan Pro renews" in _text(msg)
        assert "<b>Pro</b>" in _text(msg, "html")
        [attachment] = list(msg.iter_attachments())
        assert attachment.get_content_type() == "application/pdf"
        assert attachment.get_filename() == f"inv-{i}.pdf"
        assert attachment.get_content() == (invoices / f"inv-{i}.pdf").read_bytes()
    log = log_json(cli)
    assert Counter(r["outcome"] for r in log) == {"sent": 50}
    assert {r["sender"] for r in log} == {"sales"}
    assert {r["route"] for r in log} == {"renewal"}


def test_daily_limit_defers_the_rest_and_reset_counts_lets_them_go(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, daily_limit=20)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org", "n": i} for i in range(50)])

    first = cli("send", "--data", data, "--subject", "Hi {{ n }}", "--body", "Body {{ n }}")

    assert first.exit_code == 1, first.output
    assert len(srv.messages) == 20
    assert workspace.states() == {"sent": 20, "deferred": 30}
    assert "30 message(s) deferred until" in first.stdout
    assert "daily limit of 20 reached for sales" in first.stdout

    again = cli("deliver")
    assert again.exit_code == 0, again.output  # nothing is due before midnight: nothing to do
    assert len(srv.messages) == 20

    reset = cli("reset-counts", "sales")
    assert reset.exit_code == 0, reset.output
    assert "reset sales day" in reset.stdout and "20 -> 0" in reset.stdout

    later = cli("deliver")
    assert len(srv.messages) == 40
    assert workspace.states() == {"sent": 40, "deferred": 10}
    assert later.exit_code == 1
    assert len(workspace.query("SELECT * FROM attempts")) >= 50  # the log was not touched by the reset
    assert sorted({m.message["Subject"] for m in srv.messages}) == sorted({f"Hi {i}" for i in range(40)})


def test_failover_route_skips_sender_with_wrong_password(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password="wrong-password", priority=1),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD, priority=2),
        },
        routes={"default": ["sales", "finance"]},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(5)])

    result = cli("send", "--data", data, "--subject", "Hello", "--body", "Hi")

    assert result.exit_code == 0, result.output
    assert len(srv.messages) == 5
    assert {m.mail_from for m in srv.messages} == {"finance@example.com"}
    assert {m.message["From"] for m in srv.messages} == {"finance@example.com"}
    log = log_json(cli)
    failed = [r for r in log if r["sender"] == "sales"]
    assert failed and all(r["outcome"] == "failed" and r["smtp_code"] == 535 for r in failed)
    assert Counter(r["outcome"] for r in log if r["sender"] == "finance") == {"sent": 5}
    stats = json.loads(cli("stats", "--json").stdout)
    assert {s["sender"]: s["health"] for s in stats["senders"]} == {"sales": "unhealthy", "finance": "healthy"}
    assert "wrong-password" not in result.output + json.dumps(log) + json.dumps(stats)


def test_round_robin_pool_shares_thirty_messages_evenly(workspace, srv, cli):
    workspace.write_config(
        {k: workspace.sender(srv, email=f"{k}@example.com", password=PASSWORD) for k in ("a", "b", "c")},
        routes={"quarterly": {"senders": ["a", "b", "c"], "strategy": "round-robin"}},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(30)])

    result = cli("send", "--route", "quarterly", "--data", data, "--subject", "Q", "--body", "B")

    assert result.exit_code == 0, result.output
    assert Counter(m.mail_from for m in srv.messages) == {"a@example.com": 10, "b@example.com": 10, "c@example.com": 10}
    # the From header follows the sender that really sent it
    assert all(m.message["From"] == m.mail_from for m in srv.messages)


def test_recipient_refused_with_550_fails_once_without_failover(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, priority=1),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD, priority=2),
        },
        routes={"default": ["sales", "finance"]},
    )
    srv.rcpt_hook = lambda addr: "550 5.1.1 no such user" if addr.startswith("gone") else None

    result = cli("send", "--to", "gone@example.org", "--subject", "S", "--body", "B")

    assert result.exit_code == 1
    assert srv.messages == []
    assert sum(1 for c in srv.commands if c == "RCPT") == 1
    log = log_json(cli)
    assert [(r["sender"], r["outcome"], r["smtp_code"]) for r in log] == [("sales", "failed", 550)]
    assert workspace.states() == {"failed": 1}


def test_partial_refusal_records_each_recipient(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    srv.rcpt_hook = lambda addr: "550 5.1.1 no such user" if addr.startswith("gone") else None

    result = cli("send", "--to", "ok@example.org", "--to", "gone@example.org", "--subject", "S", "--body", "B")

    assert result.exit_code == 1, result.output  # a refused recipient is a failure of that recipient
    [received] = srv.messages
    assert received.rcpt_tos == ["ok@example.org"]
    [(status,)] = workspace.query("SELECT recipient_status FROM messages")
    assert json.loads(status) == {"ok@example.org": "sent", "gone@example.org": "failed: 550 5.1.1 no such user"}
    refused, row = log_json(cli)
    assert row["outcome"] == "partial" and "gone@example.org: 550" in row["detail"]
    assert (refused["outcome"], refused["recipients"], refused["smtp_code"]) == ("failed", ["gone@example.org"], 550)


def test_non_ascii_names_and_subjects_arrive_encoded_without_defects(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, name="Vertrieb Müller")},
        routes={"default": "sales"},
    )
    workspace.template(
        "hi", "{{ greeting }} {{ name }} 🎉\n", "{{ greeting }} {{ name }}, ยินดีต้อนรับ\n", "<p>{{ name }} – ü</p>"
    )
    data = workspace.csv(
        "c.csv",
        [
            {"email": "somchai@example.org", "name": "สมชาย ใจดี", "greeting": "สวัสดี"},
            {"email": "juergen@example.org", "name": "Jürgen Groß", "greeting": "Grüß Gott"},
            {"email": "emoji@example.org", "name": "Rocket 🚀 Fan", "greeting": "Hey"},
        ],
    )

    result = cli("send", "--template", "hi", "--data", data)

    assert result.exit_code == 0, result.output
    subjects = {}
    for received in srv.messages:
        msg = email.message_from_bytes(received.data, policy=policy.default)
        assert not msg.defects
        for part in msg.walk():
            assert not part.defects
        assert all(ord(ch) < 128 for ch in received.data.split(b"\r\n\r\n")[0].decode("ascii"))
        subjects[received.rcpt_tos[0]] = (str(msg["Subject"]), str(msg["To"]), str(msg["From"]))
        assert "ยินดีต้อนรับ" in _text(msg)
    assert subjects["somchai@example.org"] == (
        "สวัสดี สมชาย ใจดี 🎉",
        "สมชาย ใจดี <somchai@example.org>",
        "Vertrieb Müller <sales@example.com>",
    )
    assert subjects["juergen@example.org"][0] == "Grüß Gott Jürgen Groß 🎉"
    assert subjects["emoji@example.org"][1] == "Rocket 🚀 Fan <emoji@example.org>"


def test_batch_key_rerun_skips_rows_already_sent(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    rows = [{"email": f"u{i}@example.org"} for i in range(3)]
    data = workspace.csv("c.csv", rows)
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--batch", "nov").exit_code == 0
    data = workspace.csv("c.csv", [*rows, {"email": "new@example.org"}])

    again = cli("send", "--data", data, "--subject", "S", "--body", "B", "--batch", "nov")

    assert again.exit_code == 0, again.output
    assert "3 row(s) already sent or queued under batch 'nov': skipped" in again.stdout
    assert [m.rcpt_tos for m in srv.messages][-1] == ["new@example.org"]
    assert len(srv.messages) == 4


def test_dry_run_and_preview_connect_to_nothing(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, daily_limit=2)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org", "name": f"U{i}"} for i in range(3)])

    result = cli("send", "--data", data, "--subject", "Hi {{ name }}", "--body", "Body", "--dry-run", "--preview", "1")

    assert result.exit_code == 0, result.output
    assert "Subject: Hi U0" in result.stdout and "Subject: Hi U1" not in result.stdout
    assert "dry run: 3 message(s) valid" in result.stdout
    assert "1 of them would be deferred: the senders' remaining quota is 2" in result.stdout
    assert srv.connections == 0 and srv.messages == []
    assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]


def test_limit_sends_only_the_first_rows(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(5)])

    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "--limit", "2", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sent"] == 2 and summary["per_sender"] == {"sales": {"sent": 2, "deferred": 0, "failed": 0}}
    assert [m.rcpt_tos for m in srv.messages] == [["u0@example.org"], ["u1@example.org"]]


def test_group_and_cc_bcc(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        groups={"finance-team": ["Fin One <fin1@example.org>", "fin2@example.org"]},
    )

    result = cli(
        "send",
        "--group",
        "finance-team",
        "--cc",
        "cc@example.org",
        "--bcc",
        "hidden@example.org",
        "--subject",
        "S",
        "--body",
        "B",
    )

    assert result.exit_code == 0, result.output
    [received] = srv.messages
    assert received.rcpt_tos == ["fin1@example.org", "fin2@example.org", "cc@example.org", "hidden@example.org"]
    assert received.message["To"] == "Fin One <fin1@example.org>, fin2@example.org"
    assert received.message["Cc"] == "cc@example.org"
    assert "hidden" not in received.data.decode()


def test_least_used_pool_prefers_the_sender_with_most_headroom(workspace, srv, cli):
    workspace.write_config(
        {
            "a": workspace.sender(srv, email="a@example.com", password=PASSWORD, daily_limit=10),
            "b": workspace.sender(srv, email="b@example.com", password=PASSWORD, daily_limit=100),
        },
        routes={"pool": {"senders": ["a", "b"], "strategy": "least-used"}},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(6)])

    result = cli("send", "--route", "pool", "--data", data, "--subject", "S", "--body", "B")

    assert result.exit_code == 0, result.output
    assert Counter(m.mail_from for m in srv.messages) == {"b@example.com": 6}


def test_random_pool_uses_every_sender(workspace, srv, cli):
    workspace.write_config(
        {k: workspace.sender(srv, email=f"{k}@example.com", password=PASSWORD) for k in ("a", "b")},
        routes={"pool": {"senders": ["a", "b"], "strategy": "random"}},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(40)])

    assert cli("send", "--route", "pool", "--data", data, "--subject", "S", "--body", "B").exit_code == 0

    counts = Counter(m.mail_from for m in srv.messages)
    assert sum(counts.values()) == 40 and len(counts) == 2  # 2**-39 chance of a false failure


def test_queued_message_is_sent_as_rendered_after_its_sources_disappear(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    folder = workspace.template("t", "Subject {{ n }}\n", "Body {{ n }}\n")
    invoice = _pdf(workspace.root / "inv.pdf", "original")
    data = workspace.csv("c.csv", [{"email": "a@example.org", "n": "1", "attachments": "inv.pdf"}])
    assert cli("send", "--template", "t", "--data", data, "--queue-only").exit_code == 0
    for path in (invoice, data, *folder.iterdir()):
        path.unlink()

    assert cli("deliver").exit_code == 0

    [received] = srv.messages
    assert received.message["Subject"] == "Subject 1"
    [attachment] = list(received.message.iter_attachments())
    assert b"original" in attachment.get_content()
