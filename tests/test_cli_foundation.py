"""The foundation commands end to end: test-smtp, password, doctor, init, dev-server, demo, config errors.

Everything goes through the real CLI (in-process with ``cli``, or as a real
``python -m mailops`` process) against real aiosmtpd servers on 127.0.0.1, a
real SQLite file and the test keyring. Exact lines are asserted where the
line is the contract (errors, exit codes, what doctor tells the operator).
"""

from __future__ import annotations

import base64
import json
import mailbox
import os
import queue
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailops import __version__, migrations
from tests.fixtures_cli import CliResult, Workspace, popen_mailops, run_mailops
from tests.smtp_servers import DEFAULT_PASSWORD, DEFAULT_USER, LocalSmtpServer

FILE_KEYRING = "tests.keyring_backend.FileKeyring"
FAILING_KEYRING = "tests.keyring_backend.FailingKeyring"


def one_error_line(result: CliResult) -> str:
    """The single stderr line of a failed command (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_with_stdin(*args: str, stdin: str, env: dict[str, str] | None = None) -> CliResult:
    """``python -m mailops ARGS`` as a real process, with ``stdin`` piped in (not a terminal)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mailops", *[str(a) for a in args]],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sender_state(workspace: Workspace) -> dict[str, tuple[object, ...]]:
    """sender_state rows read straight from the SQLite file: {sender: (healthy, last_error)}."""
    return {s: (h, e) for s, h, e in workspace.query("SELECT sender, healthy, last_error FROM sender_state")}


# ---------------------------------------------------------------- test-smtp


STEPS_OK = re.compile(r"^  steps: connect \d+ ms, ehlo \d+ ms, starttls \d+ ms, ehlo \d+ ms, auth \d+ ms, quit \d+ ms$")


def test_test_smtp_passes_with_starttls_auth_and_the_private_ca(workspace, server, cli):
    workspace.write_config({"sales": workspace.sender(server)})

    result = cli("test-smtp")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"sales: ok  127.0.0.1:{server.port} (starttls)"
    assert re.fullmatch(r"  tls: TLSv1\.[23] \S+", lines[1]), lines[1]
    assert lines[2] == "  auth: PLAIN 235 accepted"
    assert STEPS_OK.match(lines[3]), lines[3]
    assert len(lines) == 4
    assert result.stderr == ""
    assert server.auth_attempts == [("PLAIN", DEFAULT_USER, True)]
    assert server.messages == []  # no --send-to: nothing is sent


def test_test_smtp_without_ca_file_fails_certificate_verification(workspace, server, cli):
    workspace.write_config({"sales": workspace.sender(server, ca_file=None)})

    result = cli("test-smtp")

    assert result.exit_code == 1
    assert f"sales: FAILED  127.0.0.1:{server.port} (starttls)" in result.stdout
    assert "  error: certificate verification failed: unable to get local issuer certificate" in result.stdout
    assert (
        "  hint: the server's certificate is not trusted: set ca_file to the CA that signed it "
        "(tls_verify: false only for testing)"
    ) in result.stdout
    assert server.auth_attempts == []  # the password never went to an unverified server
    assert "AUTH" not in server.commands


def test_test_smtp_wrong_password_shows_the_535_reply_and_a_hint(workspace, server, cli):
    workspace.write_config({"sales": workspace.sender(server, password="not-the-password")})

    result = cli("test-smtp", "sales")

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"sales: FAILED  127.0.0.1:{server.port} (starttls)"
    assert "  auth: PLAIN 535 refused" in lines
    assert lines[-2:] == [
        "  error: 535 5.7.8 Authentication credentials invalid",
        "  hint: wrong username or password for sales: check 'username' in senders.yaml "
        "and run 'mailops password set sales'",
    ]
    assert server.auth_attempts == [("PLAIN", DEFAULT_USER, False)]
    assert "not-the-password" not in result.output


@pytest.mark.parametrize(
    ("security", "error", "hint"),
    [
        (
            "starttls",
            "{addr} does not offer STARTTLS",
            "the server does not offer STARTTLS on this port: use security: ssl with port 465, or check host/port",
        ),
        (
            "none",
            "refusing to send the password of sales over an unencrypted connection to {addr}",
            "sales would send its password unencrypted: use security: starttls or ssl, or, only for a trusted "
            "local relay, set allow_plaintext_auth: true with security: none",
        ),
    ],
)
def test_test_smtp_against_a_server_without_starttls_never_sends_auth(
    workspace, smtp_server, cli, security, error, hint
):
    plain = smtp_server(mode="plain")  # advertises AUTH in clear text, offers no STARTTLS
    workspace.write_config({"sales": workspace.sender(plain, security=security)})

    result = cli("test-smtp")

    assert result.exit_code == 1
    assert result.stdout.splitlines()[-2:] == [f"  error: {error.format(addr=plain.address)}", f"  hint: {hint}"]
    assert "AUTH" not in plain.commands
    assert plain.auth_attempts == []
    assert plain.commands[0] == "EHLO"


