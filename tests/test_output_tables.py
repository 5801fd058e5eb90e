"""Tables as cron mail, a pipe and ``less`` get them: 80 columns, no value wrapped, times with their zone.

Real sends to an aiosmtpd server fill the log and the outbox with long
addresses, subjects and server replies; the commands then run as separate
processes with their output on a pipe (not a terminal), NO_COLOR, and
COLUMNS=80 or no COLUMNS at all (Rich's default outside a terminal: 80).
The progress bar is read from a pseudo-terminal, as a person sees it.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys

import pytest
from rich.cells import cell_len

from mailops.cli.output import fit_widths
from tests.fixtures_cli import CliResult, Workspace, mailops_command, run_mailops
from tests.smtp_servers import refusing

LONG_TO = "firstname.lastname.with.a.long.department@subsidiary.example.org"
LONG_SUBJECT = "Your subscription renews on 2026-12-01: please check the payment details we hold for you"
GONE = "gone.away.for.good@example.org"
#: a time as tables show it: local date and time, then the zone's abbreviation (CET in December, CEST in summer)
ZONED = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T"


@pytest.fixture
def filled(workspace: Workspace, server, cli) -> Workspace:
    """Berlin time; sales sent one long message, one recipient refused (failed), one message due in an hour."""
    workspace.write_config({"sales": workspace.sender(server)}, routes={"default": "sales"}, timezone="Europe/Berlin")
    server.rcpt_hook = refusing(GONE)
    assert cli("send", "--to", LONG_TO, "--subject", LONG_SUBJECT, "--body", "b").exit_code == 0
    assert cli("send", "--to", GONE, "--subject", "Refused", "--body", "b").exit_code == 1
    assert (
        cli("send", "--to", "later@example.org", "--subject", LONG_SUBJECT, "--body", "b", "--at", "+1h").exit_code == 0
    )
    assert (
        cli(
            "suppress", "add", LONG_TO, "--reason", ("asked us in writing to stop every mailing " * 3).strip()
        ).exit_code
        == 0
    )
    return workspace


def _pipe(*args: str, columns: int | None = 80) -> CliResult:
    result = run_mailops(*args, env={"COLUMNS": str(columns)} if columns else None)
    assert result.exit_code == 0, result.output
    return result


def _fits(text: str, columns: int = 80) -> list[str]:
    lines = text.splitlines()
    too_long = [line for line in lines if cell_len(line) > columns]
    assert not too_long, "\n".join(too_long)
    return lines


def _row(lines: list[str], marker: str) -> str:
    [line] = [line for line in lines if marker in line]
    return line


def test_log_fits_80_columns_cuts_long_values_and_shows_the_zone(filled):
    lines = _fits(_pipe("log").stdout)
    assert lines[0].split() == ["time", "outcome", "sender", "route", "to", "subject", "smtp", "detail"]
    assert set(lines[1]) == {"─"}
    sent, failed = _row(lines, " sent "), _row(lines, " failed ")
    assert re.match(ZONED + "  sent ", sent), sent
    assert re.match(ZONED + "  failed ", failed), failed
    assert "…" in sent and LONG_TO not in sent and LONG_SUBJECT not in sent
    assert len(lines) == 4  # heading, rule, two attempts: no value wrapped onto a line of its own

    wide = _pipe("log", "--wide").stdout.splitlines()
    sent = _row(wide, " sent ")
    assert LONG_TO in sent and LONG_SUBJECT in sent and "…" not in sent
    assert GONE in _row(wide, " failed ") and "5.1.1 no such user  permanent failure at rcpt" in _row(wide, " failed ")


def test_a_log_query_matching_nothing_says_so_without_an_empty_table(filled):
    assert _pipe("log", "--to", "nobody@example.net").stdout == "no attempts match\n"


def test_without_columns_a_pipe_gets_80(filled, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    for args in (["log"], ["queue", "list"], ["stats"], ["suppress", "list"]):
        lines = _fits(_pipe(*args, columns=None).stdout)
        assert max(cell_len(line) for line in lines) > 60, (args, lines)  # the room is used, not wasted


def test_queue_list_fits_and_shows_due_times_with_their_zone(filled):
    lines = _fits(_pipe("queue", "list").stdout)
    assert lines[0].split() == ["id", "state", "due", "sender", "to", "subject", "attempts", "reason"]
    queued = _row(lines, " queued ")
    assert re.search(r"queued +" + ZONED + "  sales ", queued), queued
    assert "…" in queued and LONG_SUBJECT not in queued
    assert lines[-1] == "failed: 1  queued: 1  sent: 1"
    assert LONG_SUBJECT in _row(_pipe("queue", "list", "--wide").stdout.splitlines(), " queued ")


def test_queue_show_times_carry_the_zone(filled):
    [(msg_id,)] = filled.query("SELECT id FROM messages WHERE state = 'sent'")
    text = _pipe("queue", "show", str(msg_id)).stdout
    assert re.search(rf"  created: {ZONED}  due: {ZONED}  attempts: 1", text), text
    assert re.search(rf"  attempt {ZONED} sales: sent 250 ", text), text


def test_stats_fits_and_shows_when_the_last_error_happened(filled, cli):
    assert cli("test-smtp").exit_code == 0  # records health with its time
    lines = _fits(_pipe("stats").stdout)
    assert lines[0].split()[:3] == ["sender", "today", "month"]
    row = _row(lines, "sales")
    assert "healthy (2026-" in row, row
    assert "last error" not in lines[0]  # no sender has one: the empty column gives its cells to the others
    wide = _row(_pipe("stats", "--wide").stdout.splitlines(), "sales")
    assert re.search(rf"healthy \({ZONED}\)", wide), wide


def test_suppress_list_fits_and_wide_shows_the_whole_reason(filled):
    lines = _fits(_pipe("suppress", "list").stdout)
    row = _row(lines, "manual")
    assert re.search(ZONED, row) and "…" in row
    wide = _row(_pipe("suppress", "list", "--wide").stdout.splitlines(), "manual")
    assert LONG_TO in wide and wide.rstrip().endswith(
        "asked us in writing to stop every mailing " * 2 + "asked us in writing to stop every mailing"
    )


def test_the_subject_gives_way_before_the_address(workspace, server, cli):
    """Who was mailed is what a reader of the log looks for: the subject and the server's reply are cut first."""
    workspace.write_config({"sales": workspace.sender(server)}, routes={"default": "sales"})
    to = "anna.schmidt@example.de"
    assert cli("send", "--to", to, "--subject", LONG_SUBJECT, "--body", "b").exit_code == 0
    sent = _row(_fits(_pipe("log", columns=100).stdout, columns=100), " sent ")
    assert f"  sales   default  {to}  " in sent, sent
    assert LONG_SUBJECT[:10] in sent and LONG_SUBJECT not in sent
    queued = _row(_fits(_pipe("queue", "list", columns=61).stdout, columns=61), " sent ")
    assert f"  {to}  " in queued and LONG_SUBJECT not in queued, queued


