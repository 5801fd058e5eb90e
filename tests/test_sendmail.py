"""``mailops sendmail``: real processes fed real messages (cron, mailx -t, a mutt-style MIME mail) on stdin.

Each test checks what the aiosmtpd server received, the outbox and log rows,
and the exit code (sysexits.h codes for bad input; 0 once the message is
queued, also when the server is down).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.fixtures_cli import CliResult, log_json, mailops_command

PASSWORD = "s3cret-pass"


def sendmail(*args: str, stdin: bytes, argv0: list[str] | None = None) -> CliResult:
    """Run ``mailops sendmail ARGS`` as a real process with ``stdin`` as its input."""
    command = [*argv0, *args] if argv0 else mailops_command("sendmail", *args)
    proc = subprocess.run(command, input=stdin, capture_output=True, timeout=120, env=dict(os.environ))
    return CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD, "finance@example.com": PASSWORD})


def _config(workspace, srv, *, port=None, **top):
    sales = workspace.sender(srv, email="sales@example.com", password=PASSWORD, name="Sales Team")
    finance = workspace.sender(srv, email="finance@example.com", password=PASSWORD)
    if port is not None:
        sales["port"] = finance["port"] = port
    workspace.write_config(
        {"sales": sales, "finance": finance}, routes={"default": "sales", "billing": "finance"}, **top
    )


def _head_and_body(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


CRON_MAIL = (
    b"From: root (Cron Daemon)\n"
    b"To: root\n"
    b"Subject: Cron <root@web1> /usr/local/bin/backup.sh\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: text/plain; charset="ANSI_X3.4-1968"\n'
    b"Content-Transfer-Encoding: 8bit\n"
    b"X-Cron-Env: <SHELL=/bin/sh>\n"
    b"\n"
    b"backup started\n"
    b".\n"
    b"backup done: 42 files\n"
)


def test_cron_mail_is_sent_with_its_own_headers_and_a_rewritten_from(workspace, srv, cli):
    _config(workspace, srv)
    # what cron (cronie / vixie cron) runs: sendmail -FCronDaemon -i -B8BITMIME -oem ADDR
    result = sendmail("-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@example.org", stdin=CRON_MAIL)

    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert len(srv.messages) == 1
    got = srv.messages[0]
    assert (got.mail_from, got.rcpt_tos) == ("sales@example.com", ["ops@example.org"])
    msg = got.message
    assert msg["From"] == "CronDaemon <sales@example.com>"
    assert msg["To"] == "root"
    assert msg["Subject"] == "Cron <root@web1> /usr/local/bin/backup.sh"
    assert msg["X-Cron-Env"] == "<SHELL=/bin/sh>"
    assert msg["Date"] is not None
    assert msg["Message-ID"].endswith("@example.com>")
    # -i: the line holding only "." is part of the body, which arrives byte for byte
    assert _head_and_body(got.data)[1] == b"backup started\r\n.\r\nbackup done: 42 files\r\n"

    rows = log_json(cli)
    assert [(r["outcome"], r["route"], r["sender"], r["recipients"]) for r in rows] == [
        ("sent", "default", "sales", ["ops@example.org"])
    ]
    assert rows[0]["message_id"] == msg["Message-ID"]
    # the From rewrite is shown with the message's log rows
    assert rows[0]["note"] == (
        "From 'root (Cron Daemon)' rewritten to sales@example.com: sender sales of route default sends only as "
        "its own address"
    )
    assert workspace.states() == {"sent": 1}
    events = workspace.query("SELECT kind, detail FROM events")
    assert events == [
        (
            "sendmail",
            f"sendmail: message {msg['Message-ID']}: From 'root (Cron Daemon)' rewritten to sales@example.com: "
            "sender sales of route default sends only as its own address",
        )
    ]


def test_without_i_a_lone_dot_ends_the_message(workspace, srv):
    _config(workspace, srv)
    result = sendmail("ops@example.org", stdin=b"Subject: dots\n\nfirst\n.\nnever read\n")
    assert result.exit_code == 0, result.stderr
    assert _head_and_body(srv.messages[0].data)[1] == b"first\r\n"


def test_t_reads_to_cc_bcc_and_removes_bcc(workspace, srv):
    _config(workspace, srv)
    message = (
        b"From: Sales Team <sales@example.com>\r\n"
        b"To: Alice <alice@example.org>, bob@example.org\r\n"
        b"Cc: carol@example.org\r\n"
        b"Bcc: hidden@example.org\r\n"
        b"Subject: quarterly report\r\n"
        b"Message-ID: <report-1@example.com>\r\n"
        b"Date: Mon, 30 Nov 2026 08:00:00 +0000\r\n"
        b"\r\n"
        b"see attached numbers\r\n"
    )
    # PHP's mail() runs "sendmail -t -i"; an argument adds a recipient
    result = sendmail("-t", "-i", "extra@example.org", stdin=message)

    assert (result.exit_code, result.stderr) == (0, "")
    got = srv.messages[0]
    assert got.rcpt_tos == [
        "extra@example.org",
        "alice@example.org",
        "bob@example.org",
        "carol@example.org",
        "hidden@example.org",
    ]
    assert b"hidden" not in got.data
    assert got.message["Bcc"] is None
    # From is the route's sender already: kept as written, as are Message-ID and the message's own Date
    head, body = _head_and_body(got.data)
    assert head.split(b"\r\n") == [
        b"From: Sales Team <sales@example.com>",
        b"To: Alice <alice@example.org>, bob@example.org",
        b"Cc: carol@example.org",
        b"Subject: quarterly report",
        b"Message-ID: <report-1@example.com>",
        b"Date: Mon, 30 Nov 2026 08:00:00 +0000",
    ]
    assert body == b"see attached numbers\r\n"


def test_mime_message_with_an_attachment_arrives_unchanged(workspace, srv, tmp_path):
    _config(workspace, srv)
    attachment = bytes(range(256)) * 40
    msg = EmailMessage()
    msg["From"] = "finance@example.com"
    msg["To"] = "boss@example.org"
    msg["Subject"] = "Rechnung für November"  # non-ASCII: encoded by the email package as mutt does
    msg.set_content("Invoice attached.\n")
    msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="invoice-11.pdf")
    raw = msg.as_bytes(policy=policy.SMTP)

    result = sendmail("-t", "-oi", "--route", "billing", stdin=raw)

    assert (result.exit_code, result.stderr) == (0, "")
    got = srv.messages[0]
    assert (got.mail_from, got.rcpt_tos, got.username) == (
        "finance@example.com",
        ["boss@example.org"],
        "finance@example.com",
    )
    assert got.subject == "Rechnung für November"
    [part] = list(got.message.iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("invoice-11.pdf", attachment)
    assert _head_and_body(got.data)[1] == _head_and_body(raw)[1]


def test_a_down_server_leaves_the_message_queued_and_exits_0(workspace, srv, closed_port, cli):
    _config(workspace, srv, port=closed_port)
    result = sendmail("ops@example.org", stdin=CRON_MAIL)

    assert result.exit_code == 0
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("mailops: sendmail: <") and "@example.com> is queued, not sent yet: sales: connect" in line
    assert "connection refused" in line and line.endswith("; 'mailops deliver' retries")
    assert workspace.states() == {"deferred": 1}
    assert srv.messages == []

    # the server is back: the next deliver sends it, as queued
    _config(workspace, srv)
    assert cli("queue", "retry", "--all").exit_code == 0
    assert cli("deliver", "-q").exit_code == 0
    assert workspace.states() == {"sent": 1}
    assert srv.messages[0].rcpt_tos == ["ops@example.org"]


def test_sendmail_mapping_picks_the_route_by_envelope_sender_and_from(workspace, srv):
    _config(
        workspace,
        srv,
        sendmail={
            "default": "default",
            "from": {"backup@web1.example.com": "billing", "@billing.example.com": "billing"},
        },
    )
    assert sendmail("-f", "backup@web1.example.com", "a@example.org", stdin=b"Subject: 1\n\nx\n").exit_code == 0
    assert sendmail("b@example.org", stdin=b"From: app@billing.example.com\nSubject: 2\n\nx\n").exit_code == 0
    assert sendmail("c@example.org", stdin=b"From: someone@else.example.com\nSubject: 3\n\nx\n").exit_code == 0
    assert [(m.subject, m.mail_from) for m in srv.messages] == [
        ("1", "finance@example.com"),
        ("2", "finance@example.com"),
        ("3", "sales@example.com"),
    ]


def test_installed_as_sendmail_by_symlink(workspace, srv, tmp_path):
    _config(workspace, srv)
    link = tmp_path / "sbin" / "sendmail"
    link.parent.mkdir()
    link.symlink_to(Path(sys.executable).parent / "mailops")
    result = sendmail("-t", stdin=b"To: ops@example.org\nSubject: via symlink\n\nx\n", argv0=[str(link)])
    assert (result.exit_code, result.stderr) == (0, "")
    assert srv.messages[0].subject == "via symlink"


@pytest.mark.parametrize(
    ("args", "stdin", "code", "line"),
    [
        (
            ["ops@example.org"],
            b"",
            66,
            "mailops: error: standard input: no message; pipe one in (headers, an empty line, then the body)",
        ),
        (
            [],
            b"Subject: x\n\nbody\n",
            64,
            "mailops: error: sendmail: no recipients in the arguments; name them as arguments, or pass -t to read the headers",
        ),
        (
            ["-t"],
            b"Subject: x\n\nbody\n",
            64,
            "mailops: error: sendmail: no recipients in the arguments or the To, Cc and Bcc headers; name them as "
            "arguments, or pass -t to read the headers",
        ),
        (
            ["-bs"],
            b"Subject: x\n\nbody\n",
            64,
            "mailops: error: sendmail: -bs is not supported: mailops sendmail only accepts mail (-bm)",
        ),
        (
            ["-Z", "ops@example.org"],
            b"Subject: x\n\nbody\n",
            64,
            "mailops: error: sendmail: unknown option '-Z'; see 'mailops sendmail --help'",
        ),
        (
            ["ops@example.org\r\nBcc: victim@example.org"],
            b"Subject: x\n\nbody\n",
            64,
            "mailops: error: recipient argument 1: the control character '\\r' is not allowed in a header "
            "(subject, name, address); remove it from the value",
        ),
        (
            ["-F", "Cron\nBcc: victim@example.org", "ops@example.org"],
            b"Subject: x\n\nbody\n",
            64,
            "mailops: error: -F: the control character '\\n' is not allowed in a header (subject, name, address); "
            "remove it from the value",
        ),
        (
            ["ops@example.org"],
            b"Subject: hi\rBcc: victim@example.org\n\nbody\n",
            65,
            "mailops: error: standard input: header Subject: the control character '\\r' is not allowed in a header "
            "(subject, name, address); remove it from the value",
        ),
        (
            ["ops@example.org"],
            b"Subject: ok\nthis is not a header\n\nbody\n",
            65,
            "mailops: error: standard input, line 2: 'this is not a header' is not a header (Name: value); put the "
            "headers first, then an empty line, then the body",
        ),
        (
            ["ops@example.org"],
            b"Subject: \x1b[31mred\n\nbody\n",
            65,
            "mailops: error: standard input: header Subject: the control character '\\x1b' is not allowed in a header "
            "(subject, name, address); remove it from the value",
        ),
        (
            ["-t"],
            b"To: root\nSubject: x\n\nbody\n",
            65,
            "mailops: error: standard input: header To: 'root' is not a list of addresses (addr-spec local part with "
            "no domain); write 'Name <user@example.com>, ...'",
        ),
    ],
)
def test_bad_input_is_one_line_with_a_sysexits_code_and_nothing_queued(workspace, srv, args, stdin, code, line):
    _config(workspace, srv)
    result = sendmail(*args, stdin=stdin)
    assert (result.exit_code, result.stdout, result.stderr.splitlines()) == (code, "", [line])
    if workspace.db_path.exists():  # a bad command line is refused before the database is opened
        assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]
    assert srv.messages == []


def test_a_message_over_the_size_limit_is_refused(workspace, srv):
    _config(workspace, srv)
    result = subprocess.run(
        mailops_command("sendmail", "ops@example.org"),
        input=b"Subject: big\n\n" + b"x" * 2000 + b"\n",
        capture_output=True,
        timeout=120,
        env={**os.environ, "MAILOPS_SENDMAIL_MAX_BYTES": "1000"},
    )
    assert result.returncode == 65
    assert result.stderr.decode().splitlines() == [
        "mailops: error: standard input: the message is larger than the limit of 1,000 bytes; send a smaller one "
        "or raise MAILOPS_SENDMAIL_MAX_BYTES"
    ]
    assert srv.messages == []


def test_a_message_over_the_senders_max_message_size_is_refused(workspace, srv):
    sales = workspace.sender(srv, email="sales@example.com", password=PASSWORD, max_message_size=3000)
    workspace.write_config({"sales": sales}, routes={"default": "sales"})

    result = sendmail("ops@example.org", stdin=b"Subject: big\n\n" + b"x" * 4000 + b"\n")

    assert (result.exit_code, result.stdout) == (65, "")
    assert re.fullmatch(
        r"mailops: error: standard input: the message is 4,\d{3} bytes; sender sales takes at most 3,000 "
        r"\(max_message_size\); send smaller attachments or links to them\n",
        result.stderr,
    ), result.stderr
    assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]
    assert srv.messages == []


def test_missing_config_is_ex_config(workspace, srv, monkeypatch, tmp_path):
    monkeypatch.setenv("MAILOPS_CONFIG", str(tmp_path / "nowhere.yaml"))
    result = sendmail("ops@example.org", stdin=b"Subject: x\n\nbody\n")
    assert result.exit_code == 78
    assert result.stderr.splitlines() == [
        f"mailops: error: {tmp_path / 'nowhere.yaml'}: no such config file (given by MAILOPS_CONFIG); check the path"
    ]


def test_sendmail_mapping_to_an_unknown_route_is_a_config_error(workspace, srv, cli):
    _config(workspace, srv, sendmail={"from": {"cron@example.com": "nightly"}})
    result = cli("doctor")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"mailops: error: {workspace.config_path}: sendmail.from.cron@example.com: 'nightly' is not a route; "
        "known routes: default, billing"
    ]


def test_in_process_flags_are_not_parsed_by_click(workspace, srv, cli, monkeypatch):
    """-oi, -oem and -h-like clusters reach the sendmail parser untouched (no click option handling)."""
    _config(workspace, srv)
    result = cli("sendmail", "-oi", "-oem", "-odi", "-bm", "-ti", input="To: ops@example.org\nSubject: flags\n\nx\n")
    assert (result.exit_code, result.stderr) == (0, "")
    assert srv.messages[0].subject == "flags"
    parsed = message_from_bytes(srv.messages[0].data, policy=policy.default)
    assert parsed["From"] == "Sales Team <sales@example.com>"


def test_help_lists_the_flags(workspace, srv, cli):
    result = cli("sendmail", "--help")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[:2] == [
        "usage: mailops sendmail [-t] [-i] [-f ADDR] [-F NAME] [--route R] [RCPT...]",
        "                        < message",
    ]


def test_a_body_line_longer_than_smtp_allows_is_sent_quoted_printable(workspace, srv):
    _config(workspace, srv)
    long_line = '{"job": "backup", "files": [' + ", ".join(f'"/srv/data/file-{i}.bin"' for i in range(200)) + "]}"
    assert len(long_line) > 998
    message = b"Subject: job log\n\nstarted\n" + long_line.encode() + b"\nK\xc3\xa4se done\n"

    result = sendmail("-i", "ops@example.org", stdin=message)

    assert (result.exit_code, result.stderr) == (0, "")
    got = srv.messages[0]
    assert max(len(line) for line in got.data.split(b"\r\n")) <= 998
    assert got.message["Content-Transfer-Encoding"] == "quoted-printable"
    assert got.message.get_content() == f"started\n{long_line}\nKäse done\n".replace("\n", "\r\n")


def test_a_long_line_in_a_multipart_body_is_refused(workspace, srv):
    _config(workspace, srv)
    message = (
        b'Content-Type: multipart/mixed; boundary="b"\nSubject: x\n\n--b\nContent-Type: text/plain\n\n'
        + b"x" * 1200
        + b"\n--b--\n"
    )
    result = sendmail("ops@example.org", stdin=message)
    assert (result.exit_code, result.stderr.splitlines()) == (
        65,
        [
            "mailops: error: standard input: a body line is longer than 998 characters in a multipart or encoded "
            "message; encode that part as quoted-printable or base64"
        ],
    )
    assert srv.messages == []


# ---------------------------------------------------------------- Date, suppression, -f, non-ASCII headers


def test_a_piped_date_is_kept_even_when_delivered_later_and_a_missing_one_is_stamped(workspace, srv, closed_port, cli):
    _config(workspace, srv, port=closed_port)  # the server is down: both wait in the outbox
    dated = b"Subject: dated\nDate: Mon, 30 Nov 2026 08:00:00 +0000\n\nx\n"
    assert sendmail("ops@example.org", stdin=dated).exit_code == 0
    assert sendmail("ops@example.org", stdin=b"Subject: undated\n\nx\n").exit_code == 0
    assert workspace.query("SELECT subject, keep_date FROM messages ORDER BY id") == [("dated", 1), ("undated", 0)]
    stored = workspace.query("SELECT mime FROM messages WHERE subject = 'undated'")[0][0]
    queued_date = message_from_bytes(stored, policy=policy.default)["Date"]

    _config(workspace, srv)
    assert cli("queue", "retry", "--all").exit_code == 0
    assert cli("deliver", "-q").exit_code == 0
    got = {m.subject: m.message for m in srv.messages}
    assert got["dated"]["Date"] == "Mon, 30 Nov 2026 08:00:00 +0000"  # the job's own time, as an MTA keeps it
    assert len(got["dated"].get_all("Date")) == 1
    # mailops' own Date says when the message was handed over (issue 12), not when it was queued
    assert got["undated"]["Date"] is not None and got["undated"]["Date"].datetime >= queued_date.datetime


def test_suppressed_recipients_are_left_out_and_a_message_to_none_left_is_not_queued(workspace, srv, cli):
    _config(workspace, srv)
    assert cli("suppress", "add", "gone@example.org", "--reason", "asked to stop").exit_code == 0

    result = sendmail("-t", stdin=b"To: ok@example.org, Gone@example.org\nSubject: one\n\nx\n")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr.splitlines() == [
        "mailops: sendmail: left out 1 suppressed recipient(s): Gone@example.org (asked to stop)"
    ]
    assert [(m.subject, m.rcpt_tos) for m in srv.messages] == [("one", ["ok@example.org"])]

    result = sendmail("gone@example.org", stdin=b"Subject: two\n\nx\n")
    assert (result.exit_code, result.stdout) == (0, "")
    [line] = result.stderr.splitlines()
    assert re.fullmatch(
        r"mailops: sendmail: <[^>]+@example\.com> not queued: every recipient is on the suppression list: "
        r"gone@example\.org \(asked to stop\); 'mailops suppress remove ADDR' to send to it again",
        line,
    ), line
    assert workspace.states() == {"sent": 1}
    assert len(srv.messages) == 1


def test_f_is_the_envelope_sender_through_a_relay_and_not_for_a_mailbox_that_logs_in(workspace, srv, smtp_server, cli):
    relay = smtp_server(auth=False)
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD),
            "relay": workspace.sender(relay, email="alerts@example.com"),
        },
        routes={"default": "sales", "relay": "relay"},
    )
    message = b"From: backup@web1.example.com\nSubject: nightly\n\nx\n"
    assert sendmail("-f", "bounces@example.com", "--route", "relay", "ops@example.org", stdin=message).exit_code == 0
    assert sendmail("-f", "<>", "--route", "relay", "ops@example.org", stdin=message).exit_code == 0
    assert sendmail("-f", "bounces@example.com", "ops@example.org", stdin=message).exit_code == 0

    # the relay takes the envelope sender (and the message's From) as an MTA would; null sender included
    first, null, mailbox = relay.messages + srv.messages
    assert (first.mail_from, first.message["From"], first.message["Sender"]) == (
        "bounces@example.com",
        "backup@web1.example.com",
        None,
    )
    assert null.mail_from == "<>"  # MAIL FROM:<>, as aiosmtpd records it
    # the mailbox that logs in sends only as itself: From rewritten, envelope its own, the log says why
    assert (mailbox.mail_from, mailbox.message["From"]) == ("sales@example.com", "sales@example.com")
    rows = log_json(cli)
    assert rows[0]["sender"] == "sales"
    assert rows[0]["note"] == (
        "From 'backup@web1.example.com' rewritten to sales@example.com: sender sales of route default sends only "
        "as its own address; -f bounces@example.com not used as the envelope sender: sender sales logs in and sends "
        "only as sales@example.com"
    )
    assert [r["note"] for r in rows[1:]] == [None, None]
    table = cli("log", "--sender", "sales")
    assert "From 'backup@web1.example.com' rewritten to sales@example.com" in " ".join(table.stdout.split())


def test_non_ascii_headers_are_encoded_and_addresses_kept(workspace, srv):
    _config(workspace, srv)
    message = (
        "From: Jürgen Müller <sales@example.com>\n"
        "To: Zoë Ågren <zoe@example.org>, ops@bücher.example\n"
        "Subject: Sicherung für Büro\n"
        "X-Job: nächtliche Sicherung ✓\n"
        'Content-Type: text/plain; charset="utf-8"; name="bericht-für-mai.txt"\n'
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Grüße\n"
    ).encode()
    result = sendmail("-t", stdin=message)

    assert (result.exit_code, result.stderr) == (0, "")
    got = srv.messages[0]
    head, body = _head_and_body(got.data)
    assert head.isascii() and max(len(line) for line in head.split(b"\r\n")) <= 78
    assert got.rcpt_tos == ["zoe@example.org", "ops@xn--bcher-kva.example"]
    msg = got.message
    assert msg["From"] == "Jürgen Müller <sales@example.com>"  # the route's own address: not rewritten
    assert msg["To"] == "Zoë Ågren <zoe@example.org>, ops@xn--bcher-kva.example"
    assert msg["Subject"] == "Sicherung für Büro"
    assert msg["X-Job"] == "nächtliche Sicherung ✓"
    assert msg["Content-Type"].params["name"] == "bericht-für-mai.txt"
    assert b"name*=utf-8''bericht-f%C3%BCr-mai.txt" in head
    assert body == "Grüße\r\n".encode()


@pytest.mark.parametrize(
    ("header", "line"),
    [
        (
            "To: jürgen@example.org",
            "mailops: error: standard input: header To: 'jürgen@example.org': non-ASCII characters before the @ "
            "need SMTPUTF8, which mailops does not use; write an ASCII address",
        ),
        (
            "Message-ID: <grüße@example.com>",
            "mailops: error: standard input: header Message-ID: non-ASCII characters in a field that is ASCII by "
            "definition; remove them",
        ),
    ],
)
def test_non_ascii_where_it_cannot_be_encoded_is_one_line_and_nothing_queued(workspace, srv, header, line):
    _config(workspace, srv)
    result = sendmail("-t", "ops@example.org", stdin=f"{header}\nSubject: x\n\nbody\n".encode())
    assert (result.exit_code, result.stdout, result.stderr.splitlines()) == (65, "", [line])
    assert workspace.query("SELECT COUNT(*) FROM messages") == [(0,)]
    assert srv.messages == []