def test_test_smtp_closed_port_fails_fast_and_clearly(workspace, closed_port, cli):
    workspace.write_config({"sales": workspace.sender(None, port=closed_port, security="starttls")})

    start = time.monotonic()
    result = cli("test-smtp")
    elapsed = time.monotonic() - start

    assert result.exit_code == 1
    assert result.stdout.splitlines()[-2:] == [
        f"  error: connection refused by 127.0.0.1:{closed_port}",
        f"  hint: nothing listens on 127.0.0.1:{closed_port}: check host, port and firewall",
    ]
    assert elapsed < 4  # refused at once; the sender's 5 s timeout is not waited for


def test_test_smtp_stalling_server_fails_within_the_timeout(workspace, stalling_server, cli):
    workspace.write_config({"sales": workspace.sender(None, port=stalling_server.port, security="starttls", timeout=1)})

    start = time.monotonic()
    result = cli("test-smtp")
    elapsed = time.monotonic() - start

    assert result.exit_code == 1
    assert result.stdout.splitlines()[-2:] == [
        f"  error: no answer from 127.0.0.1:{stalling_server.port} within 1 s",
        "  hint: no answer within 1 s: check host/port/firewall or raise timeout",
    ]
    assert elapsed < 4.5  # bounded by timeout: 1, far below the 5 s the workspace uses otherwise


def _two_senders(workspace: Workspace, server: LocalSmtpServer, closed_port: int, **extra_sender: object) -> None:
    workspace.write_config(
        {
            "sales": workspace.sender(server),
            "support": workspace.sender(
                None, email="support@example.com", port=closed_port, security="starttls", **extra_sender
            ),
        },
        routes={"default": "sales"},
    )


def test_test_smtp_json_has_per_sender_ok_steps_and_error(workspace, server, closed_port, cli):
    _two_senders(workspace, server, closed_port)

    result = cli("test-smtp", "--json")

    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [(r["sender"], r["ok"]) for r in data] == [("sales", True), ("support", False)]
    sales, support = data
    assert [s["step"] for s in sales["steps"]] == ["connect", "ehlo", "starttls", "ehlo", "auth", "quit"]
    assert all(s["ok"] and s["seconds"] >= 0 for s in sales["steps"])
    assert (sales["error"], sales["auth_result"], sales["host"], sales["port"]) == (
        None,
        "235 accepted",
        "127.0.0.1",
        server.port,
    )
    assert sales["tls_version"].startswith("TLSv1.")
    assert support["error"] == f"connection refused by 127.0.0.1:{closed_port}"
    assert support["hint"] == f"nothing listens on 127.0.0.1:{closed_port}: check host, port and firewall"
    assert [(s["step"], s["ok"]) for s in support["steps"]] == [("connect", False)]


def test_test_smtp_records_health_seen_by_stats_and_in_the_database(workspace, smtp_server, closed_port, cli):
    server = smtp_server(users={DEFAULT_USER: DEFAULT_PASSWORD, "support@example.com": DEFAULT_PASSWORD})
    _two_senders(workspace, server, closed_port)

    assert cli("test-smtp").exit_code == 1

    stats = cli("stats", "--json")
    assert stats.exit_code == 0, stats.output
    health = {r["sender"]: (r["health"], r["last_error"]) for r in json.loads(stats.stdout)["senders"]}
    refused = f"connection refused by 127.0.0.1:{closed_port}"
    assert health == {"sales": ("healthy", None), "support": ("unhealthy", refused)}
    assert sender_state(workspace) == {"sales": (1, None), "support": (0, refused)}

    # the server comes back: support's next check marks it healthy again
    workspace.write_config(
        {"sales": workspace.sender(server), "support": workspace.sender(server, email="support@example.com")},
        routes={"default": "sales"},
    )
    assert cli("test-smtp", "support").exit_code == 0
    assert sender_state(workspace)["support"][0] == 1


def test_test_smtp_exits_0_only_if_every_tested_sender_passed(workspace, server, closed_port, cli):
    _two_senders(workspace, server, closed_port)

    assert cli("test-smtp", "sales").exit_code == 0
    assert cli("test-smtp", "support").exit_code == 1
    both = cli("test-smtp", "sales", "support")
    assert both.exit_code == 1
    assert [line.split(":")[0] for line in both.stdout.splitlines() if not line.startswith(" ")] == ["sales", "support"]


def test_test_smtp_skips_inactive_senders_unless_all(workspace, server, closed_port, cli):
    _two_senders(workspace, server, closed_port, active=False)

    default = cli("test-smtp")
    assert default.exit_code == 0, default.output  # the broken support sender is inactive: not tested
    assert "support" not in default.stdout
    every = cli("test-smtp", "--all")
    assert every.exit_code == 1
    assert "support: FAILED" in every.stdout


