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


def test_what_the_config_accepts_is_exactly_what_is_sent(setup, cli):
    workspace, srv = setup
    members = ['"Müller, Jürgen" <jm@example.com>', "J. R. Doe <jrd@example.com>", "Ann (Sales) <ann@example.com>",
               "bob@Example.COM"]
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, reply_to="Desk <desk@example.com>")},
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
