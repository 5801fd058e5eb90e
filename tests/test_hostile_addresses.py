"""Hostile addresses and header values end to end: one line, exit 2, nothing sent; what passes is what is sent.

The address cases are CVE-2023-27043: Python 3.11.7's ``email.utils.parseaddr``
reads ``alice@example.com <bob@evil.com>`` as alice@, the message's own To
header as bob@. mailops has one strict parser for the config, ``doctor``,
``send`` options, groups and data files.
"""

from __future__ import annotations

import pytest
import yaml

PASSWORD = "s3cret-pass"

NOT_ONE = (
    "is not exactly one address (a second address, text after '>' or an unbalanced quote or bracket); "
    "write it as 'Name <user@example.com>' or 'user@example.com'"
)
HOSTILE = ["alice@example.com <bob@evil.com>", "Evil <a@example.com> <b@evil.com>", 'a@example.com"<b@evil.com>']


@pytest.fixture
def setup(workspace, smtp_server):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
    )
    return workspace, srv


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _nothing_sent(workspace, srv) -> None:
    assert srv.connections == 0 and srv.messages == []
    if workspace.query("SELECT name FROM sqlite_master WHERE name = 'messages'"):  # a config error stops earlier
        assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("option", ["--to", "--cc", "--bcc", "--reply-to"])
def test_send_option_with_more_than_one_address_is_refused(setup, cli, option, value):
    workspace, srv = setup
    to = [] if option == "--to" else ["--to", "ok@example.com"]

    result = cli("send", *to, option, value, "--subject", "S", "--body", "B")

    assert _one_error_line(result) == f"mailops: error: {option}: {value!r} {NOT_ONE}"
    _nothing_sent(workspace, srv)


@pytest.mark.parametrize("value", HOSTILE)
def test_data_file_email_with_more_than_one_address_is_refused(setup, cli, value):
    workspace, srv = setup
    data = workspace.root / "c.yaml"
    data.write_text(yaml.safe_dump([{"email": "ok@example.com"}, {"email": value}]), encoding="utf-8")

    result = cli("send", "--data", data, "--subject", "S", "--body", "B")

    assert _one_error_line(result) == (
        f"mailops: error: c.yaml row 2: column 'email': {value!r} {NOT_ONE} (nothing was sent)"
    )
    _nothing_sent(workspace, srv)


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("command", [["send", "--group", "team", "--subject", "S", "--body", "B"], ["doctor"]])
def test_config_refuses_a_group_entry_that_send_would_read_differently(setup, cli, command, value):
    workspace, srv = setup
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        groups={"team": ["ok@example.com", value]},
    )

    result = cli(*command)

    assert _one_error_line(result) == f"mailops: error: {workspace.config_path}: groups.team[1]: {value!r} {NOT_ONE}"
    _nothing_sent(workspace, srv)


def test_group_entry_with_an_unquoted_comma_says_to_quote_the_name(setup, cli):
    workspace, srv = setup
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        groups={"team": ["Müller, Jürgen <jm@example.com>"]},
    )

    result = cli("send", "--group", "team", "--subject", "S", "--body", "B")

    assert _one_error_line(result) == (
        f"mailops: error: {workspace.config_path}: groups.team[0]: 'Müller, Jürgen <jm@example.com>': a display "
        "name with a comma must be in double quotes; write '\"Müller, Jürgen\" <jm@example.com>'"
    )
    _nothing_sent(workspace, srv)


@pytest.mark.parametrize("option", ["--to", "--cc", "--bcc", "--reply-to"])
def test_an_unquoted_comma_in_a_display_name_on_the_command_line_says_to_quote_it(setup, cli, option):
    workspace, srv = setup
    to = [] if option == "--to" else ["--to", "ok@example.com"]

    result = cli("send", *to, option, "Müller, Jürgen <jm@example.com>", "--subject", "S", "--body", "B")

    assert _one_error_line(result) == (
        f"mailops: error: {option}: 'Müller, Jürgen <jm@example.com>': a display name with a comma must be in "
        "double quotes; write '\"Müller, Jürgen\" <jm@example.com>'"
    )
    _nothing_sent(workspace, srv)


def test_what_the_config_accepts_is_exactly_what_is_sent(setup, cli):
    workspace, srv = setup
    members = [
        '"Müller, Jürgen" <jm@example.com>',
        "J. R. Doe <jrd@example.com>",
        "Ann (Sales) <ann@example.com>",
        "bob@Example.COM",
    ]
    workspace.write_config(
        {
            "sales": workspace.sender(
                srv, email="sales@example.com", password=PASSWORD, reply_to="Desk <desk@example.com>"
            )
        },
        routes={"default": "sales"},
        groups={"team": members},
    )

    result = cli("send", "--group", "team", "--subject", "S", "--body", "B")

    assert result.exit_code == 0, result.output
    [received] = srv.messages
    expected = ["jm@example.com", "jrd@example.com", "ann@example.com", "bob@example.com"]
    assert received.rcpt_tos == expected
    assert [a.addr_spec for a in received.message["To"].addresses] == expected
    assert [a.display_name for a in received.message["To"].addresses] == ["Müller, Jürgen", "J. R. Doe", "Ann", ""]
    assert [a.addr_spec for a in received.message["Reply-To"].addresses] == ["desk@example.com"]


# ---------------------------------------------------------------- control characters in header values

CONTROL = "is not allowed in a header (subject, name, address); remove it from the value"