def test_test_smtp_send_to_delivers_a_real_test_message(workspace, server, cli):
    workspace.write_config({"sales": workspace.sender(server, name="Sales Team")})

    result = cli("test-smtp", "--send-to", "ops@example.org")

    assert result.exit_code == 0, result.output
    [received] = server.messages
    assert received.mail_from == DEFAULT_USER
    assert received.rcpt_tos == ["ops@example.org"]
    assert received.username == DEFAULT_USER
    assert received.subject == "mailops test message from sales"
    assert received.message["From"] == "Sales Team <sales@example.com>"
    assert f"  test message sent: {received.message['Message-ID']}" in result.stdout.splitlines()
    assert re.search(r"^  steps: .*auth \d+ ms, send \d+ ms, quit \d+ ms$", result.stdout, re.M)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("test-smtp", "nobody"), "mailops: error: {config}: unknown sender 'nobody'; known senders: sales"),
        (("test-smtp", "sales", "--all"), "mailops: error: name senders or pass --all, not both"),
        (
            ("test-smtp", "--send-to", "not-an-address"),
            "mailops: error: --send-to: 'not-an-address' is not a valid email address: An email address must have an @-sign.",
        ),
    ],
)
def test_test_smtp_usage_errors_are_one_line_exit_2_and_connect_nowhere(workspace, server, cli, args, line):
    config = workspace.write_config({"sales": workspace.sender(server)})

    result = cli(*args)

    assert result.exit_code == 2
    assert one_error_line(result) == line.format(config=config)
    assert server.connections == 0


# ---------------------------------------------------------------- the password never appears


SALES_PW = "Sa1es-pw-7f3c9e1d"
SUPPORT_WRONG_PW = "Supp0rt-wrong-4b8a2f6e"
SUPPORT_REAL_PW = "Supp0rt-real-0d5e9c3a"


def _secret_forms(password: str, user: str) -> list[bytes]:
    """The password as text and as it would look base64-encoded in an AUTH exchange."""
    return [
        password.encode(),
        base64.b64encode(password.encode()),
        base64.b64encode(f"\0{user}\0{password}".encode()),
    ]


def test_the_password_appears_in_no_output_database_or_config(workspace, smtp_server, cli, isolated_home, request):
    srv = smtp_server(users={"sales@example.com": SALES_PW, "support@example.com": SUPPORT_REAL_PW})
    workspace.write_config(
        {
            "sales": workspace.sender(srv, password=None),
            "support": workspace.sender(srv, email="support@example.com", password=SUPPORT_WRONG_PW),
        },
        routes={"default": "sales"},
    )
    workspace.template("note", "Note for {{ name }}", "Hello {{ name }}")
    outputs: list[CliResult] = []

    def run(*args: str, **kwargs: str) -> CliResult:
        result = cli(*args, **kwargs)
        outputs.append(result)
        return result

    assert run("password", "set", "sales", "--stdin", input=SALES_PW + "\n").exit_code == 0
    assert run("db", "upgrade").exit_code == 0
    # SQLite deletes the -wal file when its last connection closes; hold one open so the WAL
    # written by the commands below is still there to be searched at the end
    holder = sqlite3.connect(workspace.db_path)
    request.addfinalizer(holder.close)
    for debug in ((), ("--debug",)):
        assert run(*debug, "test-smtp").exit_code == 1  # sales ok, support refused
        run(*debug, "test-smtp", "--json", "--send-to", "ops@example.org")
        assert run(*debug, "send", "--to", "cust@example.org", "--template", "note", "--var", "name=Ann").exit_code == 0
        assert (
            run(
                *debug, "send", "--sender", "support", "--to", "c2@example.org", "--subject", "s", "--body", "b"
            ).exit_code
            == 1
        )
        run(*debug, "send", "--json", "--to", "c3@example.org", "--subject", "s", "--body", "b")
        run(*debug, "log", "--json")
        run(*debug, "log")
        run(*debug, "stats", "--json")
        run(*debug, "stats")
        run(*debug, "doctor")
        run(*debug, "doctor", "--connect", "--json")
        run(*debug, "password", "status")
        run(*debug, "password", "status", "--json")
        run(*debug, "db", "status")
        listing = run(*debug, "queue", "list", "--json")
        run(*debug, "queue", "list")
        ids = [m["id"] for m in json.loads(listing.stdout)["messages"]]
        assert len(ids) >= 3
        for msg_id in ids:
            run(*debug, "queue", "show", str(msg_id), "--json")
            run(*debug, "queue", "show", str(msg_id))
    # a careless keyring backend puts the password in its own exception text; --debug shows tracebacks
    broken = run_with_stdin(
        "--debug",
        "password",
        "set",
        "sales",
        "--stdin",
        stdin=SALES_PW + "\n",
        env={"PYTHON_KEYRING_BACKEND": "tests.keyring_backend.BrokenKeyring"},
    )
    assert broken.exit_code == 2
    outputs.append(broken)

    # the commands really used the passwords and left records behind
    assert srv.logins >= 4 and len(srv.messages) >= 4
    assert any(a == ("PLAIN", "support@example.com", False) for a in srv.auth_attempts)
    assert workspace.query("SELECT COUNT(*) FROM attempts")[0][0] >= 4
    assert isolated_home.passwords() == {"sales": SALES_PW, "support": SUPPORT_WRONG_PW}

    secrets = _secret_forms(SALES_PW, "sales@example.com") + _secret_forms(SUPPORT_WRONG_PW, "support@example.com")
    for result in outputs:
        text = result.output.encode()
        for secret in secrets:
            assert secret not in text, result.output
    files = [p for root in (workspace.root, isolated_home.home) for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"senders.yaml", "mailops.db"} <= names
    assert "mailops.db-wal" in names
    for path in files:
        raw = path.read_bytes()
        for secret in secrets:
            assert secret not in raw, path


