"""Hostile data files and templates: every resource they control is bounded, every bad input is one line, exit 2.

Each hostile case runs ``mailops`` as a real process under a timeout and an
address-space limit (``run_bounded``), so a regression fails the test instead
of hanging the suite or exhausting the machine. Each checks the exact error
line, exit code 2, and that the server received nothing and the outbox holds
nothing.
"""

from __future__ import annotations

import os

import pytest

from tests.fixtures_cli import run_bounded

PASSWORD = "s3cret-pass"


@pytest.fixture
def ws(workspace, smtp_server):
    """A workspace with one sender on a live server (``ws.srv``), a 'default' route and an empty outbox."""
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    workspace.srv = srv
    return workspace


def _refused(ws, result, line: str) -> None:
    """Exit 2, exactly ``line`` on stderr, nothing sent, nothing queued."""
    assert (result.exit_code, result.stderr.splitlines()) == (2, [f"mailops: error: {line}"]), result.output
    assert ws.srv.connections == 0 and ws.srv.messages == []
    assert not ws.db_path.exists() or ws.query("SELECT COUNT(*) FROM messages") == [(0,)]


def _file(ws, name: str, data: bytes = b"%PDF-1.4 test") -> str:
    path = ws.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------- attachment paths are data, not templates


def test_a_row_attachment_that_looks_like_a_template_is_not_rendered(ws):
    data = ws.csv(
        "c.csv",
        [
            {
                "email": "a@example.org",
                "attachments": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x.pdf",
            }
        ],
    )
    result = run_bounded("send", "--data", data, "--subject", "S", "--body", "B", "--dry-run")
    value = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x.pdf"
    _refused(
        ws,
        result,
        f"c.csv row 1: column 'attachments': {value!r} looks like a template, but values from a data file are "
        f"never rendered; put the pattern in the command instead (--attach {value!r}) (nothing was sent)",
    )


def test_an_attach_template_gives_each_row_its_own_file(ws, cli, monkeypatch):
    _file(ws, "invoices/C-1.pdf", b"invoice one")
    _file(ws, "invoices/C-2.pdf", b"invoice two")
    data = ws.csv(
        "c.csv", [{"email": "a@example.org", "contract": "C-1"}, {"email": "b@example.org", "contract": "C-2"}]
    )
    monkeypatch.chdir(ws.root)

    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "--attach", "invoices/{{ contract }}.pdf")

    assert result.exit_code == 0, result.output
    got = {
        m.rcpt_tos[0]: [(a.get_filename(), a.get_content()) for a in m.message.iter_attachments()]
        for m in ws.srv.messages
    }
    assert got == {"a@example.org": [("C-1.pdf", b"invoice one")], "b@example.org": [("C-2.pdf", b"invoice two")]}


def test_an_attach_template_renders_with_var_for_a_single_message(ws, cli, monkeypatch):
    _file(ws, "invoices/C-9.pdf", b"nine")
    monkeypatch.chdir(ws.root)
    result = cli(
        "send",
        "--to",
        "a@example.org",
        "--subject",
        "S",
        "--body",
        "B",
        "--var",
        "contract=C-9",
        "--attach",
        "invoices/{{ contract }}.pdf",
    )
    assert result.exit_code == 0, result.output
    [received] = ws.srv.messages
    assert [(a.get_filename(), a.get_content()) for a in received.message.iter_attachments()] == [("C-9.pdf", b"nine")]


def test_an_attach_template_cannot_leave_the_folder_it_names(ws, monkeypatch):
    _file(ws, "invoices/C-1.pdf")
    _file(ws, "secret.pdf")
    data = ws.csv("c.csv", [{"email": "a@example.org", "contract": "../secret"}])
    monkeypatch.chdir(ws.root)

    result = run_bounded(
        "send", "--data", data, "--subject", "S", "--body", "B", "--attach", "invoices/{{ contract }}.pdf"
    )

    _refused(
        ws,
        result,
        f"c.csv row 1: --attach 'invoices/{{{{ contract }}}}.pdf' renders 'invoices/../secret.pdf': outside "
        f"{ws.root / 'invoices'} (the folder it names); data rows may only attach files from there: fix the row's "
        "value or the pattern, or pass --allow-attachments-outside (nothing was sent)",
    )


