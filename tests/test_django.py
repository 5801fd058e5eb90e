"""``mailops.django.EmailBackend``: Django's send_mail / EmailMultiAlternatives through mailops to a real server."""

from __future__ import annotations

import os

import pytest

django = pytest.importorskip("django")

from django.core import mail  # noqa: E402 - after the skip: django is an optional extra
from django.test import override_settings  # noqa: E402

from mailops.errors import UsageError  # noqa: E402
from tests.fixtures_cli import log_json  # noqa: E402

PASSWORD = "s3cret-pass"


@pytest.fixture(scope="module", autouse=True)
def _django_setup():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_settings")
    django.setup()


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD, "finance@example.com": PASSWORD})


@pytest.fixture
def ws(workspace, srv):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, name="Example Sales"),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD),
        },
        routes={"default": "sales", "payment": "finance"},
    )
    return workspace


def test_send_mail_goes_through_the_default_route(ws, srv, cli):
    sent = mail.send_mail("Welcome", "Your account is ready.\n", None, ["jane@example.org"])

    assert sent == 1
    [got] = srv.messages
    assert (got.mail_from, got.rcpt_tos, got.subject) == ("sales@example.com", ["jane@example.org"], "Welcome")
    assert got.message["From"] == "Example Sales <sales@example.com>"  # Django's webmaster@ is not the sender
    assert got.message.get_content() == "Your account is ready.\r\n"
    assert [(r["outcome"], r["route"]) for r in log_json(cli)] == [("sent", "default")]
    [(kind, detail)] = ws.query("SELECT kind, detail FROM events")
    assert kind == "sendmail" and "From 'webmaster@crm.example.com' rewritten to sales@example.com" in detail


def test_alternatives_attachments_bcc_and_the_route_header(ws, srv):
    message = mail.EmailMultiAlternatives(
        subject="Invoice C-1042",
        body="Invoice attached.",
        from_email="finance@example.com",
        to=["Boss <boss@example.org>"],
        bcc=["archive@example.org"],
        headers={"X-Mailops-Route": "payment", "X-CRM-Id": "42"},
    )
    message.attach_alternative("<p>Invoice attached.</p>", "text/html")
    message.attach("C-1042.pdf", b"%PDF-1.4 invoice", "application/pdf")

    assert message.send() == 1

    [got] = srv.messages
    assert (got.mail_from, got.rcpt_tos) == ("finance@example.com", ["boss@example.org", "archive@example.org"])
    assert got.message["X-Mailops-Route"] is None and got.message["X-CRM-Id"] == "42"
    assert b"archive@" not in got.data
    assert got.message["From"] == "finance@example.com"  # already the route's sender: kept
    assert got.message.get_body(("html",)).get_content() == "<p>Invoice attached.</p>"
    [part] = list(got.message.iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("C-1042.pdf", b"%PDF-1.4 invoice")


def test_route_settings_by_from_email_and_for_everything(ws, srv):
    with override_settings(MAILOPS_ROUTES={"@billing.example.com": "payment"}):
        mail.send_mail("by from", "x", "app@billing.example.com", ["a@example.org"])
    with override_settings(MAILOPS_ROUTE="payment"):
        mail.send_mail("by setting", "x", None, ["b@example.org"])
    mail.send_mail("default", "x", None, ["c@example.org"])
    assert [(m.subject, m.mail_from) for m in srv.messages] == [
        ("by from", "finance@example.com"),
        ("by setting", "finance@example.com"),
        ("default", "sales@example.com"),
    ]


def test_queue_only_leaves_delivery_to_deliver(ws, srv):
    with override_settings(MAILOPS_DELIVER=False):
        assert mail.send_mail("later", "x", None, ["a@example.org"]) == 1
    assert srv.messages == []
    assert ws.states() == {"queued": 1}


def test_errors_raise_unless_fail_silently(ws, srv):
    # error lines name Django's settings and the message, never the sendmail command line
    known = f"no such route in {ws.config_path}; known routes: default, payment"
    with pytest.raises(UsageError) as exc, override_settings(MAILOPS_ROUTE="nope"):
        mail.send_mail("S", "x", None, ["a@example.org"])
    assert str(exc.value) == f"MAILOPS_ROUTE 'nope': {known}"
    with pytest.raises(UsageError) as exc, override_settings(MAILOPS_ROUTES={"@crm.example.com": "nope"}):
        mail.send_mail("S", "x", None, ["a@example.org"])
    assert str(exc.value) == f"MAILOPS_ROUTES['@crm.example.com'] 'nope': {known}"
    with pytest.raises(UsageError) as exc:
        mail.EmailMessage("S", "x", None, ["a@example.org"], headers={"X-Mailops-Route": "nope"}).send()
    assert str(exc.value) == f"header X-Mailops-Route 'nope': {known}"
    with pytest.raises(UsageError) as exc:
        mail.send_mail("S", "x", None, ["not an address"])
    assert str(exc.value).startswith("recipient 1: 'not an address' is not a list of addresses")
    with override_settings(MAILOPS_ROUTE="nope"):
        assert mail.send_mail("S", "x", None, ["a@example.org"], fail_silently=True) == 0
    assert srv.messages == []
    assert ws.query("SELECT COUNT(*) FROM messages") == [(0,)]


def test_suppressed_recipients_are_left_out_and_a_message_to_none_left_is_not_sent(ws, srv, cli, caplog):
    assert cli("suppress", "add", "gone@example.org", "--reason", "hard bounce").exit_code == 0
    with caplog.at_level("WARNING", logger="mailops"):
        assert mail.send_mail("both", "x", None, ["ok@example.org", "gone@example.org"]) == 1
        assert mail.send_mail("none", "x", None, ["Gone@example.org"]) == 0
    assert [(m.subject, m.rcpt_tos) for m in srv.messages] == [("both", ["ok@example.org"])]
    assert ws.states() == {"sent": 1}
    warnings = [r.getMessage() for r in caplog.records if r.name == "mailops"]
    assert len(warnings) == 2
    assert warnings[0].endswith(" left out recipients on the suppression list: gone@example.org (hard bounce)")
    assert warnings[1].endswith(
        " not queued: every recipient is on the suppression list: Gone@example.org (hard bounce)"
    )


def test_djangos_build_time_date_is_replaced_at_hand_over_and_an_own_date_kept(ws, srv):
    with override_settings(MAILOPS_DELIVER=False):
        assert mail.send_mail("built", "x", None, ["a@example.org"]) == 1
        own = mail.EmailMessage(
            "own", "x", None, ["a@example.org"], headers={"Date": "Mon, 30 Nov 2026 08:00:00 +0000"}
        )
        assert own.send() == 1
    assert ws.query("SELECT subject, keep_date FROM messages ORDER BY id") == [("built", 0), ("own", 1)]