# ---------------------------------------------------------------- password set / status / delete


def test_password_set_status_and_delete(workspace, cli, isolated_home, monkeypatch):
    monkeypatch.setenv("MAILOPS_PASSWORD_ALERTS", "from-the-environment")
    workspace.write_config(
        {
            "sales": workspace.sender(None, password=None),
            "finance": workspace.sender(
                None, email="finance@example.com", password=None, password_command="pass show finance"
            ),
            "alerts": workspace.sender(None, email="alerts@example.com", password=None),
            "relay": workspace.sender(None, email="relay@example.com", password=None, auth=False, active=False),
        }
    )

    def sources() -> dict[str, str]:
        result = cli("password", "status", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert (data["backend"], data["backend_usable"], data["problem"]) == (FILE_KEYRING, True, None)
        assert {row["sender"]: row["active"] for row in data["senders"]} == {
            "sales": True,
            "finance": True,
            "alerts": True,
            "relay": False,
        }
        assert all(row["available"] is (row["source"] != "missing") for row in data["senders"]), data
        return {row["sender"]: row["source"] for row in data["senders"]}

    assert sources() == {"sales": "missing", "finance": "command", "alerts": "env", "relay": "not needed (auth: false)"}

    stored = cli("password", "set", "sales", "--stdin", input="pw-for-sales\n")
    assert (stored.exit_code, stored.stdout, stored.stderr) == (
        0,
        f"stored the password of sales in the keyring ({FILE_KEYRING})\n",
        "",
    )
    assert isolated_home.passwords() == {"sales": "pw-for-sales"}
    assert sources()["sales"] == "keyring"

    table = cli("password", "status")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["sender", "email", "active", "password"]
    rows = {cells[0]: (cells[2], cells[3]) for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[2:-1])}
    assert rows == {
        "sales": ("yes", "stored (keyring)"),
        "finance": ("yes", "from password_command"),
        "alerts": ("yes", "from MAILOPS_PASSWORD_ALERTS"),
        "relay": ("no", "not needed (auth: false)"),
    }
    assert "True" not in table.stdout and "False" not in table.stdout
    assert table.stdout.splitlines()[-1] == f"keyring backend: {FILE_KEYRING}"
    assert "pw-for-sales" not in table.output and "from-the-environment" not in table.output

    deleted = cli("password", "delete", "sales")
    assert (deleted.exit_code, deleted.stdout) == (0, "deleted the password of sales from the keyring\n")
    assert isolated_home.passwords() == {}
    assert sources()["sales"] == "missing"
    again = cli("password", "delete", "sales")
    assert (again.exit_code, again.stdout) == (0, "no password of sales was in the keyring\n")


def test_password_set_for_an_unknown_sender_is_one_line_exit_2(workspace, cli, isolated_home):
    config = workspace.write_config({"sales": workspace.sender(None, password=None)})

    result = cli("password", "set", "slaes", "--stdin", input="x\n")

    assert result.exit_code == 2
    assert one_error_line(result) == f"mailops: error: {config}: unknown sender 'slaes'; known senders: sales"
    assert isolated_home.passwords() == {}


def test_password_delete_of_a_misspelt_sender_is_one_line_exit_2(workspace, cli, isolated_home):
    config = workspace.write_config({"sales": workspace.sender(None, password="pw-for-sales")})

    result = cli("password", "delete", "slaes")

    assert result.exit_code == 2
    assert one_error_line(result) == f"mailops: error: {config}: unknown sender 'slaes'; known senders: sales"
    assert isolated_home.passwords() == {"sales": "pw-for-sales"}


def test_password_delete_cleans_up_a_sender_removed_from_the_config(workspace, cli, isolated_home):
    workspace.write_config({"old": workspace.sender(None, email="old@example.com", password="pw-for-old")})
    workspace.write_config({"sales": workspace.sender(None, password=None)})  # "old" is gone from senders.yaml

    result = cli("password", "delete", "old")

    assert (result.exit_code, result.stdout) == (0, "deleted the password of old from the keyring\n")
    assert isolated_home.passwords() == {}


def test_password_set_without_a_terminal_or_stdin_says_use_stdin(workspace, isolated_home):
    workspace.write_config({"sales": workspace.sender(None, password=None)})

    result = run_mailops("password", "set", "sales")  # stdin is /dev/null: no terminal to prompt on

    assert result.exit_code == 2
    assert one_error_line(result) == "mailops: error: no terminal to ask for the password: pipe it in with --stdin"
    assert isolated_home.passwords() == {}


def test_password_set_with_empty_stdin_stores_nothing(workspace, cli, isolated_home):
    workspace.write_config({"sales": workspace.sender(None, password=None)})

    result = cli("password", "set", "sales", "--stdin", input="\n")

    assert result.exit_code == 2
    assert one_error_line(result) == "mailops: error: empty password for 'sales': nothing stored"
    assert isolated_home.passwords() == {}


