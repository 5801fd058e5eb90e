"""Composing messages: addresses, header injection, MIME structure, attachments, non-ASCII, failover rewrite."""

from __future__ import annotations

import dataclasses
import email
import email.header
import email.policy
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailops.compose import (
    PreparedEmail,
    build_message,
    check_header_text,
    make_message_id,
    parse_address,
    rewrite_sender,
)
from mailops.errors import InputError

DATE = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def addr(value: str) -> Address:
    return parse_address(value, where="test")


def build(**overrides: Any) -> PreparedEmail:
    args: dict[str, Any] = {
        "from_addr": addr("Sales Team <sales@example.com>"),
        "reply_to": None,
        "to": [addr("Jane Doe <jane@example.com>")],
        "cc": [],
        "bcc": [],
        "subject": "Your renewal",
        "text": "Hello Jane,\n",
        "html": None,
        "attachments": [],
        "message_id": "<1.2.3@example.com>",
        "date": DATE,
        "where": "customers.csv row 1",
    }
    args.update(overrides)
    return build_message(**args)


def parse(mime: bytes) -> EmailMessage:
    msg = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_text(part: EmailMessage) -> str:
    # A 7bit part parsed from CRLF bytes keeps CRLF in its content; compare text with plain newlines.
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def rfc2047_decoded(raw_header: bytes) -> str:
    """Decode a header the RFC 2047 way (whitespace between encoded-words dropped).

    CPython's modern parser inserts a space there in address headers
    (python/cpython#128110), so it cannot judge a folded display name.
    """
    value = raw_header.split(b":", 1)[1].decode("ascii")
    return str(email.header.make_header(email.header.decode_header(value)))


def unfolded_headers(mime: bytes) -> list[bytes]:
    head = mime.split(b"\r\n\r\n", 1)[0]
    return head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t").split(b"\r\n")


def assert_no_defects(msg: EmailMessage) -> None:
    for part in msg.walk():
        assert list(part.defects) == [], (part.get_content_type(), part.defects)
        for value in part.values():  # header-level defects are attached to each parsed header
            assert list(getattr(value, "defects", ())) == [], value


# ---------------------------------------------------------------- addresses


def test_parse_address_forms() -> None:
    assert addr("jane@example.com") == Address("", "jane", "example.com")
    assert addr("Jane Doe <jane@example.com>") == Address("Jane Doe", "jane", "example.com")
    assert addr('"Doe, Jane" <jane@example.com>') == Address("Doe, Jane", "jane", "example.com")
    assert addr("  <jane@example.com> ") == Address("", "jane", "example.com")
    assert addr("Jürgen Müller 😀 <jm@Example.COM>") == Address("Jürgen Müller 😀", "jm", "example.com")
    # an internationalized domain becomes IDNA so every server accepts it
    assert addr("info@bücher.de").addr_spec == "info@xn--bcher-kva.de"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("bob@", "There must be something after the @-sign."),
        ("bob", "An email address must have an @-sign."),
        ("Bob <bob@mailhost>", "The part after the @-sign is not valid. It should have a period."),
        (
            "Bob <bob@x.invalid>",
            "The part after the @-sign is a special-use or reserved name that cannot be used with email.",
        ),
        ("Jane <jane@>", "There must be something after the @-sign."),
    ],
)
def test_parse_address_invalid(value: str, reason: str) -> None:
    with pytest.raises(InputError) as info:
        parse_address(value, where="customers.csv row 3: column 'email'")
    assert str(info.value) == f"customers.csv row 3: column 'email': {value!r} is not a valid email address: {reason}"


NOT_ONE = (
    "is not exactly one address (a second address, text after '>' or an unbalanced quote or bracket); "
    "write it as 'Name <user@example.com>' or 'user@example.com'"
)


