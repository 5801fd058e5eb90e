"""Preparing a send request: checks, recipients, variables, per-row messages and row problems."""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import types
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from mailops.config import Config, parse_config
from mailops.errors import InputError, UsageError
from mailops.prepare import (
    PreparedMessage,
    RowProblem,
    SendRequest,
    check_request,
    parse_vars,
    prepare_messages,
)

NOW = datetime(2024, 5, 1, 23, 30, tzinfo=UTC)  # already 2 May in Bangkok

CONFIG = """
timezone: Asia/Bangkok
senders:
  sales:
    email: sales@example.com
    name: Sales Team
    host: 127.0.0.1
    reply_to: Help Desk <help@example.com>
  plain:
    email: plain@example.org
    host: 127.0.0.1
groups:
  finance-team: ["Fin One <fin1@example.com>", fin2@example.com]
  admins: [root@example.com]
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    templates = tmp_path / "templates"
    renewal = templates / "renewal"
    renewal.mkdir(parents=True)
    (renewal / "subject.txt").write_text("Renewal for {{ name }} due {{ due_date }}\n", encoding="utf-8")
    (renewal / "body.txt").write_text(
        "Hello {{ name }} ({{ recipient }}),\nplan {{ plan }} renews on {{ due_date }}.\n"
        "-- {{ sender.name }} <{{ sender.email }}> [{{ sender.key }}] {{ today }}\n",
        encoding="utf-8",
    )
    (renewal / "body.html").write_text("<p>Hello {{ name }}, plan {{ plan }}</p>\n", encoding="utf-8")
    return parse_config(yaml.safe_load(CONFIG), tmp_path / "senders.yaml")


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def parse(message: PreparedMessage) -> EmailMessage:
    msg = email.message_from_bytes(message.email.mime, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def run(request: SendRequest, config: Config, sender: str = "sales") -> list[PreparedMessage | RowProblem]:
    return list(prepare_messages(request, config, config.senders[sender], now=NOW))


# ---------------------------------------------------------------- parse_vars / check_request


def test_parse_vars() -> None:
    assert parse_vars(["a=1", "url=https://x.example/?q=1", "a=2", " b =", "c= spaced "]) == {
        "a": "2",
        "url": "https://x.example/?q=1",
        "b": "",
        "c": " spaced ",
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("x", "--var 'x': expected KEY=VALUE"),
        ("=1", "--var '=1': expected KEY=VALUE"),
        (
            "due-date=1",
            "--var 'due-date=1': KEY must be a name of letters, digits and '_' that a template can use "
            "(got 'due-date')",
        ),
    ],
)
def test_parse_vars_bad_item(item: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_vars(["ok=1", item])
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"subject": "s", "body": "b"}, "no recipients: pass --to ADDR, --group NAME or --data FILE"),
        (
            {"cc": ["a@example.com"], "subject": "s", "body": "b"},
            "no recipients: pass --to ADDR, --group NAME or --data FILE",
        ),
        (
            {"to": ["a@example.com"], "data_file": Path("c.csv"), "template": "renewal"},
            "--data cannot be combined with --to or --group: the data file names the recipients "
            "(use --cc/--bcc for copies to every message)",
        ),
        (
            {"groups": ["admins"], "data_file": Path("c.csv"), "template": "renewal"},
            "--data cannot be combined with --to or --group: the data file names the recipients "
            "(use --cc/--bcc for copies to every message)",
        ),
        (
            {"to": ["a@example.com"], "template": "renewal", "subject": "s"},
            "--template and --subject cannot be used together: the template has its own subject.txt",
        ),
        (
            {"to": ["a@example.com"], "template": "renewal", "body": "b"},
            "--template and --body/--body-file cannot be used together: the template has its own body",
        ),
        ({"to": ["a@example.com"], "subject": "s"}, "--subject needs --body TEXT or --body-file FILE"),
        ({"to": ["a@example.com"], "body": "b"}, "--body/--body-file needs --subject TEXT"),
        (
            {"to": ["a@example.com"]},
            "no message content: pass --template NAME, or --subject TEXT with --body or --body-file",
        ),
        (
            {"to": ["a@example.com"], "subject": "s", "body": "b", "body_file": Path("b.txt")},
            "--body and --body-file cannot be used together; pick one",
        ),
        (
            {"to": ["a@example.com"], "subject": "s", "body": "b", "to_column": "mail"},
            "--to-column needs --data FILE; remove it or add --data",
        ),
        ({"to": ["a@example.com"], "subject": "s", "body": "b", "limit": 0}, "--limit must be at least 1 (got 0)"),
    ],
)
def test_check_request_contradictions(config: Config, request_args: dict, message: str) -> None:
    with pytest.raises(UsageError) as info:
        check_request(SendRequest(**request_args), config)
    assert str(info.value) == message


def test_check_request_unknown_group(config: Config) -> None:
    request = SendRequest(groups=["finance-teem"], subject="s", body="b")
    with pytest.raises(UsageError) as info:
        check_request(request, config)
    assert str(info.value) == (
        "unknown group 'finance-teem'; did you mean 'finance-team'? known groups: finance-team, admins "
        f"(add it under 'groups:' in {config.path})"
    )


def test_check_request_unknown_template(config: Config) -> None:
    with pytest.raises(UsageError) as info:
        check_request(SendRequest(to=["a@example.com"], template="renewl"), config)
    assert str(info.value) == (
        f"unknown template 'renewl'; available templates: renewal (in {config.templates_dir}); "
        f"fix --template or create {config.templates_dir / 'renewl'}/subject.txt and body.txt (or body.html)"
    )


def test_check_request_accepts_valid(config: Config) -> None:
    check_request(SendRequest(to=["a@example.com"], template="renewal"), config)
    check_request(SendRequest(data_file=Path("x.csv"), to_column="mail", subject="s", body_file=Path("b")), config)


# ---------------------------------------------------------------- one message without --data


def test_single_message_to_people_and_groups(config: Config) -> None:
    request = SendRequest(
        to=["Ann <ann@example.com>", "fin2@EXAMPLE.com"],
        groups=["finance-team"],
        cc=["boss@example.com"],
        bcc=["Audit <audit@example.com>"],
        subject="Report for {{ name }} on {{ today }}",
        body="Hi {{ recipient }}, {{ greeting }} from {{ sender.name }} at {{ now.strftime('%H:%M') }}\n",
        variables={"greeting": "hello"},
    )
    [message] = run(request, config)
    assert isinstance(message, PreparedMessage)
    assert (message.row, message.label, message.template) == (None, "message", None)
    msg = parse(message)
    # fin2 listed by --to and by the group: once
    assert msg["To"] == "Ann <ann@example.com>, fin2@example.com, Fin One <fin1@example.com>"
    assert msg["Cc"] == "boss@example.com"
    assert msg["Bcc"] is None and b"audit" not in message.email.mime
    assert message.email.envelope_to == [
        "ann@example.com",
        "fin2@example.com",
        "fin1@example.com",
        "boss@example.com",
        "audit@example.com",
    ]
    assert msg["From"] == "Sales Team <sales@example.com>"
    assert msg["Reply-To"] == "Help Desk <help@example.com>"
    assert msg["Subject"] == "Report for Ann on 2024-05-02"
    assert text_of(msg) == "Hi ann@example.com, hello from Sales Team at 06:30\n"
    assert msg["Date"] == "Wed, 01 May 2024 23:30:00 +0000"
    assert msg["Message-ID"].endswith("@example.com>")
    assert message.email.message_id == msg["Message-ID"]
    expected_key = hashlib.sha256(
        json.dumps(
            {"recipients": sorted(message.email.envelope_to), "values": {}}, sort_keys=True, ensure_ascii=False
        ).encode()
    ).hexdigest()
    assert message.dedup_key == expected_key


def test_single_message_reply_to_override_and_sender_without_name(config: Config) -> None:
    request = SendRequest(to=["a@example.com"], subject="s", body="b", reply_to="Other <other@example.com>")
    [message] = run(request, config, sender="plain")
    msg = parse(message)
    assert msg["From"] == "plain@example.org"
    assert msg["Reply-To"] == "Other <other@example.com>"
    assert msg["Message-ID"].endswith("@example.org>")
    [message] = run(SendRequest(to=["a@example.com"], subject="s", body="b"), config, sender="plain")
    assert parse(message)["Reply-To"] is None


def test_single_message_template_with_var(config: Config) -> None:
    request = SendRequest(
        to=["Jane <jane@example.com>"], template="renewal", variables={"due_date": "2024-06-01", "plan": "Pro"}
    )
    [message] = run(request, config)
    msg = parse(message)
    assert message.template == "renewal"
    assert msg["Subject"] == "Renewal for Jane due 2024-06-01"
    assert msg.get_content_type() == "multipart/alternative"


def test_single_message_problem_is_yielded(config: Config) -> None:
    request = SendRequest(to=["jane@example.com"], template="renewal", variables={"plan": "Pro"})
    assert run(request, config) == [
        RowProblem(
            row=None,
            label="message",
            message="message: template renewal/subject.txt: variable 'due_date' is not defined; "
            "pass --var due_date=...",
        )
    ]


def test_body_file(config: Config, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text("Grüße {{ name }}\n", encoding="utf-8")
    request = SendRequest(to=["Zoë <z@example.com>"], subject="Hi", body_file=body)
    [message] = run(request, config)
    assert text_of(parse(message)) == "Grüße Zoë\n"
    request.body_file = tmp_path / "missing.txt"
    with pytest.raises(InputError) as info:
        run(request, config)
    assert str(info.value) == f"--body-file {tmp_path / 'missing.txt'}: no such file; check the path"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("to", ["bob@"], "--to: 'bob@' is not a valid email address: There must be something after the @-sign."),
        ("cc", ["x"], "--cc: 'x' is not a valid email address: An email address must have an @-sign."),
        ("bcc", ["y@"], "--bcc: 'y@' is not a valid email address: There must be something after the @-sign."),
        (
            "reply_to",
            "a@b",
            "--reply-to: 'a@b' is not a valid email address: The part after the @-sign is not valid. "
            "It should have a period.",
        ),
    ],
)
def test_bad_command_line_address_raises(config: Config, field: str, value: object, message: str) -> None:
    request = SendRequest(to=["ok@example.com"], subject="s", body="b")
    setattr(request, field, value)
    with pytest.raises(InputError) as info:
        run(request, config)
    assert str(info.value) == message


def test_missing_fixed_attachment_raises(config: Config, tmp_path: Path) -> None:
    request = SendRequest(to=["a@example.com"], subject="s", body="b", attachments=[tmp_path / "nope.pdf"])
    with pytest.raises(InputError) as info:
        run(request, config)
    assert str(info.value) == f"--attach {tmp_path / 'nope.pdf'}: no such file; check the path"


# ---------------------------------------------------------------- mail merge


def test_one_message_per_row(config: Config, tmp_path: Path) -> None:
    data = write_csv(
        tmp_path / "customers.csv",
        "email,name,plan,due_date\n"
        "ann@example.com,Ann,Pro,2024-06-01\n"
        "Bob Builder <bob@example.com>,,Basic,2024-07-01\n",
    )
    request = SendRequest(
        data_file=data, template="renewal", cc=["copy@example.com"], variables={"plan": "IGNORED", "extra": "x"}
    )
    first, second = run(request, config)
    assert isinstance(first, PreparedMessage) and isinstance(second, PreparedMessage)
    assert (first.row, first.label, first.template) == (1, "customers.csv row 1", "renewal")
    msg = parse(first)
    assert msg["To"] == "Ann <ann@example.com>"
    assert msg["Cc"] == "copy@example.com"
    assert msg["Subject"] == "Renewal for Ann due 2024-06-01"
    assert text_of(msg) == (
        "Hello Ann (ann@example.com),\nplan Pro renews on 2024-06-01.\n"
        "-- Sales Team <sales@example.com> [sales] 2024-05-02\n"
    )
    assert first.email.envelope_to == ["ann@example.com", "copy@example.com"]
    # an empty name column: the row's value wins over the name in the email cell
    msg2 = parse(second)
    assert msg2["To"] == "Bob Builder <bob@example.com>"
    assert msg2["Subject"] == "Renewal for  due 2024-07-01"
    assert first.email.message_id != second.email.message_id


def test_html_part_escapes_customer_values(config: Config, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "c.csv", "email,name,plan,due_date\na@example.com,Tom & <b>Jerry</b>,P,d\n")
    [message] = run(SendRequest(data_file=data, template="renewal"), config)
    msg = parse(message)
    html = msg.get_body(preferencelist=("html",))
    assert html is not None
    assert "Tom &amp; &lt;b&gt;Jerry&lt;/b&gt;" in str(html.get_content())
    assert "Hello Tom & <b>Jerry</b> (a@example.com)" in text_of(msg)


def test_to_column_and_missing_column(config: Config, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "customers.csv", "mail,first\na@example.com,Ann\n")
    request = SendRequest(data_file=data, subject="Hi {{ first }}", body="b")
    with pytest.raises(InputError) as info:
        run(request, config)
    assert str(info.value) == (f"{data}: no 'email' column (columns: mail, first); use --to-column to pick another")
    request.to_column = "mail"
    [message] = run(request, config)
    assert parse(message)["Subject"] == "Hi Ann"


def test_row_problems_are_yielded_and_good_rows_still_prepared(config: Config, tmp_path: Path) -> None:
    data = tmp_path / "customers.json"
    rows = [
        {"email": "ok@example.com", "name": "Ok", "plan": "P", "due_date": "d"},
        {"email": "bob@", "name": "Bob", "plan": "P", "due_date": "d"},
        {"email": "", "name": "Empty", "plan": "P", "due_date": "d"},
        {"name": "No email key", "plan": "P", "due_date": "d"},
        {"email": "c@example.com", "name": "Carl", "plan": "P"},
        {"email": "d@example.com", "name": "Dan\r\nBcc: evil@example.com", "plan": "P", "due_date": "d"},
        {"email": "e@example.com", "name": "Eve", "plan": "P", "due_date": "soon\nBcc: evil@example.com"},
        {"email": "f@example.com", "name": "Fay\u0000", "plan": "P", "due_date": "d"},
        {"email": "g@example.com", "name": "Gus", "plan": "P", "due_date": "d", "attachments": "inv/Gus.pdf"},
        {"email": "h@example.com", "name": "Hal", "plan": "P", "due_date": "d"},
    ]
    data.write_text(json.dumps(rows), encoding="utf-8")
    results = run(SendRequest(data_file=data, template="renewal"), config)
    assert [type(r).__name__ for r in results] == [
        "PreparedMessage",
        *["RowProblem"] * 8,
        "PreparedMessage",
    ]
    problems = {r.row: r.message for r in results if isinstance(r, RowProblem)}

    def name_break(char: str) -> str:
        return f"the control character {char!r} is not allowed in a header (subject, name, address); remove it from the value"

    assert problems == {
        2: "customers.json row 2: column 'email': 'bob@' is not a valid email address: "
        "There must be something after the @-sign.",
        3: "customers.json row 3: column 'email' is empty; fill in the recipient's address or remove the row",
        4: "customers.json row 4: column 'email' is empty; fill in the recipient's address or remove the row",
        5: "customers.json row 5: template renewal/subject.txt: variable 'due_date' is not defined; "
        "add a 'due_date' column or pass --var due_date=...",
        6: f"customers.json row 6: column 'name': {name_break(chr(13))}",
        7: "customers.json row 7: 'due_date' holds a line break and the subject (renewal/subject.txt) uses it; "
        "a subject must be one line: remove the line break from 'due_date'",
        8: f"customers.json row 8: column 'name': {name_break(chr(0))}",
        9: f"customers.json row 9: attachment {str(tmp_path / 'inv' / 'Gus.pdf')!r}: no such file; check the path",
    }
    assert all(r.label == f"customers.json row {r.row}" for r in results)


def test_attachments_per_row_and_fixed(config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    (folder / "invoices").mkdir(parents=True)
    (folder / "invoices" / "A-1.pdf").write_bytes(b"%PDF-A1")
    (folder / "invoices" / "B-2.pdf").write_bytes(b"%PDF-B2")
    (folder / "terms.txt").write_bytes(b"terms")
    fixed = tmp_path / "brochure.pdf"
    fixed.write_bytes(b"%PDF-brochure")
    data = write_csv(
        folder / "customers.csv",
        "email,name,invoice,attachments\n"
        "a@example.com,Ann,A-1,invoices/A-1.pdf; terms.txt\n"
        "b@example.com,Bob,B-2,invoices/B-2.pdf\n"
        "c@example.com,Cy,,\n",
    )
    request = SendRequest(data_file=data, subject="Invoice {{ invoice }}", body="b", attachments=[fixed])
    results = run(request, config)
    attached = []
    for result in results:
        assert isinstance(result, PreparedMessage)
        attached.append([(p.get_filename(), p.get_payload(decode=True)) for p in parse(result).iter_attachments()])
    assert attached == [
        [("brochure.pdf", b"%PDF-brochure"), ("A-1.pdf", b"%PDF-A1"), ("terms.txt", b"terms")],
        [("brochure.pdf", b"%PDF-brochure"), ("B-2.pdf", b"%PDF-B2")],
        [("brochure.pdf", b"%PDF-brochure")],
    ]


def test_attachments_as_yaml_list(config: Config, tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"A")
    (tmp_path / "b.pdf").write_bytes(b"B")
    data = tmp_path / "c.yaml"
    data.write_text("- email: a@example.com\n  attachments: [a.pdf, b.pdf]\n", encoding="utf-8")
    [message] = run(SendRequest(data_file=data, subject="s", body="b"), config)
    assert isinstance(message, PreparedMessage)
    assert [p.get_filename() for p in parse(message).iter_attachments()] == ["a.pdf", "b.pdf"]


def test_variable_precedence(config: Config, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "c.csv", "email,today,x\na@example.com,row-today,row-x\n")
    request = SendRequest(
        data_file=data,
        subject="s",
        body="{{ today }}|{{ x }}|{{ y }}|{{ name }}|{{ recipient }}|{{ sender.key }}",
        variables={"today": "var-today", "x": "var-x", "y": "var-y"},
    )
    [message] = run(request, config)
    assert text_of(parse(message)) == "row-today|row-x|var-y||a@example.com|sales\n"


def test_dedup_key_stable_across_runs_and_row_sensitive(config: Config, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "c.csv", "email,amount\na@example.com,10\nb@example.com,10\n")
    request = SendRequest(data_file=data, subject="s", body="b", bcc=["audit@example.com"])
    first_run = run(request, config)
    second_run = run(request, config)
    keys = [m.dedup_key for m in first_run if isinstance(m, PreparedMessage)]
    assert keys == [m.dedup_key for m in second_run if isinstance(m, PreparedMessage)]
    assert len(set(keys)) == 2
    expected = hashlib.sha256(
        json.dumps(
            {
                "recipients": ["a@example.com", "audit@example.com"],
                "values": {"email": "a@example.com", "amount": "10"},
            },
            sort_keys=True,
            ensure_ascii=False,
        ).encode()
    ).hexdigest()
    assert keys[0] == expected
    write_csv(data, "email,amount\na@example.com,11\n")
    [changed] = run(request, config)
    assert isinstance(changed, PreparedMessage) and changed.dedup_key != keys[0]


def test_dedup_key_of_any_row_values_is_the_json_it_always_was() -> None:
    """Keys are stored and compared across versions (a re-run of a --batch): the JSON text must stay the same
    for every value a JSON or YAML row can hold, whatever builds it."""
    from datetime import date

    from mailops.prepare import _dedup_key

    values = {"name": 'Zoë \u2028 "q"', "n": 1, "x": 0.5, "ok": True, "no": None, "l": [1, "ä"], "d": date(2026, 1, 2)}
    payload = json.dumps(
        {"recipients": ["a@example.com", "b@example.com"], "values": values},
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    assert _dedup_key(["b@example.com", "a@example.com"], values) == hashlib.sha256(payload.encode()).hexdigest()


def test_limit_counts_messages_not_problems(config: Config, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "c.csv", "email\nbad@\na@example.com\nb@example.com\nc@example.com\n")
    results = run(SendRequest(data_file=data, subject="s", body="b", limit=2), config)
    assert [(type(r).__name__, r.row) for r in results] == [
        ("RowProblem", 1),
        ("PreparedMessage", 2),
        ("PreparedMessage", 3),
    ]


def test_streams_rows_lazily(config: Config, tmp_path: Path) -> None:
    # Row 3 is malformed: if rows were read up front, nothing would come out before the error.
    data = write_csv(tmp_path / "c.csv", "email,name\na@example.com,A\nb@example.com,B\nc@example.com,C,extra\n")
    request = SendRequest(data_file=data, subject="s", body="b")
    results = prepare_messages(request, config, config.senders["sales"], now=NOW)
    assert isinstance(results, types.GeneratorType)
    assert [next(results).label, next(results).label] == ["c.csv row 1", "c.csv row 2"]
    with pytest.raises(InputError, match=r"c\.csv row 3: 3 fields but the header has 2 columns"):
        next(results)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no data rows; add one row per message (the file is empty or holds only a header)"),
        ("email\n", "no data rows; add one row per message (the file is empty or holds only a header)"),
    ],
)
def test_empty_data_file_raises(config: Config, tmp_path: Path, text: str, message: str) -> None:
    data = write_csv(tmp_path / "customers.csv", text)
    with pytest.raises(InputError) as info:
        run(SendRequest(data_file=data, subject="s", body="b"), config)
    assert str(info.value) == f"{data}: {message}"


def test_missing_data_file_raises(config: Config, tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        run(SendRequest(data_file=tmp_path / "nope.csv", subject="s", body="b"), config)
    assert str(info.value) == f"{tmp_path / 'nope.csv'}: no such file; check the --data path"


def test_non_ascii_merge_round_trips(config: Config, tmp_path: Path) -> None:
    data = write_csv(
        tmp_path / "ลูกค้า.csv",
        "email,name,plan,due_date\nsomchai@example.co.th,สมชาย ใจดี 😀,พรีเมียม,๒๕๖๗\n",
    )
    [message] = run(SendRequest(data_file=data, template="renewal"), config)
    assert isinstance(message, PreparedMessage)
    assert message.label == "ลูกค้า.csv row 1"
    msg = parse(message)
    for part in msg.walk():
        assert list(part.defects) == []
    assert msg["Subject"] == "Renewal for สมชาย ใจดี 😀 due ๒๕๖๗"
    assert message.email.to_header == "สมชาย ใจดี 😀 <somchai@example.co.th>"
    assert "plan พรีเมียม renews" in text_of(msg)