# ---------------------------------------------------------------- a headless machine


HEADLESS = {"PYTHON_KEYRING_BACKEND": FAILING_KEYRING}


def test_headless_password_set_names_the_backend_and_the_way_around_it(workspace, isolated_home):
    workspace.write_config({"sales": workspace.sender(None, password=None)})

    result = run_with_stdin("password", "set", "sales", "--stdin", stdin="pw\n", env=HEADLESS)

    assert result.exit_code == 2
    assert result.stdout == ""
    assert one_error_line(result) == (
        f"mailops: error: cannot store the password of sender 'sales': keyring backend {FAILING_KEYRING} "
        "(priority 0) cannot store passwords; set MAILOPS_PASSWORD_SALES or password_command in senders.yaml "
        "(headless machines, cron), or make a keyring available: unlock the Secret Service (GNOME Keyring, "
        "KWallet) or install keyrings.alt and set MAILOPS_ALLOW_INSECURE_KEYRING=1"
    )
    assert isolated_home.passwords() == {}


def test_headless_send_and_test_smtp_work_with_the_environment_variable(workspace, server):
    workspace.write_config({"sales": workspace.sender(server, password=None)}, routes={"default": "sales"})

    without = run_mailops("test-smtp", env=HEADLESS)
    assert without.exit_code == 1
    error = [line for line in without.stdout.splitlines() if line.startswith("  error: ")]
    assert error == [
        f"  error: cannot read the password of sender 'sales': keyring backend {FAILING_KEYRING} (priority 0) "
        "cannot store passwords; set MAILOPS_PASSWORD_SALES or password_command in senders.yaml (headless "
        "machines, cron), or make a keyring available: unlock the Secret Service (GNOME Keyring, KWallet) or "
        "install keyrings.alt and set MAILOPS_ALLOW_INSECURE_KEYRING=1"
    ]
    assert "password set" not in without.stdout  # it would fail here: no misleading hint
    assert server.connections == 0

    env = {**HEADLESS, "MAILOPS_PASSWORD_SALES": DEFAULT_PASSWORD}
    check = run_mailops("test-smtp", env=env)
    assert check.exit_code == 0, check.output
    assert "auth: PLAIN 235 accepted" in check.stdout
    sent = run_mailops("send", "--to", "cust@example.org", "--subject", "Renewal", "--body", "Hello", env=env)
    assert sent.exit_code == 0, sent.output
    assert [(m.rcpt_tos, m.subject, m.username) for m in server.messages] == [
        (["cust@example.org"], "Renewal", DEFAULT_USER)
    ]
    assert server.auth_attempts == [("PLAIN", DEFAULT_USER, True)] * 2
    assert DEFAULT_PASSWORD not in check.output + sent.output


def test_headless_doctor_points_to_the_environment_variable(workspace):
    workspace.write_config({"sales": workspace.sender(None, password=None)}, routes={"default": "sales"})
    workspace.template("note", "s", "b")

    result = run_mailops("doctor", env=HEADLESS)

    assert result.exit_code == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
    assert problems == [
        "PROBLEM  sales: password unavailable (keyring refused); set MAILOPS_PASSWORD_SALES or password_command "
        "for this sender",
        f"PROBLEM  keyring backend {FAILING_KEYRING} (priority 0) cannot store passwords; set "
        "MAILOPS_PASSWORD_<SENDER> or password_command in senders.yaml (headless machines, cron), or make a "
        "keyring available: unlock the Secret Service (GNOME Keyring, KWallet) or install keyrings.alt and set "
        "MAILOPS_ALLOW_INSECURE_KEYRING=1",
    ]
    fixed = run_mailops("doctor", env={**HEADLESS, "MAILOPS_PASSWORD_SALES": "x"})
    assert fixed.exit_code == 0, fixed.output
    assert "ok       sales: password from env" in fixed.stdout.splitlines()


# ---------------------------------------------------------------- doctor


def test_doctor_healthy_setup_finds_no_problems(workspace, server, cli):
    config = workspace.write_config({"sales": workspace.sender(server)}, routes={"default": "sales"})
    workspace.template("renewal", "s", "b")

    result = cli("doctor")

    assert result.exit_code == 0, result.output
    root = config.parent.resolve()
    lines = result.stdout.splitlines()
    # each sender's effective settings (tests/test_providers.py checks them): a heading and one line a setting
    settings = lines.index("sender   sales: effective settings")
    assert lines[settings + 1].split() == ["host", "127.0.0.1", "explicit"]
    del lines[settings : settings + 16]
    assert lines == [
        f"ok       config {config}: 1 sender(s), 1 active",
        "ok       route default: failover over sales",
        f"ok       templates {root / 'templates'}: renewal",
        f"ok       keyring backend: {FILE_KEYRING}",
        "ok       sales: password from keyring",
        f"ok       database sqlite:///{root / 'mailops.db'}: reachable, empty (schema created on first use)",
        "no problems found",
    ]
    assert server.connections == 0  # without --connect, doctor does not touch the network

    cli("stats")  # any command creates the schema; doctor then names its version
    again = cli("doctor")
    assert again.exit_code == 0
    latest = migrations.MIGRATIONS[-1][0]
    assert f"ok       database sqlite:///{root / 'mailops.db'}: reachable, schema {latest}" in again.stdout.splitlines()


