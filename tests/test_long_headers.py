"""Headers always within the line limits: long words, runs of spaces and long ASCII display names.

RFC 5322 allows at most 998 characters a line (78 recommended); aiosmtpd, like
most servers, answers "500 Line too long" past it. Plain ASCII is folded at its
spaces; what cannot be folded there is sent as RFC 2047 encoded-words, and the
decoded header is what was asked for.
"""

from __future__ import annotations

import email.header
import json

import pytest

from tests.test_compose import build, parse, unfolded_headers

PASSWORD = "s3cret-pass"

LONG_SUBJECTS = {
    "2000 spaces": "a" + " " * 2000 + "b",
    "long word": "Invoice " + "x" * 1500 + " due",
    "word of 100": "See https://example.com/" + "p" * 100 + " today",
    "trailing spaces inside": "Renewal  " + "  ".join(["word"] * 40),
}
LONG_NAMES = {
    "one long word": "N" * 5000,
    "many words": "Customer " * 500 + "Name",
    "run of spaces": "Jane" + " " * 1500 + "Doe",
    "comma and long": "Doe, " + "J" * 300,
}


def decoded(raw_header: bytes) -> str:
    """A header value decoded the RFC 2047 way (CPython's address parser adds spaces between encoded-words)."""
    value = raw_header.split(b":", 1)[1].decode("ascii")
    return str(email.header.make_header(email.header.decode_header(value))).strip()


def header(mime: bytes, name: bytes) -> bytes:
    return next(h for h in unfolded_headers(mime) if h.lower().startswith(name.lower() + b":"))


def assert_line_limits(mime: bytes) -> None:
    head = mime.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    assert max(len(line) for line in lines) <= 78, max(lines, key=len)[:100]


# ---------------------------------------------------------------- composing


@pytest.mark.parametrize("subject", list(LONG_SUBJECTS.values()), ids=list(LONG_SUBJECTS))
def test_long_subjects_fold_or_encode_within_78_characters(subject):
    prepared = build(subject=subject)
    assert_line_limits(prepared.mime)
    assert parse(prepared.mime)["Subject"] == subject


@pytest.mark.parametrize("name", list(LONG_NAMES.values()), ids=list(LONG_NAMES))
def test_long_ascii_display_names_fold_or_encode_within_78_characters(name):
    from mailops.compose import make_address

    prepared = build(to=[make_address(name, "jane@example.com")], from_addr=make_address(name, "sales@example.com"))
    assert_line_limits(prepared.mime)
    for field, addr in ((b"To", "jane@example.com"), (b"From", "sales@example.com")):
        text = decoded(header(prepared.mime, field))
        assert text in (f"{name} <{addr}>", f'"{name}" <{addr}>'), text[:100]
    assert [a.addr_spec for a in parse(prepared.mime)["To"].addresses] == ["jane@example.com"]


def test_ordinary_headers_are_written_as_before():
    prepared = build(subject="Your renewal  for  2026 " + "word " * 20 + "end")
    subject = list(prepared.mime.split(b"\r\n\r\n")[0].split(b"\r\n"))
    start = subject.index(next(line for line in subject if line.startswith(b"Subject:")))
    # folded at spaces, no encoded-words, a double space kept with the word after it
    assert subject[start : start + 2] == [
        b"Subject: Your renewal  for  2026 word word word word word word word word",
        b" word word word word word word word word word word word word end",
    ]
    # two spaces where the line must break: the break goes before them, and unfolding restores both
    subject = "w" * 60 + "   " + "x" * 20
    lines = build(subject=subject).mime.split(b"\r\n\r\n")[0].split(b"\r\n")
    start = lines.index(b"Subject: " + b"w" * 60)
    assert lines[start + 1] == b"   " + b"x" * 20
    assert parse(build(subject=subject).mime)["Subject"] == subject
    assert b"=?" not in prepared.mime


# ---------------------------------------------------------------- end to end through a real server


@pytest.fixture
def setup(workspace, smtp_server):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    sender_name = "Sales " + "S" * 1200
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, name=sender_name)},
        routes={"default": "sales"},
    )
    return workspace, srv, sender_name


def _check_received(received, subject: str, sender_name: str) -> None:
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert received.subject == subject
    assert decoded(header(received.data, b"From")) == f"{sender_name} <sales@example.com>"


def test_long_subject_and_names_from_options_reach_the_server(setup, cli):
    _workspace, srv, sender_name = setup
    subject = LONG_SUBJECTS["2000 spaces"]
    name = "N" * 1900  # an address entry may be 2,000 characters long

    result = cli("send", "--to", f"{name} <jane@example.com>", "--subject", subject, "--body", "B")

    assert result.exit_code == 0, result.output
    [received] = srv.messages
    _check_received(received, subject, sender_name)
    assert decoded(header(received.data, b"To")) == f"{name} <jane@example.com>"


def test_long_data_names_reach_the_server(setup, cli):
    workspace, srv, sender_name = setup
    rows = [{"email": f"c{i}@example.com", "name": name} for i, name in enumerate(LONG_NAMES.values())]
    data = workspace.root / "c.json"
    data.write_text(json.dumps(rows), encoding="utf-8")

    result = cli("send", "--data", data, "--subject", LONG_SUBJECTS["long word"], "--body", "B")

    assert result.exit_code == 0, result.output
    assert len(srv.messages) == len(rows)
    for received in srv.messages:
        row = next(r for r in rows if r["email"] in received.rcpt_tos)
        text = decoded(header(received.data, b"To"))
        assert text in (f"{row['name']} <{row['email']}>", f'"{row["name"]}" <{row["email"]}>'), text[:80]
        _check_received(received, LONG_SUBJECTS["long word"], sender_name)


def test_test_smtp_message_with_a_long_sender_name_reaches_the_server(setup, cli):
    _workspace, srv, sender_name = setup

    result = cli("test-smtp", "sales", "--send-to", "Ops Desk <ops@example.com>")

    assert result.exit_code == 0, result.output
    [received] = srv.messages
    assert received.rcpt_tos == ["ops@example.com"]  # the parsed address
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert decoded(header(received.data, b"From")) == f"{sender_name} <sales@example.com>"


def test_an_address_entry_over_2000_characters_is_refused(setup, cli):
    workspace, srv, _sender_name = setup
    value = "N" * 2000 + " <jane@example.com>"

    result = cli("send", "--to", value, "--subject", "S", "--body", "B")

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "mailops: error: --to: the address is 2,019 characters long; an address with its display name may be at "
        "most 2,000"
    ]
    assert srv.connections == 0
    assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]