@pytest.mark.parametrize(
    ("args", "where", "char"),
    [
        (["--to", "a@example.com", "--subject", "Hi \x1b[2J", "--body", "B"], "message: subject", "\\x1b"),
        (["--to", "a@example.com", "--subject", "Ding\x07", "--body", "B"], "message: subject", "\\x07"),
        (["--to", "Eve\x9b <a@example.com>", "--subject", "S", "--body", "B"], "--to", "\\x9b"),
        (
            ["--to", "a@example.com", "--reply-to", "Desk\x7f <d@example.com>", "--subject", "S", "--body", "B"],
            "--reply-to",
            "\\x7f",
        ),
    ],
)
def test_control_characters_in_options_are_refused(setup, cli, args, where, char):
    workspace, srv = setup

    result = cli("send", *args)

    line = _one_error_line(result)
    suffix = " (nothing was sent)" if where.startswith("message") else ""
    assert line == f"mailops: error: {where}: the control character '{char}' {CONTROL}{suffix}"
    _nothing_sent(workspace, srv)


@pytest.mark.parametrize(
    ("name", "char"), [("Eve\x1b]0;owned\x07", "\\x1b"), ("Bell\x07", "\\x07"), ("V\x0btab", "\\x0b")]
)
def test_control_characters_in_a_data_name_are_refused(setup, cli, name, char):
    workspace, srv = setup
    data = workspace.root / "c.json"
    data.write_text(json_dumps([{"email": "a@example.com", "name": name}]), encoding="utf-8")

    result = cli("send", "--data", data, "--subject", "S", "--body", "B")

    assert _one_error_line(result) == (
        f"mailops: error: c.json row 1: column 'name': the control character '{char}' {CONTROL} (nothing was sent)"
    )
    _nothing_sent(workspace, srv)


@pytest.mark.parametrize("key", ["name", "reply_to"])
def test_control_characters_in_a_sender_setting_are_refused(setup, cli, key):
    workspace, srv = setup
    value = "Sales\x1c" if key == "name" else "Sales\x1c <desk@example.com>"
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, **{key: value})},
        routes={"default": "sales"},
    )

    result = cli("send", "--to", "a@example.com", "--subject", "S", "--body", "B")

    assert _one_error_line(result) == (
        f"mailops: error: {workspace.config_path}: senders.sales.{key}: the control character '\\x1c' {CONTROL}"
    )
    _nothing_sent(workspace, srv)


def json_dumps(value):
    import json

    return json.dumps(value)


# ---------------------------------------------------------------- what the database holds, on a terminal

HOSTILE_REPLY = "550 5.1.1 \x1b[2J\x1b]0;owned\x07 no such user"


def test_database_text_is_escaped_in_tables_and_kept_in_json(setup, cli):
    import json

    workspace, srv = setup
    srv.rcpt_hook = lambda addr: HOSTILE_REPLY
    assert cli("send", "--to", "gone@example.com", "--subject", "S", "--body", "B").exit_code == 1
    # a subject stored by an older mailops, before control characters were refused
    workspace.query("UPDATE messages SET subject = ?", "Hi \x1b[31mred\x9b [bold]x[/bold]")
    workspace.query("UPDATE attempts SET subject = ?", "Hi \x1b[31mred\x9b [bold]x[/bold]")
    # and a server's reply kept as the sender's last error
    workspace.query("DELETE FROM sender_state WHERE sender = 'sales'")
    workspace.query(
        "INSERT INTO sender_state (sender, healthy, checked_at, last_error) VALUES ('sales', 0, 1, ?)", HOSTILE_REPLY
    )

    outputs = {
        "log": cli("log"),
        "queue list": cli("queue", "list"),
        "queue show": cli("queue", "show", "1"),
        "stats": cli("stats"),
    }
    for command, result in outputs.items():
        assert result.exit_code == 0, (command, result.output)
        assert not any(ch in result.stdout for ch in "\x1b\x07\x9b"), command
        assert "\\x1b" in result.stdout, (command, result.stdout)
    for command in ("log", "queue list"):
        assert "Hi \\x1b[31mred\\x9b [bold]x[/bold]" in outputs[command].stdout.replace("\n", ""), command
    assert "\\x1b[2J\\x1b]0;owned\\x07 no such user" in outputs["queue show"].stdout

    [row] = json.loads(cli("log", "--json").stdout)
    assert row["subject"] == "Hi \x1b[31mred\x9b [bold]x[/bold]"
    assert HOSTILE_REPLY.split(" ", 1)[1] in row["smtp_text"]
    raw_json = cli("queue", "list", "--json").stdout
    assert not any(ch in raw_json for ch in "\x1b\x07\x9b")
    assert json.loads(raw_json)["messages"][0]["subject"] == "Hi \x1b[31mred\x9b [bold]x[/bold]"


# ---------------------------------------------------------------- non-text header values from JSON and YAML


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("c.json", '[{"email": "a@example.com", "name": ["x", "y"]}]', "column 'name' must be text, not a list"),
        ("c.json", '[{"email": "a@example.com", "name": true}]', "column 'name' must be text, not true/false"),
        ("c.json", '[{"email": 42, "name": "Ann"}]', "column 'email' must be text, not a number"),
        ("c.json", '[{"email": ["a@example.com"]}]', "column 'email' must be text, not a list"),
        ("c.yaml", "- email: a@example.com\n  name: {first: Ann}\n", "column 'name' must be text, not a mapping"),
        ("c.yaml", "- email: a@example.com\n  name: 3.5\n", "column 'name' must be text, not a number"),
    ],
)
def test_non_text_header_values_from_json_and_yaml_are_refused(setup, cli, file, text, expected):
    workspace, srv = setup
    data = workspace.root / file
    data.write_text(text, encoding="utf-8")

    result = cli("send", "--data", data, "--subject", "S", "--body", "B")

    assert _one_error_line(result) == (
        f"mailops: error: {file} row 1: {expected}; write the value in quotes as one string (nothing was sent)"
    )
    _nothing_sent(workspace, srv)
