"""reset-counts, log and stats: what was sent, and quota use."""

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError
from . import runtime
from .helptext import examples
from .output import OUTCOME_STYLES, Col, WideOption, attempt_json, make_console, out, print_json, show_table
from .runtime import MAX_ROWS, load_config, open_store, reading

if TYPE_CHECKING:
    from ..config import Config

app = typer.Typer()


@app.command("reset-counts", epilog=examples("mailops reset-counts --all", "mailops reset-counts sales --period month"))
def reset_counts(
    senders: Annotated[list[str] | None, typer.Argument(help="Senders whose counters to reset.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every sender.")] = False,
    period: Annotated[str, typer.Option("--period", help="day, month or all.")] = "day",
) -> None:
    """Zero quota usage for the current day and/or month; log rows are kept (the reset is recorded)."""
    from .. import quota
    from ..history import record_event
    from ..outbox import Outbox

    if period not in ("day", "month", "all"):
        raise UsageError(f"--period {period!r}: expected day, month or all")
    if bool(senders) == all_:
        raise UsageError("name the senders to reset or pass --all (one of them)")
    config = load_config()
    keys = list(senders) if senders else list(config.senders)
    for key in keys:
        config.sender(key)
    store = open_store(config)
    now = runtime.now()
    with store.write() as conn:
        cleared = quota.reset(conn, keys, period, config.timezone, now)
    released = Outbox(store, config.delivery).release_quota_deferred(keys, now)
    detail = "; ".join(f"{s} {p} was {c}" for s, p, c in cleared) or "nothing to reset"
    record_event(store, "reset-counts", f"period={period} senders={','.join(keys)}: {detail}", now)
    if not cleared:
        out(f"nothing to reset: {', '.join(keys)} had no usage for period {period}")
    for sender, key, count in cleared:
        out(f"reset {sender} {key.replace(':', ' ')}: {count} -> 0")
    if released:
        out(f"{released} message(s) deferred for quota are due again; 'mailops deliver' sends them")


@app.command(epilog=examples("mailops log --since 24h --status failed", "mailops log --batch renewals-2026-11 --json"))
def log(
    sender: Annotated[str | None, typer.Option("--sender", help="Only this sender.")] = None,
    route: Annotated[str | None, typer.Option("--route", help="Only this route.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="sent, partial, deferred, failed or skipped.")] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Only attempts to recipients containing this text, any case (an address, @domain)."),
    ] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="24h, 7d or a date like 2026-11-01.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most N rows, newest first.", min=1, max=MAX_ROWS)] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wide: WideOption = False,
) -> None:
    """Show delivery attempts, newest first."""
    from ..history import LogFilter, local_time, parse_since, query_log

    config = load_config()
    flt = LogFilter(
        sender=sender,
        route=route,
        status=status,
        to=to,
        batch=batch,
        since=parse_since(since, config.timezone, runtime.now()) if since else None,
        limit=limit,
    )
    with reading(config) as db:
        rows = query_log(db, flt)
    if json_out:
        print_json([attempt_json(r) for r in rows])
        return
    if not rows:  # a heading over nothing reads like a broken table
        out("no attempts match")
        return
    tz = config.timezone
    show_table(
        None,
        [
            Col("time", cut=False),
            Col("outcome", cut=False, styles=OUTCOME_STYLES),
            # at 80 columns who sent to whom is what a reader looks for: subject and server reply give way first
            Col("sender", give=0),
            Col("route", give=0),
            Col("to", give=0),
            Col("subject", give=2),
            Col("smtp", give=2),
            "detail",
        ],
        [
            [
                local_time(r["at"], tz, zone=True),
                r["outcome"],
                r["sender"] or "-",
                r["route"] or "-",
                r["recipients"],
                r["subject"],
                f"{r['smtp_code'] or ''} {r['smtp_text'] or ''}".strip(),
                "; ".join(text for text in (r["detail"], r["note"]) if text),  # note: a From rewrite (sendmail)
            ]
            for r in rows
        ],
        wide=wide,
    )


@app.command(epilog=examples("mailops stats", "mailops stats --days 14"))
def stats(
    since: Annotated[
        str, typer.Option("--since", help="Window for success rate and response time: 24h, 7d, a date.")
    ] = "7d",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    days: Annotated[
        int | None,
        typer.Option(
            "--days",
            metavar="N",
            help="Chart sent/deferred/failed per sender per day for the last N days, and quota use as bars.",
            min=1,
            max=366,
        ),
    ] = None,
    wide: WideOption = False,
) -> None:
    """Per sender: sent today / this month against limits, success rate, response time, last error, health.

    Example: 'mailops stats --days 14' draws the last two weeks; add --json for the same numbers.
    """
    from ..history import daily_outcomes, local_time, parse_since, sender_stats

    config = load_config()
    now = runtime.now()
    start = parse_since(since, config.timezone, now)
    with reading(config) as db:
        rows = sender_stats(db, config, start, now)
        daily = daily_outcomes(db, config, days, now) if days is not None else None
    if json_out:
        print_json(_stats_json(config, start, rows, daily))
        return
    if daily is not None:
        from .charts import draw_daily, draw_quota

        console = make_console()
        draw_daily(console, daily, {r["sender"]: r["email"] for r in rows})
        draw_quota(console, rows)
        return
    tz = config.timezone

    def against(n: int, limit: int | None, pct: float | None, unit: str) -> str:
        counted = f"{n}/{limit} ({pct:g}%)" if limit else f"{n}"
        return counted + (" recipients" if unit == "recipients" else "")

    show_table(
        None,
        ["sender", "today", "month", f"success ({since})", Col("avg s", right=True), "health", "last error"],
        [
            [
                r["sender"] + ("" if r["active"] else " (inactive)"),
                against(r["sent_today"], r["daily_limit"], r["daily_usage_pct"], r["limit_unit"]),
                against(r["sent_this_month"], r["monthly_limit"], r["monthly_usage_pct"], r["limit_unit"]),
                f"{r['success_rate']:g}% of {r['attempts']}" if r["success_rate"] is not None else "-",
                r["avg_response_s"] if r["avg_response_s"] is not None else "-",
                r["health"] + (f" ({local_time(r['checked_at'], tz, zone=True)})" if r["checked_at"] else ""),
                (f"{local_time(r['last_error_at'], tz, zone=True)}: " if r["last_error_at"] else "")
                + (r["last_error"] or ""),
            ]
            for r in rows
        ],
        wide=wide,
    )


def _stats_json(config: "Config", start: float, rows: list[dict[str, Any]], daily: dict[str, Any] | None) -> Any:
    """One shape for ``stats --json`` with or without ``--days``: the per-sender rows, and with --days
    the dates, each sender's ``daily`` series and those of attempts deferred before any sender was chosen."""
    data: dict[str, Any] = {"timezone": config.timezone.key, "since_at": start, "senders": rows}
    if daily is None:
        return data
    series = {s["sender"]: {k: v for k, v in s.items() if k != "sender"} for s in daily["senders"]}
    return {
        **data,
        "days": daily["days"],
        "senders": [{**r, "daily": series[r["sender"]]} for r in rows],
        "without_sender": series.get(None),
    }