def test_fit_widths_cuts_the_columns_that_give_most_first():
    natural, headings, cuttable = [10, 30, 40], [4, 2, 7], [False, True, True]
    # the third column gives first: down to its heading (7 cells) before the second loses a cell
    assert fit_widths(natural, headings, cuttable, 50, [1, 0, 2]) == [10, 30, 10]
    assert fit_widths(natural, headings, cuttable, 40, [1, 0, 2]) == [10, 23, 7]
    # of equal give, the cut is shared; the fixed column stays whole while the others can give way
    assert fit_widths(natural, headings, cuttable, 50, [1, 1, 1]) == fit_widths(natural, headings, cuttable, 50)
    assert fit_widths(natural, headings, cuttable, 50) == [10, 20, 20]
    assert sum(fit_widths(natural, headings, cuttable, 12, [1, 0, 2])) <= 12  # too narrow: everything gives


def test_a_narrow_terminal_cuts_every_column_rather_than_wrap(filled):
    lines = _fits(_pipe("log", columns=40).stdout, columns=40)
    assert len(lines) == 4


# ---------------------------------------------------------------- colour


def _sgr(text: str) -> set[str]:
    """The parameters of every SGR (colour/style) sequence in ``text``, e.g. {'36', '1;31', '0'}."""
    return set(re.findall(r"\x1b\[([0-9;]*)m", text))


def _red(codes: set[str]) -> set[str]:
    """The SGR parameter strings that set a red foreground (basic, bright, 256-colour or Rich's pink-red)."""
    red = {"31", "91", "38;5;1", "38;5;9", "38;5;160", "38;5;196", "38;5;197", "38;2;249;38;114"}
    return {c for c in codes if any(f";{r};" in f";{c};" for r in red)}