# ---------------------------------------------------------------- row attachments stay in their folder


@pytest.mark.parametrize("value", ["../outside.pdf", "{root}/outside.pdf", "link.pdf"])
def test_row_attachments_stay_inside_the_data_files_folder(ws, value):
    outside = _file(ws, "outside.pdf")
    (ws.root / "run").mkdir()
    os.symlink(outside, ws.root / "run" / "link.pdf")  # a symlink is followed before the check
    value = value.format(root=ws.root)
    data = ws.csv("run/c.csv", [{"email": "a@example.org", "attachments": value}])

    result = run_bounded("send", "--data", data, "--subject", "S", "--body", "B")

    _refused(
        ws,
        result,
        f"c.csv row 1: column 'attachments': {value!r}: outside {ws.root / 'run'} (the attachments folder); data rows "
        "may only attach files from there: move the file, point --attachments-dir at its folder, or pass "
        "--allow-attachments-outside (nothing was sent)",
    )


def test_allow_attachments_outside_and_attachments_dir_are_the_operators_way_out(ws, cli):
    _file(ws, "outside.pdf", b"outside")
    _file(ws, "files/inv.pdf", b"inv")
    (ws.root / "run").mkdir()
    data = ws.csv("run/c.csv", [{"email": "a@example.org", "attachments": "../outside.pdf"}])
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--allow-attachments-outside").exit_code == 0
    data2 = ws.csv("run/d.csv", [{"email": "b@example.org", "attachments": "inv.pdf"}])
    assert (
        cli("send", "--data", data2, "--subject", "S", "--body", "B", "--attachments-dir", ws.root / "files").exit_code
        == 0
    )
    got = [[a.get_content() for a in m.message.iter_attachments()] for m in ws.srv.messages]
    assert got == [[b"outside"], [b"inv"]]


# ---------------------------------------------------------------- only regular files, never more than a limit


def test_a_row_attachment_that_is_a_fifo_is_refused(ws):
    os.mkfifo(ws.root / "pipe.pdf")
    data = ws.csv("c.csv", [{"email": "a@example.org", "attachments": "pipe.pdf"}])
    result = run_bounded("send", "--data", data, "--subject", "S", "--body", "B")
    _refused(
        ws,
        result,
        f"c.csv row 1: attachment '{ws.root / 'pipe.pdf'}': not a regular file (a device, FIFO or socket); "
        "name a regular file (nothing was sent)",
    )


def test_a_row_attachment_of_dev_zero_is_refused_even_when_outside_is_allowed(ws):
    data = ws.csv("c.csv", [{"email": "a@example.org", "attachments": "/dev/zero"}])
    result = run_bounded("send", "--data", data, "--subject", "S", "--body", "B", "--allow-attachments-outside")
    _refused(
        ws,
        result,
        "c.csv row 1: attachment '/dev/zero': not a regular file (a device, FIFO or socket); name a regular file "
        "(nothing was sent)",
    )


@pytest.mark.parametrize("option", ["--attach", "--body-file"])
def test_attach_and_body_file_of_dev_zero_are_not_regular_files(ws, option):
    args = ["--body", "B"] if option == "--attach" else []
    result = run_bounded("send", "--to", "a@example.org", "--subject", "S", *args, option, "/dev/zero")
    _refused(ws, result, f"{option} /dev/zero: not a regular file (a device, FIFO or socket); name a regular file")


def test_a_fifo_body_file_is_refused(ws):
    os.mkfifo(ws.root / "body.txt")
    result = run_bounded("send", "--to", "a@example.org", "--subject", "S", "--body-file", ws.root / "body.txt")
    _refused(
        ws,
        result,
        f"--body-file {ws.root / 'body.txt'}: not a regular file (a device, FIFO or socket); name a regular file",
    )


