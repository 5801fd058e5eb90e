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

from mailops.cli import runtime
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
        patch.setattr(runtime, "now", lambda: queued_at)
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
        patch.setattr(runtime, "now", lambda: time.time() - DAY)
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


# ---------------------------------------------------------------- added headers


def _send(cli, *args):
    return cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", *args)


def test_header_option_adds_headers_rendered_per_message(workspace, srv, cli):
    _config(workspace, srv)
    data = workspace.csv(
        "rows.csv", [{"email": "u1@example.org", "plan": "gold"}, {"email": "u2@example.org", "plan": "free"}]
    )
    result = cli(
        "send",
        "--data",
        data,
        "--subject",
        "S",
        "--body",
        "B",
        "--header",
        "X-Campaign: spring-2026",
        "--header",
        "X-Plan: {{ plan }} for {{ recipient }}",
    )
    assert result.exit_code == 0, result.stderr
    got = {m.rcpt_tos[0]: m.message for m in srv.messages}
    assert got["u1@example.org"]["X-Campaign"] == "spring-2026"
    assert got["u1@example.org"]["X-Plan"] == "gold for u1@example.org"
    assert got["u2@example.org"]["X-Plan"] == "free for u2@example.org"
    assert not got["u1@example.org"].defects


def test_route_headers_template_headers_and_option_in_that_order_later_wins(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv)},
        routes={
            "default": "sales",
            "news": {"senders": ["sales"], "headers": {"X-Source": "route", "X-Route": "news"}},
        },
    )
    folder = workspace.template("letter", "Hello", "Body")
    (folder / "headers.yaml").write_text("X-Source: template\nX-Template: '{{ recipient }}'\n", encoding="utf-8")
    result = cli(
        "send", "--route", "news", "--to", "a@example.org", "--template", "letter", "--header", "x-source: option"
    )
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    msg = received.message
    assert msg.get_all("X-Source") == ["option"]
    assert msg["X-Route"] == "news" and msg["X-Template"] == "a@example.org"


def test_non_ascii_header_value_is_encoded(workspace, srv, cli):
    _config(workspace, srv)
    result = _send(cli, "--header", "X-Note: Grüße aus Köln")
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    assert received.message["X-Note"] == "Grüße aus Köln"
    assert b"X-Note: =?utf-8?" in received.data


def test_preview_shows_added_headers(workspace, srv, cli):
    _config(workspace, srv)
    result = _send(cli, "--header", "X-Campaign: c1", "--dry-run", "--preview", "1")
    assert result.exit_code == 0, result.stderr
    assert "X-Campaign: c1" in result.stdout.splitlines()
    assert srv.messages == []


@pytest.mark.parametrize(
    ("item", "line"),
    [
        (
            "Subject: hi",
            "mailops: error: --header 'Subject: hi': Subject is set by mailops from --subject or the "
            "template's subject.txt; remove this header",
        ),
        (
            "Content-Type: text/html",
            "mailops: error: --header 'Content-Type: text/html': Content-Type is set by "
            "mailops from mailops (the message body and attachments); remove this header",
        ),
        (
            "message-id: <x@y>",
            "mailops: error: --header 'message-id: <x@y>': message-id is set by mailops from "
            "mailops (a new one per message); remove this header",
        ),
        (
            "X Bad: v",
            "mailops: error: --header 'X Bad: v': 'X Bad' is not a valid header name (printable ASCII "
            "without spaces or ':', at most 64 characters, such as X-Campaign); fix the name",
        ),
        ("NoColon", "mailops: error: --header 'NoColon': expected 'Name: value'"),
        (
            "X-A : v",
            "mailops: error: --header 'X-A : v': 'X-A ': a header name may not start or end with a space; "
            "write it as 'Name: value'",
        ),
        ("X-Bad: a\rb", "mailops: error: --header 'X-Bad: a\\rb': "),
    ],
)
def test_bad_header_option_is_refused_before_anything(workspace, srv, cli, item, line):
    _config(workspace, srv)
    result = _send(cli, "--header", item)
    assert result.exit_code == 2
    [only] = result.stderr.splitlines()
    assert only.startswith(line), only
    assert srv.messages == []
    assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]


def test_header_value_rendering_a_line_break_names_the_row(workspace, srv, cli):
    _config(workspace, srv)
    data = workspace.csv(
        "rows.csv", [{"email": "u1@example.org", "tag": "ok"}, {"email": "u2@example.org", "tag": "a\nb"}]
    )
    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "--header", "X-Tag: {{ tag }}")
    # a line break inside a value is folded into one line: whitespace runs become one space
    assert result.exit_code == 0, result.stderr
    assert sorted(m.message["X-Tag"] for m in srv.messages) == ["a b", "ok"]