# CVE-2023-27043: Python 3.11.7's parseaddr takes the first address of each, other readers the second.
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("alice@example.com <bob@evil.com>", NOT_ONE),
        ("Evil <a@example.com> <b@evil.com>", NOT_ONE),
        ('a@example.com"<b@evil.com>', NOT_ONE),
        ("Jane <jane@example.com> and more", NOT_ONE),
        ("Jane <jane@example.com", NOT_ONE),
        ("team: a@example.com, b@example.com;", NOT_ONE),
        (
            "Jane <@relay.example:jane@example.com>",
            "is not a valid email address: There must be something before the @-sign.",
        ),
        ("a@example.com, b@example.com", "holds more than one address; give each address its own entry"),
        ("a@example.com,", "holds more than one address; give each address its own entry"),
    ],
)
def test_parse_address_refuses_anything_but_one_address(value: str, problem: str) -> None:
    with pytest.raises(InputError) as info:
        parse_address(value, where="senders.yaml: groups.team[0]")
    assert str(info.value) == f"senders.yaml: groups.team[0]: {value!r} {problem}"


def test_parse_address_says_to_quote_a_display_name_with_a_comma() -> None:
    with pytest.raises(InputError) as info:
        parse_address("Müller, Jürgen <jm@example.com>", where="senders.yaml: groups.team[1]")
    assert str(info.value) == (
        "senders.yaml: groups.team[1]: 'Müller, Jürgen <jm@example.com>': a display name with a comma must be "
        "in double quotes; write '\"Müller, Jürgen\" <jm@example.com>'"
    )
    assert addr('"Müller, Jürgen" <jm@example.com>') == Address("Müller, Jürgen", "jm", "example.com")


def test_parse_address_takes_harmless_forms_as_the_header_parser_does() -> None:
    assert addr("J. R. Doe <jane@example.com>") == Address("J. R. Doe", "jane", "example.com")
    assert addr("Jane (Sales) <jane@example.com>") == Address("Jane", "jane", "example.com")
    assert addr("jane@example.com (Jane)") == Address("", "jane", "example.com")
    assert addr('"" <jane@example.com>') == Address("", "jane", "example.com")


def test_parse_address_without_display_name() -> None:
    assert parse_address(" sales@example.com ", where="x", display_name=False).addr_spec == "sales@example.com"
    with pytest.raises(InputError) as info:
        parse_address("Sales <sales@example.com>", where="senders.yaml: senders.s.email", display_name=False)
    assert str(info.value) == (
        "senders.yaml: senders.s.email: 'Sales <sales@example.com>': only the address belongs here; "
        "put the display name under 'name'"
    )


@pytest.mark.parametrize(
    ("value", "char"),
    [
        ("a@example.com\r\nBcc: x@example.com", "\\r"),
        ("Jo\n <a@example.com>", "\\n"),
        ("a@example.com\0", "\\x00"),
        ("Jo\x1b[31m <a@example.com>", "\\x1b"),
    ],
)
def test_parse_address_refuses_control_characters(value: str, char: str) -> None:
    with pytest.raises(InputError) as info:
        parse_address(value, where="--to")
    assert str(info.value) == (
        f"--to: the control character '{char}' is not allowed in a header (subject, name, address); "
        "remove it from the value"
    )


# C0 except TAB, DEL, C1, and the Unicode line and paragraph separators: the one rule for every header value.
FORBIDDEN = [chr(c) for c in [*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0)]] + ["\u2028", "\u2029"]


@pytest.mark.parametrize("char", FORBIDDEN, ids=[f"U+{ord(c):04X}" for c in FORBIDDEN])
def test_check_header_text_refuses_every_control_character(char: str) -> None:
    with pytest.raises(InputError) as info:
        check_header_text(f"Hello{char}World", where="customers.csv row 2: column 'name'")
    assert str(info.value) == (
        f"customers.csv row 2: column 'name': the control character {char!r} is not allowed in a header "
        "(subject, name, address); remove it from the value"
    )


def test_check_header_text_passes_normal_text() -> None:
    assert check_header_text("Grüße 😀\tok", where="x") == "Grüße 😀\tok"