def test_an_attachment_over_the_size_limit_is_refused_before_reading(ws):
    _file(ws, "big.pdf", b"x" * 2000)
    data = ws.csv("c.csv", [{"email": "a@example.org", "attachments": "big.pdf"}])
    result = run_bounded(
        "send", "--data", data, "--subject", "S", "--body", "B", env={"MAILOPS_ATTACHMENT_MAX_BYTES": "1000"}
    )
    _refused(
        ws,
        result,
        f"c.csv row 1: attachment '{ws.root / 'big.pdf'}': larger than the limit of 1,000 bytes; use a smaller file "
        "or raise MAILOPS_ATTACHMENT_MAX_BYTES (nothing was sent)",
    )


def test_a_bad_limit_variable_is_one_line(ws):
    result = run_bounded(
        "send",
        "--to",
        "a@example.org",
        "--subject",
        "S",
        "--body",
        "B",
        "--attach",
        _file(ws, "a.pdf"),
        env={"MAILOPS_ATTACHMENT_MAX_BYTES": "lots"},
    )
    _refused(
        ws,
        result,
        "MAILOPS_ATTACHMENT_MAX_BYTES: must be a whole number of bytes from 1 to 2,147,483,648 (got 'lots'); "
        "fix or unset it",
    )


def test_a_data_file_of_dev_zero_is_refused(ws):
    link = ws.root / "c.json"
    os.symlink("/dev/zero", link)
    result = run_bounded("send", "--data", link, "--subject", "S", "--body", "B")
    _refused(ws, result, f"{link}: not a regular file (a device, FIFO or socket); name a regular file")


# ---------------------------------------------------------------- rendering has a time and a size limit


def test_nested_loops_in_a_template_stop_at_the_deadline(ws):
    ws.template("t", "S\n", "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}\n")
    data = ws.csv("c.csv", [{"email": "a@example.org"}])
    result = run_bounded("send", "--data", data, "--template", "t", "--dry-run", env={"MAILOPS_RENDER_SECONDS": "1"})
    _refused(
        ws,
        result,
        "c.csv row 1: template t/body.txt: rendering took longer than 1 s; simplify the template "
        "(or raise MAILOPS_RENDER_SECONDS) (nothing was sent)",
    )


@pytest.mark.parametrize(
    ("body", "size"),
    [
        ("{{ 'x' * 10**10 }}", "10,000,000,000"),
        ("{{ 'x'|center(10**10) }}", "10,000,000,000"),
        ("{{ 'x'.ljust(10**10) }}", "10,000,000,000"),
        ("{{ '%0999999999d' % 1 }}", "999,999,999"),
        ("{{ '{:>999999999}'.format(1) }}", "999,999,999"),
        ("{{ ('x' * 1000)|replace('x', 'y' * 100000) }}", "100,000,000"),
    ],
)
def test_an_expression_that_would_build_a_huge_text_is_refused_before_building_it(ws, body, size):
    result = run_bounded("send", "--to", "a@example.org", "--subject", "S", "--body", body, "--dry-run")
    _refused(
        ws,
        result,
        f"message: template --body: would build a text of {size} characters, over the limit of 5,000,000; "
        "fix the template (or raise MAILOPS_RENDER_MAX_CHARS) (nothing was sent)",
    )


@pytest.mark.parametrize(
    "body",
    [
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ f('x', 40) }}",
        "{% set ns = namespace(s=['x']) %}{% for i in range(40) %}{% set ns.s = [ns.s|join, ns.s|join] %}{% endfor %}"
        "{{ ns.s|length }}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}"
        "{{ ns.s|length }}",
    ],
    ids=["namespace ~", "macro recursion", "join", "replace"],
)
def test_a_value_doubling_in_a_loop_or_recursion_stops_at_the_size_limit(ws, body):
    result = run_bounded("send", "--to", "a@example.org", "--subject", "S", "--body", body, "--dry-run")
    _refused(
        ws,
        result,
        "message: template --body: would build a text of 8,388,608 characters, over the limit of 5,000,000; "
        "fix the template (or raise MAILOPS_RENDER_MAX_CHARS) (nothing was sent)",
    )