def test_doctor_lists_each_problem_with_its_fix(workspace, server, cli):
    config = workspace.write_config({"sales": workspace.sender(server, password=None)}, routes={"renewal": "sales"})
    templates = config.parent.resolve() / "templates"

    result = cli("doctor")

    assert result.exit_code == 1
    problems = [
        f"{config}: no 'default' route; 'mailops send' without --route or --sender will refuse to run; add routes.default",
        f"templates folder {templates} does not exist; create it or fix 'templates:' in {config}",
        "sales: no password; run 'mailops password set sales'",
    ]
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("PROBLEM")] == [f"PROBLEM  {p}" for p in problems]
    assert lines[-1] == "3 problem(s)"
    assert result.stderr == ""

    as_json = cli("doctor", "--json")
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)  # a list of {check, status, detail, fix}
    assert [d for d in data if d["status"] == "problem"] == [
        {
            "check": "route default",
            "status": "problem",
            "detail": f"{config}: no 'default' route; 'mailops send' without --route or --sender will refuse to run",
            "fix": "add routes.default",
        },
        {
            "check": "templates",
            "status": "problem",
            "detail": f"templates folder {templates} does not exist",
            "fix": f"create it or fix 'templates:' in {config}",
        },
        {
            "check": "sender sales",
            "status": "problem",
            "detail": "sales: no password",
            "fix": "run 'mailops password set sales'",
        },
    ]
    assert {
        "check": "route renewal",
        "status": "ok",
        "detail": "route renewal: failover over sales",
        "fix": None,
    } in data
    assert {d["status"] for d in data} == {"ok", "problem", "info"}


def test_doctor_connect_against_a_real_server_and_a_closed_port(workspace, server, closed_port, cli):
    workspace.write_config({"sales": workspace.sender(server)}, routes={"default": "sales"})
    workspace.template("renewal", "s", "b")

    ok = cli("doctor", "--connect")
    assert ok.exit_code == 0, ok.output
    assert f"ok       sales: connected to 127.0.0.1:{server.port} and logged in" in ok.stdout.splitlines()
    assert server.logins == 1

    workspace.write_config(
        {"sales": workspace.sender(None, port=closed_port, security="starttls")}, routes={"default": "sales"}
    )
    bad = cli("doctor", "--connect", "--json")
    assert bad.exit_code == 1
    assert [d for d in json.loads(bad.stdout) if d["status"] == "problem"] == [
        {
            "check": "connect sales",
            "status": "problem",
            "detail": f"sales: connection refused by 127.0.0.1:{closed_port}",
            "fix": f"nothing listens on 127.0.0.1:{closed_port}: check host, port and firewall",
        }
    ]


# ---------------------------------------------------------------- malformed configs


BASE_CONFIG = """\
timezone: UTC
database: mailops.db
templates: templates
senders:
  sales:
    email: sales@example.com
    host: 127.0.0.1
    port: {port}
    security: starttls
    ca_file: {ca}
    timeout: 5
routes:
  default: sales
groups:
  admins:
    - Admin <admin@example.com>
"""
LAST_SENDER_LINE = "    timeout: 5\n"


def _add_to_sender(line: str) -> Callable[[str], str]:
    return lambda text: text.replace(LAST_SENDER_LINE, LAST_SENDER_LINE + f"    {line}\n")


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