def test_make_message_id_on_domain() -> None:
    first, second = make_message_id("example.com"), make_message_id("example.com")
    assert first.startswith("<") and first.endswith("@example.com>")
    assert first != second


# ---------------------------------------------------------------- structure


def test_text_only_message_headers() -> None:
    prepared = build(reply_to=[addr("Help <help@example.com>")], cc=[addr("boss@example.com")])
    assert b"\r\n" in prepared.mime and b"\n" not in prepared.mime.replace(b"\r\n", b"")
    msg = parse(prepared.mime)
    assert msg.get_content_type() == "text/plain"
    assert msg["From"] == "Sales Team <sales@example.com>"
    assert msg["Reply-To"] == "Help <help@example.com>"
    assert msg["To"] == "Jane Doe <jane@example.com>"
    assert msg["Cc"] == "boss@example.com"
    assert msg["Subject"] == "Your renewal"
    assert msg["Date"] == "Wed, 01 May 2024 09:30:00 +0000"
    assert msg["Message-ID"] == "<1.2.3@example.com>"
    assert msg["MIME-Version"] == "1.0"
    assert body_text(msg) == "Hello Jane,\n"
    assert prepared.envelope_from == "sales@example.com"
    assert prepared.envelope_to == ["jane@example.com", "boss@example.com"]
    assert (prepared.subject, prepared.message_id, prepared.to_header) == (
        "Your renewal",
        "<1.2.3@example.com>",
        "Jane Doe <jane@example.com>",
    )
    assert_no_defects(msg)


def test_bcc_in_envelope_never_in_headers() -> None:
    prepared = build(
        cc=[addr("cc@example.com")],
        bcc=[addr("Secret Person <secret@example.com>"), addr("JANE@example.com")],
    )
    assert b"secret" not in prepared.mime.lower()
    assert b"Bcc" not in prepared.mime
    # deduplicated (case-insensitively), order kept
    assert prepared.envelope_to == ["jane@example.com", "cc@example.com", "secret@example.com"]


def test_bcc_only_gets_undisclosed_recipients() -> None:
    prepared = build(to=[], bcc=[addr("hidden@example.com")])
    msg = parse(prepared.mime)
    assert msg["To"] == "undisclosed-recipients:;"
    assert prepared.envelope_to == ["hidden@example.com"]
    assert b"hidden" not in prepared.mime
    assert_no_defects(msg)


def test_html_gives_multipart_alternative_text_first() -> None:
    msg = parse(build(html="<p>Hello</p>\n").mime)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert body_text(parts[0]) == "Hello Jane,\n"
    assert body_text(parts[1]) == "<p>Hello</p>\n"
    assert all(p["MIME-Version"] is None for p in parts)  # only the top level carries it
    assert_no_defects(msg)


def test_attachments_with_guessed_types(tmp_path: Path) -> None:
    pdf = tmp_path / "invoice.pdf"
    pdf.write_bytes(b"%PDF-1.4 fake")
    csv_file = tmp_path / "data.csv"
    csv_file.write_bytes(b"a,b\n1,2\n")
    unknown = tmp_path / "blob.zzq"
    unknown.write_bytes(b"\x00\x01\x02")
    archive = tmp_path / "logs.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    msg = parse(build(html="<p>Hi</p>", attachments=[pdf, csv_file, unknown, archive]).mime)
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_parts())
    assert parts[0].get_content_type() == "multipart/alternative"
    assert [(p.get_content_type(), p.get_filename(), p.get_payload(decode=True)) for p in parts[1:]] == [
        ("application/pdf", "invoice.pdf", b"%PDF-1.4 fake"),
        ("text/csv", "data.csv", b"a,b\n1,2\n"),
        ("application/octet-stream", "blob.zzq", b"\x00\x01\x02"),
        ("application/octet-stream", "logs.tar.gz", b"\x1f\x8b"),
    ]
    assert all(p.get_content_disposition() == "attachment" for p in parts[1:])
    assert_no_defects(msg)