def test_output_beyond_the_size_limit_stops_while_streaming(ws):
    body = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    result = run_bounded("send", "--to", "a@example.org", "--subject", "S", "--body", body, "--dry-run")
    _refused(
        ws,
        result,
        "message: template --body: renders more than 5,000,000 characters; fix the template "
        "(or raise MAILOPS_RENDER_MAX_CHARS) (nothing was sent)",
    )


def test_ordinary_templates_still_render_with_the_bounded_sandbox(ws, cli):
    body = (
        "{{ range(3)|list }} {{ 'ab' * 2 }} {{ 2**10 }} {{ '%5.1f' % 2.5 }} {{ '{:>4}'.format(7) }} {{ 'x'|center(5) }}|"
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + 1 %}{% endfor %}"
        "{{ 'n=' ~ ns.n }} {{ ['a', 'b']|join(',') }}"
    )
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", body).exit_code == 0
    [received] = ws.srv.messages
    assert received.message.get_content().rstrip("\r\n") == "[0, 1, 2] abab 1024   2.5    7   x  |n=3 a,b"


# ---------------------------------------------------------------- YAML aliases


def test_yaml_aliases_in_a_data_file_are_refused(ws):
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        prev = chr(ord(level) - 1)
        bomb.append(f"{level}: &{level} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    text = "- email: a@example.org\n  unused:\n" + "".join(f"    {line}\n" for line in bomb)
    path = ws.root / "c.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_bounded("send", "--data", path, "--subject", "S", "--body", "B")
    _refused(
        ws,
        result,
        f"{path} line 4 column 12: invalid YAML: aliases (*name) are not allowed in a data file "
        "(write each value out); fix the file",
    )


# ---------------------------------------------------------------- one line, exit 2, for every bad input


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.json", '[{"email": "a@example.org", "x": ' + "[" * 100_000 + "]" * 100_000 + "}]"),
        ("c.yaml", "- email: a@example.org\n  x: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("c.json", '[{"email": "a@example.org", "x": ' + "[" * 60 + "]" * 60 + "}]"),
    ],
    ids=["json 100,000 deep", "yaml 100,000 deep", "json 60 deep"],
)
def test_a_data_file_nested_too_deeply_is_one_line(ws, name, text):
    path = ws.root / name
    path.write_text(text, encoding="utf-8")
    result = run_bounded("send", "--data", path, "--subject", "S", "--body", "B")
    _refused(
        ws,
        result,
        f"{path}: values are nested too deeply (more than 50 levels of lists and mappings); flatten the data",
    )