# (id, edit of the good config, expected message after "mailops: error: ")
MALFORMED = [
    (
        "typo daly_limit",
        _add_to_sender("daly_limit: 500"),
        "{f}: senders.sales.daly_limit: unknown key; did you mean 'daily_limit'?",
    ),
    (
        "password key",
        _add_to_sender("password: hunter2"),
        "{f}: senders.sales.password: passwords do not belong in senders.yaml; delete the key and run "
        "'mailops password set sales' to keep it in the system keyring",
    ),
    (
        "bad security",
        _replace("security: starttls", "security: tls"),
        "{f}: senders.sales.security: must be one of 'starttls', 'ssl' or 'none' (got 'tls')",
    ),
    (
        "port too big",
        _replace("port: {port}", "port: 99999"),
        "{f}: senders.sales.port: must be from 1 to 65535 (got 99999)",
    ),
    (
        "port not a number",
        _replace("port: {port}", "port: smtp"),
        "{f}: senders.sales.port: must be a whole number (got 'smtp')",
    ),
    (
        "unknown sender in route",
        _replace("default: sales", "default: salse"),
        "{f}: routes.default: unknown sender 'salse'; did you mean 'sales'?",
    ),
    (
        "invalid group address",
        _replace("Admin <admin@example.com>", "admin-at-example.com"),
        "{f}: groups.admins[0]: 'admin-at-example.com' is not a valid email address: An email address must have an @-sign.",
    ),
    (
        "unknown timezone",
        _replace("timezone: UTC", "timezone: Mars/Olympus"),
        "{f}: timezone: unknown time zone 'Mars/Olympus'; use an IANA name such as Europe/Berlin or UTC",
    ),
    (
        "bad YAML",
        _replace("routes:\n", "routes:\n  x: [a\n"),
        "{f}:14:10: invalid YAML: expected ',' or ']', but got ':'",
    ),
    (
        "duplicate key",
        _add_to_sender("timeout: 6"),
        "{f}:12:5: invalid YAML: duplicate key 'timeout'; remove or rename one of them",
    ),
    (
        "missing email",
        _replace("    email: sales@example.com\n", ""),
        "{f}: senders.sales.email: required key is missing; add it (or put it in defaults)",
    ),
    (
        "unknown top-level key",
        lambda text: text + "smtp: {{}}\n",
        "{f}: smtp: unknown key; valid keys are: timezone, database, templates, defaults, senders, routes, groups, delivery, sendmail, retention",
    ),
    (
        "route with bad strategy",
        _replace("default: sales", "default: {{senders: [sales], strategy: fastest}}"),
        "{f}: routes.default.strategy: must be one of failover, round-robin, random, least-used (got 'fastest')",
    ),
    ("empty file", lambda text: "", "{f}: the file is empty; start from senders.yaml.example or run 'mailops init'"),
    (
        "ca_file missing",
        _replace("ca_file: {ca}", "ca_file: missing-ca.pem"),
        "{f}: senders.sales.ca_file: no such file '{root}/missing-ca.pem'; fix the path",
    ),
    (
        "allow_plaintext_auth with starttls",
        _add_to_sender("allow_plaintext_auth: true"),
        "{f}: senders.sales.allow_plaintext_auth: only meaningful with security: none; remove it "
        "(security: starttls already encrypts the login)",
    ),
    (
        "invalid sender email",
        _replace("email: sales@example.com", "email: sales@@example.com"),
        "{f}: senders.sales.email: 'sales@@example.com' is not a valid email address: The part after the @-sign "
        "contains invalid characters: '@'.",
    ),
    (
        "boolean as a limit",
        _add_to_sender("daily_limit: yes"),
        "{f}: senders.sales.daily_limit: must be a number (got true)",
    ),
    (
        "negative timeout",
        _replace("timeout: 5", "timeout: -1"),
        "{f}: senders.sales.timeout: must be more than 0 and at most 600 (got -1)",
    ),
    (
        "active not a boolean",
        _add_to_sender("active: maybe"),
        "{f}: senders.sales.active: must be true or false (got 'maybe')",
    ),
    (
        "sender name with a space",
        _replace("  sales:\n", "  'sales team':\n"),
        "{f}: senders.sales team: a sender name may hold only letters, digits, '.', '_' and '-'; rename it",
    ),
    (
        "no senders",
        lambda text: "timezone: UTC\nsenders: {{}}\n",
        "{f}: senders: no senders defined; add at least one under 'senders:'",
    ),
    (
        "a list, not a mapping",
        lambda text: "- sales\n- support\n",
        "{f}: (top level): must be a mapping of settings (got list)",
    ),
]


