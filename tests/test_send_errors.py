"""Bad input to `mailops send`: one clear line, exit 2, nothing sent, nothing queued."""

from __future__ import annotations

import pytest

PASSWORD = "s3cret-pass"


@pytest.fixture
def setup(workspace, smtp_server):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        groups={"team": ["a@example.com"]},
    )
    workspace.template("renewal", "Renewal {{ date }}\n", "Hello {{ name }}\n")
    return workspace, srv


def _write(workspace, name: str, text: str):
    path = workspace.root / name
    path.write_text(text, encoding="utf-8")
    return path


CASES = {
    "missing variable": (
        "email,name\na@example.com,Ann\n",
        ["--template", "renewal"],
        "c.csv row 1: template renewal/subject.txt: variable 'date' is not defined; add a 'date' column or pass --var date=... (nothing was sent)",
    ),
    "bad address": (
        "email,name,date\nbob@,Bob,1\n",
        ["--template", "renewal"],
        "c.csv row 1: column 'email': 'bob@' is not a valid email address: There must be something after the @-sign. (nothing was sent)",
    ),
    "CR/LF in a name": (
        'email,name,date\na@example.com,"Eve\r\nBcc: x@evil.example",1\n',
        ["--template", "renewal"],
        "c.csv row 1: column 'name': the control character '\\r' is not allowed in a header (subject, name, address); remove it from the value (nothing was sent)",
    ),
    "NUL in a name": (
        "email,name,date\na@example.com,Ev\x00e,1\n",
        ["--template", "renewal"],
        "c.csv row 1: column 'name': the control character '\\x00' is not allowed in a header (subject, name, address); remove it from the value (nothing was sent)",
    ),
    "line break in a subject value": (
        'email,name,date\na@example.com,Ann,"1\nBcc: x@evil.example"\n',
        ["--template", "renewal"],
        "c.csv row 1: 'date' holds a line break and the subject (renewal/subject.txt) uses it; a subject must be one line: remove the line break from 'date' (nothing was sent)",
    ),
    "missing attachment": (
        "email,name,date,attachments\na@example.com,Ann,1,invoices/none.pdf\n",
        ["--template", "renewal"],
        None,  # message names the resolved path; checked below
    ),
    "empty data file": (
        "email,name\n",
        ["--template", "renewal"],
        "c.csv: no data rows; add one row per message (the file is empty or holds only a header)",
    ),
    "no email column": (
        "mail,name\na@example.com,Ann\n",
        ["--template", "renewal"],
        "c.csv: no 'email' column (columns: mail, name); use --to-column to pick another",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_file_exits_2_with_one_line_and_sends_nothing(setup, cli, case):
    workspace, srv = setup
    text, args, expected = CASES[case]
    data = _write(workspace, "c.csv", text)

    result = cli("send", "--data", data, *args)

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if expected is None:
        missing = workspace.root / "invoices" / "none.pdf"
        assert (
            lines[0]
            == f"mailops: error: c.csv row 1: attachment '{missing}': no such file; check the path (nothing was sent)"
        )
    else:
        # whole-file problems name the file as it was given on the command line
        assert lines[0] == f"mailops: error: {expected.replace('c.csv:', f'{data}:')}"
    assert "Traceback" not in result.output
    assert srv.connections == 0 and srv.messages == []
    assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--route", "nope", "--to", "a@example.com"], "--route 'nope': no such route in {cfg}; known routes: default"),
        (
            ["--sender", "nope", "--to", "a@example.com"],
            "--sender 'nope': no such sender in {cfg}; known senders: sales",
        ),
        (["--group", "nope"], "unknown group 'nope'; known groups: team (add it under 'groups:' in {cfg})"),
        (["--to", "x@"], "--to: 'x@' is not a valid email address: There must be something after the @-sign."),
        (["--to", "a@example.com", "--cc", "Jane <jane@>"], None),
    ],
)
def test_unknown_names_exit_2(setup, cli, args, expected):
    workspace, srv = setup

    result = cli("send", *args, "--subject", "S", "--body", "B")

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    if expected:
        assert lines[0] == "mailops: error: " + expected.format(cfg=workspace.config_path)
    else:
        assert lines[0].startswith("mailops: error: --cc: 'Jane <jane@>' is not a valid email address")
    assert srv.connections == 0


def test_half_bad_batch_sends_nothing_and_lists_every_bad_row(setup, cli):
    workspace, srv = setup
    rows = "".join(f"u{i}@example.com,U{i},1\n" if i % 2 else f"bad{i}@,U{i},1\n" for i in range(30))
    data = _write(workspace, "c.csv", "email,name,date\n" + rows)

    result = cli("send", "--data", data, "--template", "renewal")

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        "mailops: error: 15 of 30 rows are invalid, nothing was sent; "
        "fix them or pass --skip-invalid to send only the valid rows"
    )
    assert lines[1].startswith("  c.csv row 1: column 'email': 'bad0@' is not a valid email address")
    assert len(lines) == 1 + 15
    assert srv.connections == 0
    assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]


def test_skip_invalid_sends_the_good_rows_and_reports_the_bad(setup, cli):
    workspace, srv = setup
    data = _write(workspace, "c.csv", "email,name,date\na@example.com,A,1\nbad@,B,1\nc@example.com,C,1\n")

    result = cli("send", "--data", data, "--template", "renewal", "--skip-invalid")

    assert result.exit_code == 1  # not everything requested was done
    assert "1 invalid row(s) skipped:" in result.stderr
    assert "c.csv row 2: column 'email': 'bad@'" in result.stderr
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == ["a@example.com", "c@example.com"]


def test_header_injection_in_subject_option_is_refused(setup, cli):
    _workspace, srv = setup

    result = cli("send", "--to", "a@example.com", "--subject", "Hi\r\nBcc: evil@example.org", "--body", "B")

    assert result.exit_code == 2
    assert "line break" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert srv.connections == 0


def test_bad_var_and_contradicting_options(setup, cli):
    _workspace, srv = setup
    bad_var = cli("send", "--to", "a@example.com", "--subject", "S", "--body", "B", "--var", "novalue")
    both = cli("send", "--to", "a@example.com", "--template", "renewal", "--subject", "S")
    assert bad_var.exit_code == 2 and "--var 'novalue': expected KEY=VALUE" in bad_var.stderr
    assert both.exit_code == 2 and len(both.stderr.strip().splitlines()) == 1
    assert srv.connections == 0


def test_two_senders_sharing_a_password_variable_are_refused_before_anything_is_sent(setup, cli, monkeypatch):
    # sales-eu and sales_eu both read MAILOPS_PASSWORD_SALES_EU: one of them would log in with the other's password.
    workspace, srv = setup
    monkeypatch.setenv("MAILOPS_PASSWORD_SALES_EU", PASSWORD)
    workspace.write_config(
        {
            "sales-eu": workspace.sender(srv, email="sales@example.com", password=None),
            "sales_eu": workspace.sender(srv, email="sales@example.com", password=None),
        },
        routes={"default": "sales-eu"},
    )

    result = cli("send", "--to", "a@example.com", "--subject", "S", "--body", "B")

    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"mailops: error: {workspace.config_path}: senders.sales_eu: takes its password from MAILOPS_PASSWORD_SALES_EU, "
        "as sender 'sales-eu' does (the names differ only in case, '-', '.' or '_'); rename one of them"
    ]
    assert srv.connections == 0 and srv.messages == []