def test_missing_attachment_names_path_and_where(tmp_path: Path) -> None:
    missing = tmp_path / "invoices" / "A-17.pdf"
    with pytest.raises(InputError) as info:
        build(attachments=[missing])
    assert str(info.value) == f"customers.csv row 1: attachment {str(missing)!r}: no such file; check the path"
    with pytest.raises(InputError) as info:
        build(attachments=[tmp_path])
    assert str(info.value) == (
        f"customers.csv row 1: attachment {str(tmp_path)!r}: is a folder, not a file; attach files one by one"
    )


def test_subject_with_line_break_refused() -> None:
    for subject, char in (("Hi\r\nBcc: evil@example.com", "\\r"), ("Hi\0", "\\x00"), ("Hi\x1b]0;owned\x07", "\\x1b")):
        with pytest.raises(InputError) as info:
            build(subject=subject)
        assert str(info.value) == (
            f"customers.csv row 1: subject: the control character '{char}' is not allowed in a header "
            "(subject, name, address); remove it from the value"
        )


def test_non_ascii_everywhere_round_trips_without_defects(tmp_path: Path) -> None:
    attachment = tmp_path / "Rechnung Müller สวัสดี 😀.pdf"
    attachment.write_bytes(b"%PDF-1.4")
    long_subject = "Grüße aus München – สวัสดีครับ 😀 " + "Verlängerung " * 8
    text = "Hallo Jürgen,\nสวัสดีครับ คุณสมชาย\nEmoji: 😀🎉\n" + "ä" * 200 + "\n"
    html = "<p>Hallo Jürgen – สวัสดี 😀</p>\n"
    prepared = build(
        from_addr=addr("Vertrieb Ümlaut 😀 <sales@bücher.de>"),
        reply_to=[addr('"Support, Thai ฝ่ายบริการ" <help@example.com>')],
        to=[addr("สมชาย ใจดี <somchai@example.co.th>"), addr("Jürgen Groß <jg@example.de>")],
        cc=[addr("Zoë 🎉 <zoe@example.com>")],
        subject=long_subject.strip(),
        text=text,
        html=html,
        attachments=[attachment],
    )
    prepared.mime.decode("ascii")  # 7-bit clean: no server needs 8BITMIME or SMTPUTF8
    assert all(len(line) <= 998 for line in prepared.mime.split(b"\r\n"))
    msg = parse(prepared.mime)
    assert_no_defects(msg)
    assert msg["From"].addresses == (Address("Vertrieb Ümlaut 😀", "sales", "xn--bcher-kva.de"),)
    # long enough to be folded into two encoded-words
    reply_to_raw = next(h for h in unfolded_headers(prepared.mime) if h.startswith(b"Reply-To:"))
    assert b"?= =?" in reply_to_raw
    assert rfc2047_decoded(reply_to_raw) == "Support, Thai ฝ่ายบริการ <help@example.com>"
    assert msg["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert msg["To"].addresses == (
        Address("สมชาย ใจดี", "somchai", "example.co.th"),
        Address("Jürgen Groß", "jg", "example.de"),
    )
    assert msg["Cc"].addresses == (Address("Zoë 🎉", "zoe", "example.com"),)
    assert msg["Subject"] == long_subject.strip()
    alternative, attached = list(msg.iter_parts())
    plain, rich = list(alternative.iter_parts())
    assert body_text(plain) == text
    assert body_text(rich) == html
    assert attached.get_filename() == "Rechnung Müller สวัสดี 😀.pdf"
    assert prepared.to_header == "สมชาย ใจดี <somchai@example.co.th>, Jürgen Groß <jg@example.de>"


