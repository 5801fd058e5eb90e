"""What every command prints with: consoles, lines on stdout/stderr, tables, JSON, progress, run summaries.

Every value that came from a data file, the database or a server goes through
:func:`safe` (or a Rich ``Text``) so that a terminal never acts on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import runtime
from .runtime import STATE

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

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
    """``data`` as indented JSON on stdout, in the conventions every ``--json`` follows (see :func:`for_json`)."""
    from ..controls import json_for_terminal

    value = for_json(data, STATE.timezone)
    # still the same JSON value: only characters a terminal may act on are written as \uXXXX
    typer.echo(json_for_terminal(json.dumps(value, indent=2, default=str, ensure_ascii=False)))


def attempt_json(row: dict[str, Any]) -> dict[str, Any]:
    """A log (attempts) row for --json: its recipients, kept as one text "a@x, b@y", as an array."""
    return {**row, "recipients": [a for a in (row.get("recipients") or "").split(", ") if a]}


def _is_time(key: str) -> bool:
    return key == "at" or key.endswith("_at") or key == "lease_until"


def _is_duration(key: str) -> bool:
    return key in ("duration", "seconds") or key.endswith(("_s", "_seconds"))


def for_json(value: Any, tz: ZoneInfo | None) -> Any:
    """``value`` with the JSON conventions of every command applied, by key name.

    A number under ``at``, ``*_at`` or ``lease_until`` is a moment: ISO 8601 with its offset, in the
    config's time zone (UTC before a config is loaded), to the millisecond. A number under ``duration``,
    ``seconds``, ``*_s`` or ``*_seconds`` is seconds, rounded to the millisecond. Everything else is kept.
    """
    if isinstance(value, dict):
        result: dict[Any, Any] = {}
        for key, item in value.items():
            number = isinstance(item, int | float) and not isinstance(item, bool)
            if number and isinstance(key, str) and _is_time(key):
                result[key] = iso_time(float(item), tz)
            elif number and isinstance(key, str) and _is_duration(key):
                result[key] = round(float(item), 3)
            else:
                result[key] = for_json(item, tz)
        return result
    if isinstance(value, list | tuple):
        return [for_json(item, tz) for item in value]
    return value


def iso_time(ts: float, tz: ZoneInfo | None) -> str | float:
    """``ts`` (seconds since the epoch) as ISO 8601 with offset, e.g. ``2026-12-01T09:14:03.727+01:00``.

    A number no calendar holds (an old mailops could defer by 1e300 s) stays the number.
    """
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(ts, tz or UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return ts


@dataclass(frozen=True)
class Col:
    """A table column: its heading, whether a long value may be cut to fit, and colours for some values."""

    name: str
    cut: bool = True  # False: shown whole (ids, states, times, numbers) unless nothing else can give way
    # among the columns that may be cut, the higher ``give`` is cut first (a subject before the address)
    give: int = 1
    right: bool = False  # numbers line up on the right
    styles: Mapping[str, str] = field(default_factory=dict)  # exact cell value -> Rich style, e.g. failed -> red


#: the ``--wide`` option of every command that prints a table
WideOption = Annotated[
    bool,
    typer.Option("--wide", help="Show every value whole, however long the lines (else long values are cut with …)."),
]

#: a value is not cut below this many cells while fixed columns could give way instead
_MIN_CUT = 4
#: blank cells between two columns
_GAP = 2

#: colours of outcomes and states: red means failed, and only that
OUTCOME_STYLES = {"failed": "red", "deferred": "yellow", "partial": "yellow", "sent": "green"}


def _level(widths: list[int], floors: list[int], room: int) -> list[int]:
    """``widths`` cut down to share ``room`` cells: the narrow ones keep their width, the wide ones share the rest.

    Water-filling: the largest level L such that every column at min(width, L), but at least its floor,
    fits; the cells left over go one each to the columns held at L.
    """

    def at(level: int) -> list[int]:
        return [max(f, min(w, level)) for w, f in zip(widths, floors, strict=True)]

    low, high = 0, max(widths, default=0)
    while low < high:  # bounded: binary search over the widths
        mid = (low + high + 1) // 2
        if sum(at(mid)) <= room:
            low = mid
        else:
            high = mid - 1
    result = at(low)
    spare = room - sum(result)
    for i, w in enumerate(widths):
        if spare <= 0:
            break
        if w > result[i]:
            result[i] += 1
            spare -= 1
    return result


def fit_widths(
    natural: list[int], headings: list[int], cuttable: list[bool], room: int, give: list[int] | None = None
) -> list[int]:
    """Column widths within ``room`` cells: the columns that may be cut give way first, the others only if they must.

    A cut column keeps at least its heading's width (or a few cells) while there is room for that. Among
    the cut columns, those with the highest ``give`` shrink first, down to that floor, before the next
    ones lose a cell; columns of equal ``give`` share the cut.
    """
    if sum(natural) <= room:
        return list(natural)
    fixed = sum(w for w, cut in zip(natural, cuttable, strict=True) if not cut)
    flexible = [i for i, cut in enumerate(cuttable) if cut]
    if not flexible or room - fixed < _MIN_CUT * len(flexible):
        return _level(natural, [1] * len(natural), room)  # too narrow even for that: every column gives way
    floors = {i: min(natural[i], max(headings[i], _MIN_CUT)) for i in flexible}
    if room - fixed < sum(floors.values()):  # no room for every heading: values and headings are cut alike
        floors = {i: min(natural[i], _MIN_CUT) for i in flexible}
    order = give or [1] * len(natural)
    widths = list(natural)
    for rank in sorted({order[i] for i in flexible}, reverse=True):
        group = [i for i in flexible if order[i] == rank]
        # the columns cut before this group are at their floors, those to cut after it still whole
        left = room - sum(w for j, w in enumerate(widths) if j not in group)
        if left >= sum(floors[i] for i in group):
            shares = _level([natural[i] for i in group], [floors[i] for i in group], left)
            for i, width in zip(group, shares, strict=True):
                widths[i] = width
            return widths
        for i in group:
            widths[i] = floors[i]
    return widths  # not reached: the last group always fits at its floors (checked above)


def show_table(title: str | None, columns: Sequence[str | Col], rows: list[list[Any]], *, wide: bool = False) -> None:
    """A table on stdout, as wide as its content, within the terminal (80 columns in a pipe, or $COLUMNS).

    A value never wraps: when the table would be too wide, the long values are cut with "…" (the
    columns marked ``cut`` first); ``wide`` shows every value whole, however long the lines get.
    Every cell is plain text, never read as Rich markup ("[link=...]" in a subject). A column with
    no value in any row is left out unless ``wide``.
    """
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    cells = [[safe(v) for v in row] for row in rows]
    if not wide and cells:
        # a column empty in every row only takes cells from the values beside it (log's detail on success)
        keep = [i for i in range(len(cols)) if any(row[i] for row in cells)]
        cols = [cols[i] for i in keep]
        cells = [[row[i] for i in keep] for row in cells]
    natural = [max([cell_len(c.name), *(cell_len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    console = make_console()
    gaps = _GAP * (len(cols) - 1)
    if wide:
        widths = natural
        console.width = max(console.width, sum(natural) + gaps)
    else:
        headings = [cell_len(c.name) for c in cols]
        widths = fit_widths(
            natural, headings, [c.cut for c in cols], max(len(cols), console.width - gaps), [c.give for c in cols]
        )
    # a rule under the headings, no borders; between two columns the divider (a blank) and one blank of padding
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1), header_style="bold"
    )
    for col, width in zip(cols, widths, strict=True):
        table.add_column(
            col.name, width=width, no_wrap=True, overflow="ellipsis", justify="right" if col.right else "left"
        )
    for row in cells:
        table.add_row(*[Text(value, style=col.styles.get(value, "")) for col, value in zip(cols, row, strict=True)])
    console.print(table)


# ---------------------------------------------------------------- delivery runs


def progress_runner(total: int, enabled: bool) -> Any:
    """A context manager yielding a callback that advances a progress bar (or does nothing).

    The callback takes each message's outcome. The bar is cyan while it runs and green when done,
    never red (Rich's default for a running bar): red is for failures, which are counted beside it.
    """

    @contextmanager
    def runner() -> Any:
        if not enabled:
            yield lambda _outcome: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        failed = TextColumn("{task.fields[failed]}", markup=True)  # empty, or "[red]N failed[/]"
        bar = BarColumn(complete_style="cyan", finished_style="green", pulse_style="cyan")
        with Progress(
            TextColumn("sending"), bar, MofNCompleteColumn(), TimeRemainingColumn(), failed, console=make_console(True)
        ) as progress:
            task = progress.add_task("send", total=total, failed="")
            count = 0

            def advance(outcome: str) -> None:
                nonlocal count
                if outcome == "failed":
                    count += 1
                    progress.update(task, failed=f"[red]{count} failed[/]")
                progress.advance(task)

            yield advance

    return runner()


def problem_lines(report: Any, config: Config) -> list[str]:
    """What was not done and what happens next: the lines cron must mail to the operator (also with -q)."""
    from ..history import humanize_wait, local_time

    lines = []
    if report.total_deferred and report.next_due_at:
        when = local_time(report.next_due_at, config.timezone, zone=True)
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
        next_at = local_time(left["next_due_at"], config.timezone, zone=True)
        parts.append(f"{left['deferred']} deferred (the next at {next_at})")
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
        numbers = [Col(name, cut=False, right=True) for name in ("sent", "deferred", "failed")]
        show_table("summary", ["sender", *numbers], rows)
    refused = (
        f"; {report.refused_recipients} recipient(s) refused in {report.partially_refused} message(s)"
        if report.refused_recipients
        else ""
    )
    out(f"sent {report.total_sent}, deferred {report.total_deferred}, failed {report.total_failed}{refused}")
    for line in problem_lines(report, config):
        out(line)
