"""queue: inspect and manage the outbox."""

import contextlib
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError
from . import runtime
from .helptext import examples
from .output import OUTCOME_STYLES, Col, WideOption, attempt_json, out, print_json, safe, show_table
from .runtime import MAX_ID, MAX_ROWS, load_config, open_store

if TYPE_CHECKING:
    from ..config import Config
    from ..outbox import NotCancelled

#: rows ``queue list`` shows without --limit or --all
DEFAULT_LIST = 50

queue_app = typer.Typer(help="Inspect and manage the outbox: list, show, retry, cancel, purge.")


@queue_app.command(
    "list", epilog=examples("mailops queue list --state deferred", "mailops queue list --batch renewals-2026-11 --json")
)
def queue_list(
    state: Annotated[
        str | None, typer.Option("--state", help="queued, sending, sent, deferred, failed or cancelled.")
    ] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch.")] = None,
    sender: Annotated[str | None, typer.Option("--sender", help="Only this sender.")] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", metavar="N", help=f"Show the newest N (default {DEFAULT_LIST}).", min=1, max=MAX_ROWS),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Show every message that matches.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wide: WideOption = False,
) -> None:
    """List messages in the outbox, newest first (the newest 50 unless --limit N or --all), with counts per state.

    The counts and the "more" line count the messages that match --state, --batch and --sender.
    """
    from ..history import local_time
    from ..outbox import Outbox
    from ..states import STATES

    if state and state not in STATES:
        raise UsageError(f"--state {state!r}: expected one of {', '.join(STATES)}")
    if limit is not None and all_:
        raise UsageError("--limit N or --all, not both")
    config = load_config()
    outbox = Outbox(open_store(config), config.delivery)
    rows = outbox.list(state=state, batch=batch, sender=sender, limit=None if all_ else (limit or DEFAULT_LIST))
    counts = outbox.counts(state=state, batch=batch, sender=sender)
    more = sum(counts.values()) - len(rows)
    if json_out:
        print_json(
            {"counts": counts, "total": sum(counts.values()), "more": more, "messages": [_decoded(r) for r in rows]}
        )
        return
    if not counts:
        out("no message matches" if state or batch or sender else "the outbox is empty")
        return
    tz = config.timezone
    show_table(
        None,
        [
            Col("id", cut=False, right=True),
            Col("state", cut=False, styles=OUTCOME_STYLES),
            Col("due", cut=False),
            "sender",
            Col("to", give=0),  # the address is what a reader looks for: the subject gives way first
            Col("subject", give=2),
            Col("attempts", cut=False, right=True),
            "reason",
        ],
        [
            [
                r["id"],
                r["state"],
                local_time(r["due_at"], tz, zone=True) if r["state"] in ("queued", "deferred") else "",
                r["sender"] or r["nominal_sender"],
                _stored_list(r["recipients"]),
                r["subject"],
                r["attempts"],
                r["reason"] or "",
            ]
            for r in rows
        ],
        wide=wide,
    )
    out("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if more:
        out(f"… {more:,} more; --limit N or --all")


@queue_app.command("show", epilog=examples("mailops queue show 12"))
def queue_show(
    message: Annotated[int, typer.Argument(help="Message id (from 'mailops queue list').", min=1, max=MAX_ID)],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one message: state, headers and every attempt."""
    import email
    from email import policy

    from ..config import format_duration
    from ..errors import InputError
    from ..history import local_time
    from ..outbox import Outbox
    from ..states import FAILED, SENT

    config = load_config()
    found = Outbox(open_store(config), config.delivery).get(message)
    if found is None:
        raise InputError(f"no message with id {message} in the outbox; see 'mailops queue list'")
    row, attempts = found
    mime = bytes(row.pop("mime") or b"")
    parsed = email.message_from_bytes(mime, policy=policy.default)
    headers = {k: str(v) for k, v in parsed.items()}
    # retention empties the body of a sent or failed message; the row (and the log) stays
    removed = not mime and row["state"] in (SENT, FAILED)
    if json_out:
        body = "removed by retention" if removed else "kept"
        print_json(
            {
                "message": _decoded(row),
                "body": body,
                "headers": headers,
                "attempts": [attempt_json(a) for a in attempts],
            }
        )
        return
    tz = config.timezone
    # every value here may come from a data file or a server: safe() shows control characters as escapes
    out(f"message {row['id']}: {row['state']}" + (f" ({safe(row['reason'])})" if row["reason"] else ""))
    out(
        f"  batch: {safe(row['batch'] or '-')}  route: {safe(row['route'] or '-')}  "
        f"candidates: {safe(_stored_list(row['candidates']))}"
    )
    out(
        f"  created: {local_time(row['created_at'], tz, zone=True)}  due: {local_time(row['due_at'], tz, zone=True)}  "
        f"attempts: {row['attempts']}"
    )
    out(f"  envelope: {safe(row['envelope_from'])} -> {safe(_stored_list(row['recipients']))}")
    if row["recipient_status"]:
        for rcpt, status in _stored_mapping(row["recipient_status"]).items():
            out(f"  {safe(rcpt)}: {safe(status)}")
    if removed:
        when = (
            f"at {local_time(row['body_removed_at'], tz, zone=True)}"
            if row.get("body_removed_at") is not None
            else "(by an older mailops, which did not record when)"
        )
        out(
            f"  body: removed by retention {when}; sent and failed messages keep theirs for "
            f"{format_duration(config.retention)} ('retention:' in senders.yaml)"
        )
    for key, value in headers.items():
        out(f"  {safe(key)}: {safe(value)}")
    for a in attempts:
        code = f"{a['smtp_code']} " if a["smtp_code"] else ""
        text = f"{code}{a['smtp_text'] or ''} {a['detail'] or ''}"
        at = local_time(a["at"], tz, zone=True)
        out(f"  attempt {at} {safe(a['sender'] or '-')}: {a['outcome']} {safe(text)}".rstrip())


#: the message columns that hold JSON text: --json gives their values (arrays, objects), not the text
_JSON_COLUMNS = ("recipients", "candidates", "recipient_status")


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A message row for --json: its JSON columns as the values they hold (text that is no JSON stays text)."""
    decoded = dict(row)
    for column in _JSON_COLUMNS:
        if isinstance(decoded.get(column), str):
            with contextlib.suppress(ValueError):  # not JSON (written by another tool): shown as it is
                decoded[column] = json.loads(decoded[column])
    return decoded


def _stored_list(text: Any) -> str:
    """A JSON list column (recipients, candidates) for display; text that is not one is shown as it is."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    return ", ".join(str(item) for item in value) if isinstance(value, list) else str(value)


def _stored_mapping(text: Any) -> dict[str, Any]:
    """A JSON object column (recipient_status) for display; anything else is shown under '?'."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"?": text}
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {"?": value}


def _must_exist(outbox: Any, message: int | None, batch: str | None) -> None:
    """InputError for an id (or batch) the outbox does not hold: a typo must not look like success."""
    from ..errors import InputError

    if message is not None and not outbox.exists(msg_id=message):
        raise InputError(f"no message with id {message} in the outbox; see 'mailops queue list'")
    if batch is not None and not outbox.exists(batch=batch):
        raise InputError(f"no message in batch {batch!r} in the outbox; see 'mailops queue list'")


def _one_target(message: int | None, batch: str | None, all_: bool | None = None) -> None:
    """Exactly one of: a message id, --batch, or (where offered, ``all_`` not None) --all."""
    chosen = [message is not None, batch is not None, bool(all_)]
    if sum(chosen) != 1:
        options = "a message id, --batch KEY" + (" or --all" if all_ is not None else "")
        raise UsageError(f"name exactly one of: {options}")


@queue_app.command("retry", epilog=examples("mailops queue retry 12", "mailops queue retry --batch renewals-2026-11"))
def queue_retry(
    message: Annotated[int | None, typer.Argument(help="Message id.", min=1, max=MAX_ID)] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Every message of this batch.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every deferred or failed message.")] = False,
) -> None:
    """Make deferred or failed messages due now ('mailops deliver' then sends them)."""
    from ..outbox import Outbox

    _one_target(message, batch, all_)
    config = load_config()
    outbox = Outbox(open_store(config), config.delivery)
    _must_exist(outbox, message, batch)
    n, refused = outbox.retry_refused(runtime.now(), msg_id=message, batch=batch, all_=all_)
    out(f"{n} message(s) due now; run 'mailops deliver' to send them")
    if refused:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        out(f"retrying {len(refused)} recipient(s) the server refused permanently ({shown})")


@queue_app.command("cancel", epilog=examples("mailops queue cancel 12", "mailops queue cancel --batch xmas"))
def queue_cancel(
    message: Annotated[int | None, typer.Argument(help="Message id.", min=1, max=MAX_ID)] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Every unsent message of this batch.")] = None,
) -> None:
    """Cancel messages that are not sent yet; say why any other is left alone.

    Exit 0 when every named message not yet sent is now cancelled (also when it
    already was), 1 when some are being sent by another process right now,
    2 when nothing could be cancelled because everything named was already sent
    or failed.
    """
    from ..errors import InputError
    from ..outbox import Outbox

    _one_target(message, batch)
    config = load_config()
    outbox = Outbox(open_store(config), config.delivery)
    _must_exist(outbox, message, batch)
    result = outbox.cancel(runtime.now(), msg_id=message, batch=batch)
    notes = [_not_cancelled(left, config, single=message is not None) for left in result.not_cancelled]
    if result.cancelled == 0 and result.not_cancelled and {n.state for n in result.not_cancelled} <= {"sent", "failed"}:
        # too late for everything named: nothing changed, as for an id the outbox does not hold
        detail = notes[0] if message is not None else f"batch {batch!r}: " + "; ".join(notes)
        raise InputError(f"{detail}; nothing to cancel")
    out(f"cancelled {result.cancelled} message(s)")
    for note in notes:
        out(note)
    if any(left.state == "sending" for left in result.not_cancelled):
        raise typer.Exit(1)  # those may still go out


def _not_cancelled(left: "NotCancelled", config: "Config", *, single: bool) -> str:
    """One line on the messages ``queue cancel`` left alone, with the time in the config's zone."""
    from ..history import local_time

    when = f"{local_time(left.at, config.timezone)} {config.timezone.key}" if left.at is not None else "an unknown time"
    if single:
        reason = f" ({safe(left.reason)})" if left.reason and left.state == "failed" else ""  # the server's reply
        verb = {
            "sent": f"was already sent at {when}",
            "failed": f"had already failed at {when}{reason}",
            "cancelled": f"was already cancelled at {when}",
            "sending": f"is being sent by another process (its claim runs until {when}); it cannot be cancelled now",
        }[left.state]
        return f"message {left.first_id} {verb}"
    verb = {
        "sent": f"already sent (the last at {when})",
        "failed": f"already failed (the last at {when})",
        "cancelled": f"already cancelled (the last at {when})",
        "sending": f"being sent by another process (claims run until {when}); they cannot be cancelled now",
    }[left.state]
    return f"{left.count} message(s) {verb}"


@queue_app.command(
    "purge", epilog=examples("mailops queue purge --before 30d", "mailops queue purge --before 2026-01-01")
)
def queue_purge(
    before: Annotated[str, typer.Option("--before", help="Delete sent messages older than this date (or 30d).")],
) -> None:
    """Delete the stored bodies of sent messages older than a date; the log keeps every row."""
    from ..history import parse_since, record_event
    from ..outbox import Outbox

    config = load_config()
    cutoff = parse_since(before, config.timezone, runtime.now(), option="--before")
    store = open_store(config)
    n = Outbox(store, config.delivery).purge(cutoff)
    record_event(store, "purge", f"purged {n} sent message(s) before {before}", runtime.now())
    out(f"purged {n} sent message(s) older than {before}; the log is unchanged")