@pytest.mark.parametrize(("edit", "message"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_config_is_one_line_exit_2_and_nothing_is_sent(
    workspace, server, ca_file, seed_password, cli, monkeypatch, edit, message
):
    seed_password("sales", DEFAULT_PASSWORD)
    workspace.config_path.write_text(BASE_CONFIG.format(port=server.port, ca=ca_file), encoding="utf-8")
    monkeypatch.setenv("MAILOPS_CONFIG", str(workspace.config_path))
    # the good file works (dry run: validated, nothing sent); only the edit breaks it
    assert cli("send", "--dry-run", "--to", "c@example.org", "--subject", "s", "--body", "b").exit_code == 0
    workspace.db_path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{workspace.db_path}{suffix}").unlink(missing_ok=True)

    workspace.config_path.write_text(edit(BASE_CONFIG).format(port=server.port, ca=ca_file), encoding="utf-8")
    result = cli("send", "--to", "c@example.org", "--subject", "s", "--body", "b")

    assert result.exit_code == 2
    assert result.stdout == ""
    expected = message.format(f=workspace.config_path, root=workspace.root.resolve())
    assert one_error_line(result) == f"mailops: error: {expected}"
    assert server.connections == 0 and server.messages == []
    assert not workspace.db_path.exists()  # stopped before the database was even opened


def test_malformed_config_cases_are_distinct():
    assert len(MALFORMED) >= 15
    assert len({case[2] for case in MALFORMED}) == len(MALFORMED)


# ---------------------------------------------------------------- --debug


def test_debug_shows_the_traceback_of_an_expected_error_and_plain_runs_do_not(workspace, cli):
    config = workspace.write_config({"sales": workspace.sender(None, daly_limit=5)})
    line = f"mailops: error: {config}: senders.sales.daly_limit: unknown key; did you mean 'daily_limit'?"

    plain = cli("password", "status")
    assert plain.exit_code == 2
    assert one_error_line(plain) == line

    debug = cli("--debug", "password", "status")
    assert debug.exit_code == 2
    lines = debug.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "mailops.errors.ConfigError: " + line.removeprefix("mailops: error: ") in lines
    assert lines[-1] == line

    after = cli("password", "status")  # --debug does not stick to the next command
    assert one_error_line(after) == line


def test_debug_as_a_real_process(workspace):
    workspace.write_config({"sales": workspace.sender(None, security="tls")})

    plain = run_mailops("doctor")
    debug = run_mailops("--debug", "doctor")

    assert plain.exit_code == debug.exit_code == 2
    assert one_error_line(plain).endswith(
        "senders.sales.security: must be one of 'starttls', 'ssl' or 'none' (got 'tls')"
    )
    assert "Traceback (most recent call last):" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()


# ---------------------------------------------------------------- init, version, help


def test_version(cli):
    result = cli("--version")
    assert (result.exit_code, result.stdout) == (0, f"mailops {__version__}\n")


COMMANDS = [
    "init",
    "dev-server",
    "demo",
    "test-smtp",
    "doctor",
    "send",
    "deliver",
    "reset-counts",
    "log",
    "stats",
    "password",
    "queue",
]


def _listed_commands(help_text: str) -> list[str]:
    section = help_text.split("Commands:", 1)[1]
    return [line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()]


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: mailops [OPTIONS] COMMAND [ARGS]...")
    assert set(COMMANDS) <= set(_listed_commands(result.stdout))


def test_python_dash_m_mailops_help():
    result = run_mailops("--help")
    assert result.exit_code == 0, result.stderr
    assert set(COMMANDS) <= set(_listed_commands(result.stdout))


# ---------------------------------------------------------------- dev-server and demo


def _wait_for_port(port: int, proc: subprocess.Popen[str], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"dev-server did not listen on {port} within {seconds} s")


def test_dev_server_captures_into_the_maildir_and_stops_cleanly_on_sigint(tmp_path):
    port = free_port()
    maildir = tmp_path / "Maildir"
    proc = popen_mailops("dev-server", "--port", str(port), "--maildir", str(maildir))
    lines: queue.Queue[str] = queue.Queue()

    def read_stdout() -> None:  # a thread, so waiting for a line is bounded by a timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        _wait_for_port(port, proc)
        msg = EmailMessage()
        msg["From"] = "sales@example.com"
        msg["To"] = "customer@example.org"
        msg["Subject"] = "Renewal reminder"
        msg["Message-ID"] = "<dev-1@example.com>"
        msg.set_content("Your plan renews soon.\n")
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            client.send_message(msg)

        printed = lines.get(timeout=10)  # printed while it runs, not only at exit
        assert re.fullmatch(
            r"received <dev-1@example\.com> from sales@example\.com to customer@example\.org: "
            r"'Renewal reminder' \(\d+ bytes\)\n",
            printed,
        ), printed
        [stored] = mailbox.Maildir(maildir, create=False)
        assert stored["Subject"] == "Renewal reminder"
        assert stored.get_payload() == "Your plan renews soon.\n"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in stderr
    assert stderr.splitlines() == [
        f"capturing mail on 127.0.0.1:{port} storing in {maildir}; point a sender at it with security: none and auth: false",
        "stopped after capturing 1 message(s)",
    ]
    with pytest.raises(OSError):  # the port is released
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_dev_server_port_in_use_is_one_line_exit_2():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run_mailops("dev-server", "--port", str(port), timeout=30)
    assert result.exit_code == 2
    assert one_error_line(result) == f"mailops: error: 127.0.0.1:{port} is already in use: pick another --port"


def test_demo_runs_a_merge_and_shows_the_capture_and_the_log(tmp_path):
    folder = tmp_path / "demo"

    result = run_mailops("demo", "--dir", str(folder))

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "sent 3, deferred 0, failed 0" in out
    for rcpt, date in (("anna.schmidt", "01"), ("somchai", "03"), ("jules", "05")):
        assert f"  captured: sales@example.com -> {rcpt}@example.com: Your subscription renews on 2026-12-{date}" in out
    log_part = out.split("log --limit 10", 1)[1]
    assert len(re.findall(r"\bsent +sales +renewal ", log_part)) == 3
    assert len(list(mailbox.Maildir(folder / "maildir", create=False))) == 3


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["send", "--bogus"], "send: No such option: --bogus (Possible options: --body); see 'mailops send --help'"),
        (["bogus-cmd"], "No such command 'bogus-cmd'; see 'mailops --help'"),
        (["queue", "bogus"], "queue: No such command 'bogus'; see 'mailops queue --help'"),
        (["password", "set"], "password set: Missing argument 'SENDER'; see 'mailops password set --help'"),
        (["log", "--limit"], "Option '--limit' requires an argument; see 'mailops --help'"),
    ],
)
def test_a_usage_error_is_one_line_exit_2(args, expected):
    # A crontab typo reads like every other bad input: one line, exit 2 (not click's Usage/Try/Error block).
    result = run_mailops(*args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"mailops: error: {expected}"]
    assert result.stdout == ""


def test_mailops_alone_still_shows_the_help():
    result = run_mailops()
    assert result.exit_code == 2
    assert "Usage: mailops [OPTIONS] COMMAND [ARGS]..." in result.stdout + result.stderr
