"""What every command prints with: consoles, lines on stdout/stderr, tables, JSON, progress, run summaries.

Every value that came from a data file, the database or a server goes through
:func:`safe` (or a Rich ``Text``) so that a terminal never acts on it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from . import runtime
from .runtime import STATE

if TYPE_CHECKING:
    from ..config import Config


def make_console(stderr: bool = False) -> Any:
    """A Rich console on stdout (or stderr) for tables, charts and progress."""
    from rich.console import Console

    # Rich honours NO_COLOR itself; highlight off keeps numbers in tables plain.
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def out(text: str = "") -> None:
    """One line on stdout."""
    typer.echo(text)


def err(text: str) -> None:
    """One line on stderr."""
    typer.echo(text, err=True)


def safe(value: Any) -> str:
    """Text from the database, a data file or a server, made harmless for a terminal (ESC shown as \\x1b)."""
    from ..controls import for_terminal

    return for_terminal("" if value is None else str(value))


def warn_unverified_tls(config: Config, keys: Any) -> None:
    """One line on stderr naming the senders among ``keys`` that connect with ``tls_verify: false``."""
    names = [k for k in keys if not config.senders[k].tls_verify and config.senders[k].security != "none"]
    if names:
        err(
            f"mailops: warning: tls_verify: false for {', '.join(names)}: the server's certificate is not checked, "
            "so anyone on the way can read the mail and the password; use it only for testing (trust a private "
            "CA with ca_file instead)"
        )


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout."""
    from ..controls import json_for_terminal

    # still the same JSON value: only characters a terminal may act on are written as \uXXXX
    typer.echo(json_for_terminal(json.dumps(data, indent=2, default=str, ensure_ascii=False)))


def show_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stdout; every cell shown as plain text."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        # Text, not str: a cell is shown as it is, never read as Rich markup ("[link=...]" in a subject)
        table.add_row(*[Text(safe(v)) for v in row])
    make_console().print(table)


# ---------------------------------------------------------------- delivery runs


def progress_runner(total: int, enabled: bool) -> Any:
    """A context manager yielding a callback that advances a progress bar (or does nothing)."""

    @contextmanager
    def runner() -> Any:
        if not enabled:
            yield lambda _outcome: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=make_console(True)
        ) as progress:
            task = progress.add_task("send", total=total)
            yield lambda _outcome: progress.advance(task)

    return runner()


def problem_lines(report: Any, config: Config) -> list[str]:
    """What was not done and what happens next: the lines cron must mail to the operator (also with -q)."""
    from ..history import humanize_wait, local_time

    lines = []
    if report.total_deferred and report.next_due_at:
        when = local_time(report.next_due_at, config.timezone)
        lines.append(
            f"{report.total_deferred} message(s) deferred until {when} "
            f"(in {humanize_wait(report.next_due_at - runtime.now())}); 'mailops deliver' sends them when due"
        )
    left = backlog_line(report, config)
    if left:
        lines.append(safe(left))
    shown = report.problems[:10]
    lines.extend(f"  {safe(problem)}" for problem in shown)
    more = len(report.problems) - len(shown) + report.hidden_problems
    if more:
        lines.append(f"  ... and {more} more (see 'mailops log --status failed' and 'mailops queue list')")
    return lines


def backlog_line(report: Any, config: Config) -> str | None:
    """What is left in the outbox (of the run or batch): due now, deferred until when, in flight elsewhere."""
    from ..history import local_time

    left = report.backlog
    if not left:
        return None
    parts = []
    if left["due_now"]:
        parts.append(f"{left['due_now']} due now")
    if left["deferred"]:
        parts.append(f"{left['deferred']} deferred (the next at {local_time(left['next_due_at'], config.timezone)})")
    if left["in_flight_elsewhere"]:
        parts.append(f"{left['in_flight_elsewhere']} in flight in another process")
    head = ""
    if "batch" in left:
        states = left["batch_states"]
        order = ["sent", "sending", "queued", "deferred", "failed", "cancelled"]
        counts = ", ".join(f"{states[k]} {k}" for k in order if states.get(k))
        head = f"batch {left['batch']!r}: {sum(states.values())} message(s): {counts or 'none'}"
        if not parts:
            return head
        head += "; "
    if not parts:
        return None
    stop = "stopped at --max-seconds; " if report.deadline_reached else ""
    return f"{head}{stop}left: {', '.join(parts)}; 'mailops deliver' (or the next run) sends what is due"


def batch_done(report: Any) -> bool:
    """True when every message of the send's batch is sent (or cancelled by the operator)."""
    states = report.backlog.get("batch_states")
    return states is None or not (set(states) - {"sent", "cancelled"})


def print_summary(
    report: Any, config: Config, json_out: bool, quiet: bool, extra: dict[str, Any] | None = None
) -> None:
    """The end of a send or deliver run: JSON, the problem lines only (--quiet), or a table and the totals."""
    data = report.to_dict()
    if extra:
        data = {**extra, **data}
    if STATE.debug:
        for trace in report.tracebacks:
            err(trace.rstrip())
    for line in report.warnings:  # also with -q and --json: the operator has to act before a later run
        err(f"mailops: warning: {safe(line)}")
    if json_out:
        print_json(data)
        return
    if quiet:
        # Cron mails what a job prints: silence only when everything was done.
        if report.has_problems or not batch_done(report) or (report.interrupted and not report.deadline_reached):
            for line in problem_lines(report, config):
                err(line)
        return
    rows = [[s, v["sent"], v["deferred"], v["failed"]] for s, v in data["per_sender"].items()]
    if rows:
        show_table("summary", ["sender", "sent", "deferred", "failed"], rows)
    refused = (
        f"; {report.refused_recipients} recipient(s) refused in {report.partially_refused} message(s)"
        if report.refused_recipients
        else ""
    )
    out(f"sent {report.total_sent}, deferred {report.total_deferred}, failed {report.total_failed}{refused}")
    for line in problem_lines(report, config):
        out(line)