# Each of these lost a space (or its quotes) when folded by Python 3.11's own header folder.
TRICKY_SUBJECTS = [
    "Grüße aus München – สวัสดีครับ 😀 " + "Verlängerung " * 7 + "Verlängerung",
    "the ทดสอบ 日本語 Verlängerung 日本語 Grüße – the Müller",
    "สวัสดีครับ the 2024-05 – Invoice テスト Invoice renewal Zoë 2024-05 สวัสดีครับ สวัสดีครับ",
    "Price =?utf-8?q?looks_encoded?= but is plain text",
    "a " * 60 + "ä",
]
TRICKY_NAMES = [
    "Zoë สวัสดีครับ テスト Müller Straße",
    "Doe, Jane Alexandra Katharina Elisabeth Maria Theresia Ottilie von Habsburg",
    "ฝ่ายบริการลูกค้า บริษัท ตัวอย่าง จำกัด (มหาชน) สำนักงานใหญ่ กรุงเทพมหานคร",
    "=?utf-8?q?Admin?=",
]


@pytest.mark.parametrize("subject", TRICKY_SUBJECTS)
def test_long_non_ascii_subject_keeps_every_space(subject: str) -> None:
    prepared = build(subject=subject)
    raw = next(h for h in unfolded_headers(prepared.mime) if h.startswith(b"Subject:"))
    assert rfc2047_decoded(raw).strip() == subject
    msg = parse(prepared.mime)
    assert msg["Subject"] == subject  # unstructured headers decode correctly in CPython too
    assert_no_defects(msg)
    head = prepared.mime.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_long_display_names_keep_spaces_and_quotes(name: str) -> None:
    to = [addr("first@example.com"), Address(name, "jane", "example.com"), addr("last@example.com")]
    prepared = build(to=to, cc=[Address(name, "cc", "example.com")])
    msg = parse(prepared.mime)
    assert_no_defects(msg)
    assert [a.addr_spec for a in msg["To"].addresses] == ["first@example.com", "jane@example.com", "last@example.com"]
    head = prepared.mime.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    raw_cc = next(h for h in unfolded_headers(prepared.mime) if h.startswith(b"Cc:"))
    decoded = rfc2047_decoded(raw_cc).strip()
    if name.isascii() and "=?" not in name:
        assert msg["Cc"].addresses == (Address(name, "cc", "example.com"),)
    else:
        assert decoded == f"{name} <cc@example.com>"
    assert prepared.to_header == ", ".join(str(a) for a in to)


def test_naive_date_is_treated_as_utc() -> None:
    msg = parse(build(date=datetime(2024, 5, 1, 9, 30)).mime)
    assert msg["Date"] == "Wed, 01 May 2024 09:30:00 +0000"


# ---------------------------------------------------------------- failover rewrite


def test_rewrite_sender_keeps_everything_but_from_and_reply_to(tmp_path: Path) -> None:
    attachment = tmp_path / "a.pdf"
    attachment.write_bytes(b"%PDF")
    original = build(reply_to=[addr("Help <help@example.com>")], html="<p>x</p>", attachments=[attachment]).mime
    rewritten = rewrite_sender(
        original,
        from_addr=addr("Backup Sënder <backup@example.org>"),
        reply_to=[addr("support@example.org")],
        envelope_from="backup@example.org",
    )
    before, after = parse(original), parse(rewritten)
    assert after["From"].addresses == (Address("Backup Sënder", "backup", "example.org"),)
    assert after["Reply-To"] == "support@example.org"
    assert after["Sender"] is None
    assert after["Message-ID"] == before["Message-ID"] == "<1.2.3@example.com>"
    # every other header line and the whole body are byte-identical
    head_before, body_before = original.split(b"\r\n\r\n", 1)
    head_after, body_after = rewritten.split(b"\r\n\r\n", 1)
    assert body_after == body_before
    keep = [line for line in head_before.split(b"\r\n") if not line.startswith((b"From:", b"Reply-To:"))]
    changed = [line for line in head_after.split(b"\r\n") if not line.startswith((b"From:", b"Reply-To:"))]
    assert keep == changed
    assert head_after.split(b"\r\n")[:2] == [
        b"From: =?utf-8?q?Backup_S=C3=ABnder?= <backup@example.org>",
        b"Reply-To: support@example.org",
    ]
    assert_no_defects(after)


