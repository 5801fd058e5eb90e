"""Terminal charts for ``mailops stats --days``: part of the CLI's output layer.

The numbers come from :func:`mailops.history.daily_outcomes` and
:func:`mailops.history.sender_stats`; this module only draws them. Every bar
is made of a different character per outcome (``█`` sent, ``▒`` deferred,
a multiplication sign failed), so the chart reads the same without colour (NO_COLOR, cron
mail, a pipe); colour only adds meaning: red is for failures alone. Lines
are never longer than the console is wide, so nothing wraps at 80 columns.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

#: character and style of each series, in drawing order
SERIES = (("sent", "█", "green"), ("deferred", "▒", "yellow"), ("failed", "\N{MULTIPLICATION SIGN}", "bold red"))
_LABEL = 10  # an ISO date
_NAME = 24  # at most this much of a sender's name and address in a heading


def _line(console: Console, text: Text) -> None:
    console.print(text, no_wrap=True, overflow="ellipsis", soft_wrap=False, crop=True)


def _segments(counts: list[int], width: int, scale: float) -> list[int]:
    """Bar length per series: proportional, and at least one cell for any non-zero count (one failure shows)."""
    cells = [max(1, round(n * scale)) if n else 0 for n in counts]
    while sum(cells) > width and max(cells) > 1:  # the minimum cells may overflow a full bar: take from the longest
        cells[cells.index(max(cells))] -= 1
    return cells


def draw_daily(console: Console, daily: dict[str, Any], emails: dict[str, str]) -> None:
    """Per sender, one stacked bar per day (sent, deferred, failed), all on one scale, with the numbers."""
    days: list[str] = daily["days"]
    senders: list[dict[str, Any]] = daily["senders"]
    width = max(console.width, 40)
    _line(console, Text(f"attempts per day ({daily['timezone']}); the numbers are sent/deferred/failed"))
    legend = Text("")
    for i, (name, char, style) in enumerate(SERIES):
        legend.append("  " if i else "")
        legend.append(f"{char} {name}", style=style)
    _line(console, legend)
    totals = [[s[name][i] for name, _, _ in SERIES] for s in senders for i in range(len(days))]
    peak = max((sum(t) for t in totals), default=0)
    number_width = max((len(f"{t[0]}/{t[1]}/{t[2]}") for t in totals), default=5)
    bar_width = width - 2 - _LABEL - 1 - 1 - number_width
    scale = bar_width / peak if peak else 0.0
    for sender in senders:
        key = sender["sender"]
        if key is None:
            heading = "no sender: deferred before one was chosen (all at their quota)"
        else:
            heading = f"{key} <{emails[key]}>" if emails.get(key) else key
        _line(console, Text(""))
        _line(console, Text(heading if len(heading) <= width else heading[: width - 1] + "…", style="bold"))
        if not any(sum(sender[name]) for name, _, _ in SERIES):
            _line(console, Text(f"  no attempts in these {len(days)} day(s)"))
            continue
        for i, day in enumerate(days):
            counts = [sender[name][i] for name, _, _ in SERIES]
            row = Text(f"  {day} ")
            for (_, char, style), cells in zip(SERIES, _segments(counts, bar_width, scale), strict=True):
                row.append(char * cells, style=style)
            used = sum(_segments(counts, bar_width, scale))
            numbers = "/".join(str(n) for n in counts) if sum(counts) else "-"
            row.append(" " * (bar_width - used + 1) + numbers.rjust(number_width))
            _line(console, row)
    _line(console, Text(""))


def draw_quota(console: Console, rows: list[dict[str, Any]]) -> None:
    """Quota use against limits as bars: today against daily_limit, this month against monthly_limit."""
    width = max(console.width, 40)
    name_width = min(max((len(r["sender"]) for r in rows), default=6), _NAME)
    limited = [
        (r, used, limit, pct)
        for r in rows
        for used, limit, pct in (
            (r["sent_today"], r["daily_limit"], r["daily_usage_pct"]),
            (r["sent_this_month"], r["monthly_limit"], r["monthly_usage_pct"]),
        )
        if limit
    ]
    # one bar length for every row, so the bars compare at a glance
    numbers_width = max((len(_numbers(r, used, limit, pct)) for r, used, limit, pct in limited), default=0)
    bar_width = max(10, width - (2 + name_width + 1 + 5 + 1) - len("[] ") - numbers_width)
    _line(console, Text("quota use", style="bold"))
    for r in rows:
        for i, (period, used, limit, pct) in enumerate(
            (
                ("today", r["sent_today"], r["daily_limit"], r["daily_usage_pct"]),
                ("month", r["sent_this_month"], r["monthly_limit"], r["monthly_usage_pct"]),
            )
        ):
            name = r["sender"] if i == 0 else ""
            name = name if len(name) <= name_width else name[: name_width - 1] + "…"
            row = Text(f"  {name:<{name_width}} {period:<5} ")
            if not limit:
                unit = " recipients" if r["limit_unit"] == "recipients" else ""
                row.append(f"{used}{unit}, no limit")
                _line(console, row)
                continue
            numbers = _numbers(r, used, limit, pct)
            filled = min(bar_width, round(bar_width * used / limit))
            # a full quota defers mail rather than failing it: yellow, not red
            style = "yellow" if used >= limit * 0.8 else "green"
            row.append("[")
            row.append("█" * filled, style=style)
            row.append("·" * (bar_width - filled))
            row.append("] " + numbers)
            _line(console, row)


def _numbers(row: dict[str, Any], used: int, limit: int, pct: float) -> str:
    unit = " recipients" if row["limit_unit"] == "recipients" else ""
    return f"{used}/{limit}{unit} {pct:g}%"
