"""``mailops.api``: send and enqueue from Python, through the same config, checks, outbox and log as the CLI."""

from __future__ import annotations

import time

import pytest

from mailops import api
from mailops.errors import ConfigError, InputError, MailopsError, UsageError
from tests.fixtures_cli import log_json

PASSWORD = "s3cret-pass"


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD, "finance@example.com": PASSWORD})


@pytest.fixture
def ws(workspace, srv):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD),
        },
        routes={"default": "sales", "payment": "finance"},
        groups={"admins": ["ops@example.org", "Sam <sam@example.org>"]},
    )
    workspace.template("notice", "Payment {{ invoice }}", "Dear {{ name }}, invoice {{ invoice }} is due.")
    return workspace


def test_send_with_a_template_variables_and_an_attachment(ws, srv, cli, tmp_path):
    pdf = tmp_path / "C-1042.pdf"
    pdf.write_bytes(b"%PDF-1.4 invoice")

    ids = api.send(
        route="payment",
        template="notice",
        to=["Jane Doe <jane@example.org>"],
        variables={"invoice": "C-1042"},
        attachments=[pdf],
    )

    assert ids == [row[0] for row in ws.query("SELECT id FROM messages")]
    assert len(ids) == 1
    [got] = srv.messages
    assert (got.mail_from, got.rcpt_tos, got.subject) == ("finance@example.com", ["jane@example.org"], "Payment C-1042")
    assert got.message.get_body(("plain",)).get_content() == "Dear Jane Doe, invoice C-1042 is due.\r\n"
    [part] = list(got.message.iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("C-1042.pdf", b"%PDF-1.4 invoice")
    assert [(r["outcome"], r["route"], r["template"], r["message_pk"]) for r in log_json(cli)] == [
        ("sent", "payment", "notice", ids[0])
    ]


def test_enqueue_queues_without_sending_and_at_schedules(ws, srv):
    first = api.enqueue(subject="Now", body="B", group=["admins"], batch="b1")
    before = time.time()
    later = api.enqueue(subject="Later", body="B", to="ops@example.org", at="+2h")
    after = time.time()

    assert srv.messages == []
    rows = ws.query("SELECT id, state, due_at, subject, recipients FROM messages ORDER BY id")
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        (first[0], "queued", "Now", '["ops@example.org", "sam@example.org"]'),
        (later[0], "queued", "Later", '["ops@example.org"]'),
    ]
    assert before + 7200 <= rows[1][2] <= after + 7200
    # the same batch key again: the row is recognised, nothing new is queued
    assert api.enqueue(subject="Now", body="B", group=["admins"], batch="b1") == []


def test_errors_are_the_typed_exceptions_and_nothing_is_queued(ws, srv, tmp_path, monkeypatch):
    # error lines name this API's parameters, never the CLI's options
    with pytest.raises(InputError, match=r"^to: 'not an address' is not exactly one address"):
        api.send(subject="S", body="B", to=["not an address"])
    with pytest.raises(UsageError, match=r"^route 'nope': no such route"):
        api.send(route="nope", subject="S", body="B", to=["a@example.org"])
    with pytest.raises(UsageError) as exc:
        api.send(subject="S", body="B")
    assert str(exc.value) == "no recipients: pass to=..., group=... or data=..."
    with pytest.raises(UsageError) as exc:
        api.send(template="renewal", subject="S", to=["a@example.org"])
    assert str(exc.value) == ("template and subject cannot be used together: the template has its own subject.txt")
    with pytest.raises(MailopsError) as exc:
        api.send(subject="S", body="Dear {{ who }}", to=["a@example.org"])
    assert "pass variables={'who': ...}" in str(exc.value) and "--" not in str(exc.value)
    with pytest.raises(UsageError) as exc:
        api.send(route="renewal", sender="sales", subject="S", body="B", to=["a@example.org"])
    assert str(exc.value) == "route and sender exclude each other; pass one of them"
    with pytest.raises(UsageError, match="is not in the future"):
        api.enqueue(subject="S", body="B", to=["a@example.org"], at="2001-01-01T00:00")
    with pytest.raises(UsageError, match="variables: 'not-a-name'"):
        api.enqueue(subject="S", body="B", to=["a@example.org"], variables={"not-a-name": 1})
    with pytest.raises(ConfigError, match="no such config file"):
        api.enqueue(subject="S", body="B", to=["a@example.org"], config=tmp_path / "missing.yaml")
    assert ws.query("SELECT COUNT(*) FROM messages") == [(0,)]
    assert srv.messages == []


def test_suppressed_recipients_are_left_out_as_by_send(ws, srv, cli):
    assert cli("suppress", "add", "gone@example.org").exit_code == 0
    assert api.enqueue(subject="S", body="B", to=["gone@example.org"]) == []
    [kept] = api.enqueue(subject="S", body="B", to=["gone@example.org"], include_suppressed=True)
    assert ws.query("SELECT id, recipients FROM messages") == [(kept, '["gone@example.org"]')]