def test_rewrite_sender_without_reply_to_keeps_the_old_one() -> None:
    original = build(reply_to=[addr("Help <help@example.com>")]).mime
    rewritten = rewrite_sender(
        original, from_addr=addr("backup@example.org"), reply_to=None, envelope_from="backup@example.org"
    )
    after = parse(rewritten)
    assert after["From"] == "backup@example.org"
    assert after["Reply-To"] == "Help <help@example.com>"


def test_rewrite_sender_adds_reply_to_and_sender_when_missing() -> None:
    original = build().mime
    rewritten = rewrite_sender(
        original,
        from_addr=addr("Sales <sales@example.org>"),
        reply_to=[addr("help@example.org")],
        envelope_from="relay@example.org",
    )
    lines = rewritten.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert lines[:3] == [
        b"From: Sales <sales@example.org>",
        b"Reply-To: help@example.org",
        b"Sender: relay@example.org",
    ]
    assert parse(rewritten)["Message-ID"] == "<1.2.3@example.com>"
    # rewriting again replaces rather than repeats, and a matching envelope drops the stale Sender
    again = rewrite_sender(
        rewritten, from_addr=addr("x@example.net"), reply_to=[addr("y@example.net")], envelope_from="x@example.net"
    )
    parsed = parse(again)
    assert parsed.get_all("From") == ["x@example.net"]
    assert parsed.get_all("Reply-To") == ["y@example.net"]
    assert parsed["Sender"] is None


# ---------------------------------------------------------------- text-only fast path

_PIECES = [
    "Hello",
    "Grüße",
    "สวัสดี",
    "😀",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    "From me",
    ".",
    "=",
    "=?utf-8?q?x?=",
    "x" * 77,
    "y" * 79,
    "é" * 40,
    "trailing  \n",
    "\x0b",
    "\x0c",
    "\u2028",
    "a=b\n",
    "-- \n",
]


def _random_texts(count: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    texts = ["", "\n", "plain ascii\n", "no newline at end", "x" * 500, "ü" * 500, "line\n" * 30, "é\n" * 30]
    for _ in range(count):
        texts.append("".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 40))))
    return texts


def test_text_only_fast_path_writes_exactly_what_the_email_package_writes() -> None:
    from mailops import compose

    checked = 0
    for index, text in enumerate(_random_texts(400, seed=20261123)):
        extra: dict[str, Any] = {}
        if index % 3 == 1:
            extra = {"reply_to": [addr("Zoë Müller <zoe@example.com>")], "cc": [addr("cc@example.com")]}
        fast = build(text=text, subject=TRICKY_SUBJECTS[index % len(TRICKY_SUBJECTS)], **extra)
        fields = unfolded_fields(fast.mime)
        headers = [
            (line.split(": ", 1)[0], compose._Folded(line.split(": ", 1)[1].replace("\r\n", "\n")))
            for line in fields[: fields.index('Content-Type: text/plain; charset="utf-8"')]
        ]
        reference, _ = compose._mime_message(headers, text, None, [], "test")
        assert fast.mime == reference, text
        checked += 1
    assert checked > 400


def unfolded_fields(mime: bytes) -> list[str]:
    """Header fields with their continuation lines kept (CRLF inside), in order."""
    head = mime.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields: list[str] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[-1] += "\r\n" + line
        else:
            fields.append(line)
    return fields