def test_senders_yaml_nested_100000_deep_is_one_line(ws):
    text = ws.config_path.read_text(encoding="utf-8")
    ws.config_path.write_text(text + "groups:\n  g: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    result = run_bounded("send", "--to", "a@example.org", "--subject", "S", "--body", "B")
    _refused(
        ws,
        result,
        f"{ws.config_path}: values are nested too deeply (more than 50 levels of lists and mappings); fix the file",
    )


def test_an_out_of_range_number_in_senders_yaml_names_the_range(ws):
    text = ws.config_path.read_text(encoding="utf-8")
    ws.config_path.write_text(
        text.replace("    timeout: 5\n", "    timeout: 5\n    min_interval: 1.0e+300\n"), encoding="utf-8"
    )
    result = run_bounded("send", "--to", "a@example.org", "--subject", "S", "--body", "B")
    _refused(ws, result, f"{ws.config_path}: senders.sales.min_interval: must be from 0 to 86400 (got 1e+300)")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["log", "--limit", "9223372036854775808"],
            "log: Invalid value for '--limit': must be from 1 to 10000000; see 'mailops log --help'",
        ),
        (
            ["queue", "list", "--limit", str(10**30)],
            "queue list: Invalid value for '--limit': must be from 1 to 10000000; see 'mailops queue list --help'",
        ),
        *[
            (
                ["queue", command, str(10**30)],
                f"queue {command}: Invalid value for 'ID': must be from 1 to 9223372036854775807; "
                f"see 'mailops queue {command} --help'",
            )
            for command in ("show", "retry", "cancel")
        ],
        (
            ["deliver", "--limit", str(10**30)],
            "deliver: Invalid value for '--limit': must be from 1 to 10000000; see 'mailops deliver --help'",
        ),
        (
            ["deliver", "--max-seconds", "1e300"],
            "deliver: Invalid value for '--max-seconds': must be from 0 to 604800; see 'mailops deliver --help'",
        ),
        (
            ["send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--limit", str(10**30)],
            "send: Invalid value for '--limit': must be from 1 to 10000000; see 'mailops send --help'",
        ),
        (
            ["dev-server", "--port", "99999"],
            "dev-server: Invalid value for '--port': must be from 1 to 65535; see 'mailops dev-server --help'",
        ),
        (
            ["init", "/etc/hostname"],
            "/etc/hostname is a file, not a folder; pass a folder for senders.yaml and templates/",
        ),
        (["queue", "cancel", "999999"], "no message with id 999999 in the outbox; see 'mailops queue list'"),
        (["queue", "retry", "999999"], "no message with id 999999 in the outbox; see 'mailops queue list'"),
        (["queue", "show", "999999"], "no message with id 999999 in the outbox; see 'mailops queue list'"),
        (["queue", "cancel", "--batch", "nope"], "no message in batch 'nope' in the outbox; see 'mailops queue list'"),
        (["queue", "retry", "--batch", "nope"], "no message in batch 'nope' in the outbox; see 'mailops queue list'"),
    ],
    ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else None,
)
def test_an_out_of_range_option_or_unknown_id_is_one_line(ws, cli, args, line):
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    ws.srv.connections = 0
    before = ws.query("SELECT id, state, due_at, updated_at FROM messages")

    result = run_bounded(*args)

    assert (result.exit_code, result.stderr.splitlines()) == (2, [f"mailops: error: {line}"]), result.output
    assert ws.srv.messages == [] and ws.query("SELECT id, state, due_at, updated_at FROM messages") == before


def test_an_impossible_due_time_in_the_outbox_cannot_crash_queue_list_or_show(ws, cli):
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    ws.query("UPDATE messages SET state = 'deferred', due_at = 1e300, reason = 'quota: min_interval'")

    listed = run_bounded("queue", "list")
    shown = run_bounded("queue", "show", "1")
    delivered = run_bounded("deliver")

    assert listed.exit_code == 0 and "(invalid time 1e+300)" in listed.stdout, listed.output
    assert shown.exit_code == 0 and "due: (invalid time 1e+300)" in shown.stdout, shown.output
    assert delivered.exit_code == 0 and "Traceback" not in delivered.output, delivered.output
    assert ws.srv.messages == [] and ws.states() == {"deferred": 1}


def test_damaged_columns_in_the_outbox_cannot_crash_queue_list_or_show(ws, cli):
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    ws.query(
        "UPDATE messages SET recipients = 'not json', candidates = '{}', recipient_status = '[1]', mime = X'00', "
        "due_at = -1e300"
    )

    listed = run_bounded("queue", "list")
    shown = run_bounded("queue", "show", "1")

    assert listed.exit_code == 0 and "not json" in listed.stdout, listed.output
    assert shown.exit_code == 0 and "-> not json" in shown.stdout and "  ?: [1]" in shown.stdout, shown.output
    assert ws.srv.messages == []


def test_a_database_written_by_a_newer_mailops_is_refused(ws, cli):
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    ws.query("INSERT INTO schema_migrations (name, applied_at) VALUES ('999_from_the_future', 1.0)")
    line = (
        "this database was written by a newer mailops (schema step '999_from_the_future' is unknown to this version): "
        f"sqlite:///{ws.db_path}; upgrade mailops on this host, or point 'database:' at another database; nothing was sent"
    )
    for args in (["deliver"], ["log"], ["queue", "list"], ["db", "status"]):
        result = run_bounded(*args)
        assert (result.exit_code, result.stderr.splitlines()) == (2, [f"mailops: error: {line}"]), (args, result.output)
    assert ws.srv.messages == [] and ws.states() == {"queued": 1}