def _send_on_a_terminal(*args: str) -> tuple[int, str]:
    """``mailops send ARGS`` with its stderr on a pseudo-terminal (where the progress bar is drawn); exit, stderr."""
    import pty

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(TERM="xterm-256color", COLUMNS="80", COLORTERM="truecolor")
    proc = subprocess.Popen(
        mailops_command("send", *args), stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        for _ in range(100_000):  # bounded: ends at EOF (EIO once the process closed the terminal)
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        assert proc.stdout is not None
        proc.stdout.read()
        proc.stdout.close()
        code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_the_progress_bar_is_not_red_while_all_is_well(workspace, server):
    # paced, so that the bar is drawn while it runs, not only once it is full
    workspace.write_config({"sales": workspace.sender(server, min_interval=0.2)}, routes={"default": "sales"})
    data = workspace.csv("people.csv", [{"email": f"u{n}@example.org"} for n in range(4)])
    code, seen = _send_on_a_terminal("--data", str(data), "--subject", "S", "--body", "b")
    assert code == 0, seen
    assert "sending" in seen and "4/4" in seen
    codes = _sgr(seen)
    assert "36" in {c.split(";")[-1] for c in codes}, codes  # coloured (cyan: the bar while it runs, the time left)
    assert not _red(codes), codes


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_a_failure_is_counted_in_red_beside_the_bar(workspace, server):
    workspace.write_config({"sales": workspace.sender(server)}, routes={"default": "sales"})
    server.rcpt_hook = refusing(GONE)
    data = workspace.csv("people.csv", [{"email": "u@example.org"}, {"email": GONE}])
    code, seen = _send_on_a_terminal("--data", str(data), "--subject", "S", "--body", "b")
    assert code == 1, seen
    assert "1 failed" in seen
    assert _red(_sgr(seen)), seen


# ---------------------------------------------------------------- queue list: the newest 50, and how many more


@pytest.fixture
def big_batch(workspace: Workspace, server, cli) -> Workspace:
    """1,060 messages queued in batch 'nov', one message sent outside it."""
    workspace.write_config({"sales": workspace.sender(server)}, routes={"default": "sales"})
    data = workspace.csv("people.csv", [{"email": f"u{n}@example.org"} for n in range(1060)])
    queued = cli("send", "--data", data, "--subject", "S", "--body", "b", "--batch", "nov", "--queue-only")
    assert queued.exit_code == 0, queued.output
    assert cli("send", "--to", "one@example.org", "--subject", "S", "--body", "b").exit_code == 0
    return workspace


def _ids(lines: list[str]) -> list[int]:
    return [int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()]


def test_queue_list_shows_the_newest_50_and_says_how_many_more(big_batch):
    lines = _fits(_pipe("queue", "list").stdout)
    assert _ids(lines) == list(range(1061, 1011, -1))
    assert lines[-2:] == ["queued: 1060  sent: 1", "… 1,011 more; --limit N or --all"]

    lines = _pipe("queue", "list", "--limit", "3").stdout.splitlines()
    assert _ids(lines) == [1061, 1060, 1059] and lines[-1] == "… 1,058 more; --limit N or --all"

    lines = _pipe("queue", "list", "--all").stdout.splitlines()
    assert _ids(lines) == list(range(1061, 0, -1)) and lines[-1] == "queued: 1060  sent: 1"


def test_queue_list_counts_only_what_the_filters_match(big_batch):
    lines = _pipe("queue", "list", "--state", "sent").stdout.splitlines()
    assert _ids(lines) == [1061] and lines[-1] == "sent: 1"
    lines = _pipe("queue", "list", "--batch", "nov", "--limit", "1060").stdout.splitlines()
    assert len(_ids(lines)) == 1060 and lines[-1] == "queued: 1060"
    assert _pipe("queue", "list", "--batch", "dec").stdout == "no message matches\n"


def test_queue_list_limit_and_all_together_are_refused(big_batch):
    result = run_mailops("queue", "list", "--limit", "5", "--all")
    assert (result.exit_code, result.stdout, result.stderr) == (
        2,
        "",
        "mailops: error: --limit N or --all, not both\n",
    )