def test_one_builder_for_many_messages_writes_what_build_message_writes(tmp_path: Path) -> None:
    """MessageBuilder encodes From, Reply-To, Cc, Bcc and Date once for a run; every message it builds is byte
    for byte the one build_message builds from the same arguments (which rebuilds them each time)."""
    from mailops.compose import MessageBuilder

    brochure = tmp_path / "brochure.pdf"
    brochure.write_bytes(b"%PDF-1.4 " * 50)
    shared: dict[str, Any] = {
        "from_addr": addr('"Vertrieb, Müller GmbH" <vertrieb@example.com>'),
        "reply_to": [addr("Support <support@example.com>")],
        "cc": [addr("Jürgen Groß <juergen@example.com>"), addr("jane@example.com")],
        "bcc": [addr("audit@example.com"), addr("JANE@example.com")],
        "date": datetime(2024, 5, 1, 9, 30),  # naive: taken as UTC, once
    }
    builder = MessageBuilder(**shared)
    messages: list[dict[str, Any]] = [
        {"to": [addr("Jane Doe <jane@example.com>")], "subject": "Your renewal", "text": "Hi\n", "html": None},
        {"to": [addr("Zoë <zoe@example.org>")], "subject": "Verlängerung " * 9, "text": "Grüße\n", "html": "<p>x</p>"},
        {"to": [], "subject": "Copies only", "text": "x" * 200, "html": None, "attachments": [brochure]},
    ]
    for index, message in enumerate(messages):
        args = {"attachments": [], "message_id": f"<{index}@example.com>", "where": f"row {index}", **message}
        args["extra_headers"] = [("X-Campaign", f"spring {index}")]
        built = builder.build(**args)
        expected = build_message(**shared, **args)
        boundary, got_boundary = parse(expected.mime).get_boundary(), parse(built.mime).get_boundary()
        if boundary is not None and got_boundary is not None:  # multipart: the boundary is random each time
            built = dataclasses.replace(
                built, skeleton=built.skeleton.replace(got_boundary.encode(), boundary.encode())
            )
        assert built.mime == expected.mime
        assert (built.envelope_from, built.envelope_to, built.to_header) == (
            expected.envelope_from,
            expected.envelope_to,
            expected.to_header,
        )
    assert built.envelope_to == ["juergen@example.com", "jane@example.com", "audit@example.com"]


def test_short_plain_headers_skip_the_folder_and_come_out_the_same() -> None:
    """A plain ASCII subject or one address that fits the first line is written as it is, without the
    folder; the folder gives the very same text for it. Checked against folding everything, as before."""
    import random

    from mailops.compose import (
        _add_address,
        _add_address_encoding_long_names,
        _address_value,
        _fits,
        _HeaderFolder,
        _needs_encoding,
        _text_value,
        make_address,
    )

    def folded_text(name: str, text: str, encode_long: bool) -> str:
        if not _needs_encoding(text):
            folder = _HeaderFolder(name)
            folder.add_text(text)
            if _fits(name, folder.value()) or not encode_long:
                return folder.value()
        folder = _HeaderFolder(name)
        folder.add_words(text)
        return folder.value()

    def folded_address(name: str, address: Address) -> str:
        folder = _HeaderFolder(name)
        _add_address(folder, address, "")
        if _fits(name, folder.value()):
            return folder.value()
        folder = _HeaderFolder(name)
        _add_address_encoding_long_names(folder, address, "")
        return folder.value()

    rng = random.Random(17)
    words = ["a", "renewal", "Doe,", "=?", "x" * 30, "", " ", "plan", "2026-12-01", "(c)", '"q"', "Grüße"]
    texts = ["", " ", "  lead", "trail  ", "a  b", "x" * 66, "x" * 67, "x" * 68, "x" * 69, "x" * 70, "x" * 80]
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(500)]
    for name in ("Subject", "X-Campaign", "To"):
        for text in texts:
            for encode_long in (True, False):
                assert _text_value(name, text, encode_long=encode_long) == folded_text(name, text, encode_long)
    names = ["", "Jane Doe", "Doe, Jane", "Zoë", "J. R. R.", "x" * 55, "x" * 80, "a  b", '"quoted"', "=?x?=", " "]
    names += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(200)]
    for display in names:
        for local in ("jane", "j" * 40):
            address = make_address(display, f"{local}@example.com")
            assert _address_value("To", [address]) == folded_address("To", address), (display, local)
            assert _address_value("To", [address], [str(address)]) == folded_address("To", address)
