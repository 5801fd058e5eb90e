"""First steps: ``mailops init`` and the README's "Use it for real" sequence, end to end.

The sequence is read from README.md itself (so the test breaks when the README
drifts) and run as real processes in a fresh folder against a real
``mailops dev-server``: once with a keyring (the test's file backend) and once
on a "headless" machine where keyring's own fail or null backend is all there is.
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import mailbox
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from mailops import scaffold
from tests.fixtures_cli import CliResult, popen_mailops, run_mailops
from tests.fixtures_home import REPO_ROOT
from tests.fixtures_pg import free_port

README = REPO_ROOT / "README.md"
PASSWORD = "app-password-for-sales"
#: the five lines the README says to uncomment under `sales` to point the sender at the dev-server
DEV_SERVER_KEYS = ["provider: null", "host: 127.0.0.1", "port: 8025", "security: none", "auth: false"]
HEADLESS_LINE = "read -rs MAILOPS_PASSWORD_SALES && export MAILOPS_PASSWORD_SALES"


def _readme_block(after: str) -> list[str]:
    """The command lines (comments cut off) of the first ```sh block after the line ``after`` in README.md."""
    text = README.read_text(encoding="utf-8")
    assert after in text, f"README.md has no {after!r}"
    block = re.search(r"```sh\n(.*?)```", text[text.index(after) :], re.S)
    assert block is not None
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def readme_sequence() -> list[str]:
    """The README's "Use it for real" commands."""
    return _readme_block("### Use it for real")


class DevServer:
    """``mailops dev-server`` as a real process on a free loopback port, storing into a Maildir."""

    def __init__(self, maildir: Path) -> None:
        self.port = free_port()
        self.maildir = maildir
        self.proc = popen_mailops("dev-server", "--port", str(self.port), "--maildir", str(maildir))
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        first = self._line()
        assert first.startswith(f"capturing mail on 127.0.0.1:{self.port} "), first

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def _line(self) -> str:
        try:
            return self.lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"dev-server printed nothing (exit {self.proc.poll()})") from None

    def received(self) -> list[Any]:
        """The captured messages (To, Subject), sorted."""
        box = mailbox.Maildir(self.maildir, factory=None, create=False)
        parsed = [email.message_from_bytes(box.get_bytes(key), policy=email.policy.default) for key in box.iterkeys()]
        return sorted((str(m["To"]), str(m["Subject"])) for m in parsed)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def _run(folder: Path, line: str, env: dict[str, str], input: str | None = None) -> CliResult:
    """One README command line (``mailops ...``) as a real ``python -m mailops`` process in ``folder``."""
    argv = shlex.split(line)
    assert argv[0] == "mailops", line
    if input is None:
        return run_mailops(*argv[1:], cwd=folder, env=env)
    # run_mailops gives the process no standard input; this step needs one
    from tests.fixtures_cli import mailops_command

    proc = subprocess.run(
        mailops_command(*argv[1:]),
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env={**os.environ, **env},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _point_at_dev_server(config: Path, port: int) -> None:
    """The README's "$EDITOR senders.yaml" step for a trial: uncomment the lines it names, with the test's port."""
    text = config.read_text(encoding="utf-8")
    for key in DEV_SERVER_KEYS:
        commented = f"    # {key}\n"
        assert text.count(commented) == 1, (key, text)
        text = text.replace(commented, f"    {key.replace('8025', str(port))}\n")
    config.write_text(text, encoding="utf-8")


def _printed_commands(init_output: str) -> list[str]:
    """The command lines in init's next steps (indented five spaces, starting with a command's name)."""
    return [
        line.strip()
        for line in init_output.splitlines()
        if line.startswith("     ") and line.split()[0] in ("mailops", "read", "cd")
    ]


def test_the_readme_names_the_dev_server_lines_of_the_starter_config():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Use it for real") : text.index("## Configuration")]
    assert "`provider: null`, `host: 127.0.0.1`,\n`port: 8025`, `security: none`, `auth: false`" in section
    assert HEADLESS_LINE in section
    for key in DEV_SERVER_KEYS:
        assert f"    # {key}\n" in scaffold.STARTER_CONFIG


@pytest.mark.parametrize(
    "keyring_backend", ["test keyring", "keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"]
)
def test_readme_use_for_real_sequence_runs_end_to_end_against_the_dev_server(tmp_path, isolated_home, keyring_backend):
    steps = readme_sequence()
    assert steps[0] == "mailops init" and steps[1] == "$EDITOR senders.yaml", steps
    assert steps[-1] == "mailops log", steps
    headless = keyring_backend != "test keyring"
    env: dict[str, str] = {"COLUMNS": "80"}
    if headless:
        env["PYTHON_KEYRING_BACKEND"] = keyring_backend
    folder = tmp_path / "mail"
    folder.mkdir()
    dev = DevServer(tmp_path / "Maildir")
    try:
        results = []
        for line in steps:
            if line == "$EDITOR senders.yaml":
                _point_at_dev_server(folder / "senders.yaml", dev.port)
                continue
            if line == "mailops password set sales" and headless:
                # the README's headless alternative: the variable, set in the shell that runs the rest
                env["MAILOPS_PASSWORD_SALES"] = PASSWORD
                continue
            if line == "mailops password set sales":
                # no terminal here to ask twice: the same command reading a pipe, as the README says
                result = _run(folder, line + " --stdin", env, input=PASSWORD + "\n")
            else:
                result = _run(folder, line, env)
            assert result.exit_code == 0, (line, result.output)
            results.append((line, result))
        sent = dev.received()
    finally:
        dev.stop()

    init = results[0][1]
    assert init.stdout.splitlines()[:5] == [
        f"created {p}"
        for p in (
            "senders.yaml",
            "templates/renewal/subject.txt",
            "templates/renewal/body.txt",
            "templates/renewal/body.html",
            "customers.csv",
        )
    ]
    # init's next steps are the README's commands, with the password step this machine needs
    printed = _printed_commands(init.stdout)
    expected = steps[2:]
    if headless:
        expected[0] = HEADLESS_LINE
        assert f"  2. no usable keyring here ({keyring_backend});" in init.stdout.splitlines()
    assert printed == expected, init.stdout

    # the trial sender logs in to nobody (auth: false); the password went where the step put it
    assert isolated_home.passwords() == ({} if headless else {"sales": PASSWORD})
    assert sent == [
        ("Anna Schmidt <anna.schmidt@example.com>", "Your subscription renews on 2026-12-01"),
        ("Jules Müller 🚀 <jules@example.com>", "Your subscription renews on 2026-12-05"),
        ("สมชาย ใจดี <somchai@example.com>", "Your subscription renews on 2026-12-03"),
    ]
    outputs = dict(results)
    assert outputs[steps[-2]].stdout.splitlines()[-1] == "batch 'first-renewals': 3 message(s): 3 sent"
    logged = json.loads(_run(folder, "mailops log --json", env).stdout)
    assert [(r["outcome"], r["route"], r["batch"]) for r in logged] == [("sent", "renewal", "first-renewals")] * 3
    assert PASSWORD not in "".join(r.output for _, r in results)


# ---------------------------------------------------------------- mailops init


STARTER = [
    "senders.yaml",
    "templates/renewal/subject.txt",
    "templates/renewal/body.txt",
    "templates/renewal/body.html",
    "customers.csv",
]


def _one_error_line(result: CliResult) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_init_writes_a_config_whose_route_template_and_data_fit_together(tmp_path, cli, monkeypatch):
    target = tmp_path / "new-site"

    created = cli("init", str(target))

    assert created.exit_code == 0, created.output
    assert created.stdout.splitlines()[:6] == [f"created {target / p}" for p in STARTER] + ["next steps:"]
    assert created.stdout.splitlines()[6:9] == [
        "  0. go to the new folder (mailops reads ./senders.yaml):",
        f"     cd {target}",
        "  1. edit senders.yaml: your sender's address and provider (or host), routes, groups",
    ]
    assert created.stdout.splitlines()[9:11] == [
        "  2. store the password of sender 'sales' in the keyring (tests.keyring_backend.FileKeyring):",
        "     mailops password set sales",
    ]
    from mailops.config import load_config

    config = load_config(target / "senders.yaml")
    sales = config.senders["sales"]
    assert (sales.host, sales.port, sales.security, sales.provider) == ("smtp.gmail.com", 587, "starttls", "gmail")
    assert set(config.routes) == {"renewal", "default"}
    rows = list(csv.DictReader(io.StringIO((target / "customers.csv").read_text(encoding="utf-8"))))
    variables = set(re.findall(r"{{ (\w+)", "".join((target / p).read_text(encoding="utf-8") for p in STARTER[1:4])))
    assert variables - {"sender"} <= set(rows[0]), (variables, rows[0])

    # the whole first run renders: every row through the route with the template, nothing sent
    monkeypatch.chdir(target)
    monkeypatch.setenv("MAILOPS_PASSWORD_SALES", "x")
    dry = cli("send", "--route", "renewal", "--template", "renewal", "--data", "customers.csv", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[-1] == "dry run: 3 message(s) valid via renewal (sales); nothing queued or sent"


def test_init_never_overwrites_without_force(tmp_path, cli):
    target = tmp_path / "site"
    target.mkdir()
    (target / "senders.yaml").write_text("# my edits\n", encoding="utf-8")

    again = cli("init", str(target))

    assert again.exit_code == 2
    assert _one_error_line(again) == (
        f"mailops: error: {target / 'senders.yaml'} already exists; edit it, or run 'mailops init --force' to "
        "replace the starter files (senders.yaml, templates/renewal/, customers.csv), or 'mailops init' in another folder"
    )
    assert again.stdout == ""
    assert sorted(p.name for p in target.iterdir()) == ["senders.yaml"]
    assert (target / "senders.yaml").read_text(encoding="utf-8") == "# my edits\n"


def test_init_keeps_existing_starter_files_and_says_so(tmp_path, cli):
    target = tmp_path / "site"
    (target / "templates" / "renewal").mkdir(parents=True)
    (target / "templates" / "renewal" / "body.txt").write_text("my body\n", encoding="utf-8")
    (target / "customers.csv").write_text("email\nme@example.com\n", encoding="utf-8")

    result = cli("init", str(target))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:5] == [
        f"created {target / 'senders.yaml'}",
        f"created {target / 'templates/renewal/subject.txt'}",
        f"kept {target / 'templates/renewal/body.txt'} (it exists; --force replaces it)",
        f"created {target / 'templates/renewal/body.html'}",
        f"kept {target / 'customers.csv'} (it exists; --force replaces it)",
    ]
    assert (target / "templates" / "renewal" / "body.txt").read_text(encoding="utf-8") == "my body\n"
    assert (target / "customers.csv").read_text(encoding="utf-8") == "email\nme@example.com\n"


def test_init_force_replaces_the_starter_files_but_not_what_a_symlink_points_to(tmp_path, cli):
    target = tmp_path / "site"
    target.mkdir()
    (target / "senders.yaml").write_text("# old\n", encoding="utf-8")
    elsewhere = tmp_path / "precious.csv"
    elsewhere.write_text("keep me\n", encoding="utf-8")
    (target / "customers.csv").symlink_to(elsewhere)

    result = cli("init", "--force", str(target))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:5] == [
        f"replaced {target / 'senders.yaml'}",
        *[f"created {target / p}" for p in STARTER[1:4]],
        f"replaced {target / 'customers.csv'}",
    ]
    assert (target / "senders.yaml").read_text(encoding="utf-8") == scaffold.STARTER_CONFIG
    assert not (target / "customers.csv").is_symlink()
    assert (target / "customers.csv").read_text(encoding="utf-8") == scaffold.SAMPLE_DATA
    assert elsewhere.read_text(encoding="utf-8") == "keep me\n"
    assert sorted(p.name for p in target.iterdir()) == ["customers.csv", "senders.yaml", "templates"]  # no temp file


def test_init_in_the_current_folder_on_a_headless_machine_offers_the_variable(isolated_home):
    result = run_mailops("init", env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[5:12] == [
        "next steps:",
        "  1. edit senders.yaml: your sender's address and provider (or host), routes, groups",
        "  2. no usable keyring here (keyring.backends.fail.Keyring);",
        "     give the password of sender 'sales' in the environment instead",
        "     (read -s keeps it off the screen and out of the shell history):",
        f"     {HEADLESS_LINE}",
        "     (for cron: password_command: on the sender in senders.yaml)",
    ]
    assert "password set" not in result.stdout
    assert (isolated_home.cwd / "senders.yaml").is_file()