def test_header_value_with_a_control_character_names_the_row(workspace, srv, cli):
    _config(workspace, srv)
    data = workspace.csv(
        "rows.csv", [{"email": "u1@example.org", "tag": "ok"}, {"email": "u2@example.org", "tag": "a\x00b"}]
    )
    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "--header", "X-Tag: {{ tag }}")
    assert result.exit_code == 2
    assert result.stderr == (
        "mailops: error: rows.csv row 2: header X-Tag: the control character '\\x00' is not allowed in a header "
        "(subject, name, address); remove it from the value (nothing was sent)\n"
    )
    assert srv.messages == []


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            {"senders": ["sales"], "headers": {"From": "x@y.z"}},
            "routes.news.headers.From: From is set by mailops from the sender (senders.yaml email and name); remove this header",
        ),
        (
            {"senders": ["sales"], "headers": {"X-Ok": ["a"]}},
            "routes.news.headers.X-Ok: the value must be text (got list); quote it",
        ),
        ({"senders": ["sales"], "headres": {}}, "routes.news.headres: unknown key; did you mean 'headers'?"),
        (
            {"senders": ["sales"], "auto_submitted": "yes"},
            "routes.news.auto_submitted: must be true or false (got 'yes')",
        ),
        (
            {"senders": ["sales"], "unsubscribe": {"url": "ftp://x"}},
            "routes.news.unsubscribe.url: 'ftp://x' must be an https:// URL (one-click unsubscribe, RFC 8058)",
        ),
        ({"senders": ["sales"], "unsubscribe": {}}, "routes.news.unsubscribe: give 'mailto', 'url' or both"),
    ],
)
def test_bad_route_header_config_is_one_line_naming_the_key(workspace, srv, cli, route, message):
    workspace.write_config({"sales": workspace.sender(srv)}, routes={"default": "sales", "news": route})
    result = _send(cli, "--route", "news")
    assert result.exit_code == 2
    assert result.stderr == f"mailops: error: {workspace.config_path}: {message}\n"
    assert srv.messages == []


def test_bad_headers_yaml_names_the_file_and_header(workspace, srv, cli):
    _config(workspace, srv)
    folder = workspace.template("letter", "Hello", "Body")
    (folder / "headers.yaml").write_text("Bcc: boss@example.org\n", encoding="utf-8")
    result = cli("send", "--to", "a@example.org", "--template", "letter")
    assert result.exit_code == 2
    assert result.stderr == (
        f"mailops: error: {folder / 'headers.yaml'}: Bcc: Bcc is set by mailops from --bcc; remove this header\n"
    )
    assert srv.messages == []


# ---------------------------------------------------------------- unsubscribe, Auto-Submitted


def _news_route(workspace, srv, **keys):
    workspace.write_config(
        {"sales": workspace.sender(srv)}, routes={"default": "sales", "news": {"senders": ["sales"], **keys}}
    )


def test_one_click_unsubscribe_per_recipient(workspace, srv, cli):
    _news_route(
        workspace,
        srv,
        unsubscribe={
            "mailto": "unsubscribe@example.com?subject=unsubscribe",
            "url": "https://example.com/u?e={{ recipient | urlencode }}&c={{ campaign }}",
        },
    )
    data = workspace.csv(
        "rows.csv", [{"email": "u1@example.org", "campaign": "c7"}, {"email": "u2@example.org", "campaign": "c8"}]
    )
    result = cli("send", "--route", "news", "--data", data, "--subject", "S", "--body", "B")
    assert result.exit_code == 0, result.stderr
    got = {m.rcpt_tos[0]: m for m in srv.messages}
    first = got["u1@example.org"].message
    assert first["List-Unsubscribe"] == (
        "<mailto:unsubscribe@example.com?subject=unsubscribe>, <https://example.com/u?e=u1%40example.org&c=c7>"
    )
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert got["u2@example.org"].message["List-Unsubscribe"].endswith("<https://example.com/u?e=u2%40example.org&c=c8>")
    assert "Auto-Submitted" not in first
    assert not first.defects


def test_mailto_only_unsubscribe_has_no_one_click_post(workspace, srv, cli):
    _news_route(workspace, srv, unsubscribe={"mailto": "mailto:leave@example.com"}, auto_submitted=True)
    result = _send(cli, "--route", "news")
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    assert received.message["List-Unsubscribe"] == "<mailto:leave@example.com>"
    assert "List-Unsubscribe-Post" not in received.message
    assert received.message["Auto-Submitted"] == "auto-generated"


def test_an_http_url_gets_no_one_click_post(workspace, srv, cli):
    _news_route(workspace, srv, unsubscribe={"url": "http://example.com/u"})
    result = _send(cli, "--route", "news")
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    assert received.message["List-Unsubscribe"] == "<http://example.com/u>"
    assert "List-Unsubscribe-Post" not in received.message


def test_auto_submitted_without_unsubscribe(workspace, srv, cli):
    _news_route(workspace, srv, auto_submitted=True)
    result = _send(cli, "--route", "news")
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    assert received.message["Auto-Submitted"] == "auto-generated"
    assert "List-Unsubscribe" not in received.message


def test_other_routes_get_none_of_it(workspace, srv, cli):
    _news_route(workspace, srv, unsubscribe={"url": "https://example.com/u"}, auto_submitted=True)
    result = _send(cli)
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    assert "List-Unsubscribe" not in received.message and "Auto-Submitted" not in received.message


def test_an_unsubscribe_url_rendering_a_space_names_the_row(workspace, srv, cli):
    _news_route(workspace, srv, unsubscribe={"url": "https://example.com/u?t={{ token }}"})
    data = workspace.csv("rows.csv", [{"email": "u1@example.org", "token": "a b"}])
    result = cli("send", "--route", "news", "--data", data, "--subject", "S", "--body", "B")
    assert result.exit_code == 2
    assert result.stderr == (
        "mailops: error: rows.csv row 1: unsubscribe link 'https://example.com/u?t=a b' holds a space or '<>'; "
        "URL-encode the value (| urlencode) (nothing was sent)\n"
    )
    assert srv.messages == []


# ---------------------------------------------------------------- text from HTML

_HTML = (
    "<html><head><style>p {color: red}</style></head><body><h1>Hello {{ name or recipient }}</h1>"
    '<p>Your plan renews soon. Please <a href="https://example.com/renew?u={{ recipient | urlencode }}">renew here</a>.</p>'
    "<ul><li>one</li><li>two</li></ul><p>Grüße</p></body></html>"
)


def _html_only(workspace, name="promo", text=None):
    folder = workspace.root / "templates" / name
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Renewal", encoding="utf-8")
    (folder / "body.html").write_text(_HTML, encoding="utf-8")
    if text is not None:
        (folder / "body.txt").write_text(text, encoding="utf-8")
    return folder


def _parts(message):
    # get_content() keeps the CRLF line ends of the wire format
    return {
        part.get_content_type(): part.get_content().replace("\r\n", "\n")
        for part in message.walk()
        if not part.is_multipart()
    }


@pytest.mark.parametrize("text", [None, "", "  \n\n"], ids=["no body.txt", "empty body.txt", "blank body.txt"])
def test_html_only_template_gets_a_generated_text_part(workspace, srv, cli, text):
    _config(workspace, srv)
    _html_only(workspace, text=text)
    result = cli("send", "--to", "Jane <jane@example.org>", "--template", "promo")
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    assert received.message.get_content_type() == "multipart/alternative"
    parts = _parts(received.message)
    assert parts["text/plain"] == (
        "Hello Jane\n\nYour plan renews soon. Please renew here "
        "<https://example.com/renew?u=jane%40example.org>.\n\n  * one\n  * two\n\nGrüße\n"
    )
    assert "<p>" in parts["text/html"]
    assert not received.message.defects


def test_a_written_text_part_is_kept(workspace, srv, cli):
    _config(workspace, srv)
    _html_only(workspace, text="My own text for {{ recipient }}\n")
    result = cli("send", "--to", "jane@example.org", "--template", "promo")
    assert result.exit_code == 0, result.stderr
    [received] = srv.messages
    assert _parts(received.message)["text/plain"] == "My own text for jane@example.org\n"


def test_preview_shows_the_generated_text(workspace, srv, cli):
    _config(workspace, srv)
    _html_only(workspace)
    result = cli("send", "--to", "jane@example.org", "--template", "promo", "--dry-run", "--preview", "1")
    assert result.exit_code == 0, result.stderr
    assert "Your plan renews soon. Please renew here <https://example.com/renew?u=jane%40example.org>." in result.stdout
    assert "<p>" not in result.stdout
    assert srv.messages == []


def test_html_only_templates_are_listed_and_checked_by_doctor(workspace, srv, cli):
    _config(workspace, srv)
    _html_only(workspace)
    from mailops.templates import list_templates

    assert list_templates(workspace.root / "templates") == ["promo"]


def test_a_template_with_no_body_at_all_names_both_files(workspace, srv, cli):
    _config(workspace, srv)
    folder = workspace.root / "templates" / "bare"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("S", encoding="utf-8")
    result = cli("send", "--to", "a@example.org", "--template", "bare")
    assert result.exit_code == 2
    templates = workspace.root / "templates"
    assert result.stderr == (
        f"mailops: error: unknown template 'bare'; available templates: (none) (in {templates}); fix --template "
        f"or create {templates / 'bare'}/subject.txt and body.txt (or body.html)\n"
    )
    assert srv.messages == []
