"""send, deliver and sendmail: queue messages and send what is due."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import runtime
from .helptext import examples
from .output import batch_done, err, out, print_json, print_summary, progress_runner, safe, warn_unverified_tls
from .runtime import MAX_ROWS, MAX_SECONDS, STATE, load_config, open_store

if TYPE_CHECKING:
    from ..config import Config
    from ..store import Store

app = typer.Typer()


def _exit_for(report: Any, extra_problem: bool = False) -> None:
    # --max-seconds with work left is the plan, not a failure; a signal is an interruption
    interrupted = report.interrupted and not report.deadline_reached
    if report.has_problems or interrupted or extra_problem or not batch_done(report):
        raise typer.Exit(1)


def _deliver(
    config: "Config",
    store: "Store",
    run_id: str | None,
    limit: int | None,
    max_seconds: float | None,
    show_progress: bool,
    total: int,
    batch: str | None = None,
) -> Any:
    import signal

    from ..delivery import Deliverer

    deliverer = Deliverer(config, store)

    def on_sigterm(_sig: int, _frame: Any) -> None:
        # cron / systemd stop: finish the message in flight, return the rest to the queue
        deliverer.stop_event.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with progress_runner(total, show_progress) as advance:
            return deliverer.run(run_id=run_id, batch=batch, limit=limit, max_seconds=max_seconds, progress=advance)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_previews(previews: list[Any]) -> None:
    import email
    from email import policy

    from ..controls import for_terminal

    for prepared in previews:
        msg = email.message_from_bytes(prepared.email.mime, policy=policy.default)
        out(f"--- {prepared.label} ---")
        shown = ("From", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID")
        for header in shown:
            if msg[header]:
                out(f"{header}: {safe(msg[header])}")
        for name, value in msg.items():  # added headers (--header, route, headers.yaml), in message order
            if name not in shown and name.lower() != "mime-version" and not name.lower().startswith("content-"):
                out(f"{name}: {safe(str(value))}")
        if prepared.email.envelope_to:
            out(f"(envelope to: {safe(', '.join(prepared.email.envelope_to))})")
        for rcpt, reason in prepared.suppressed:
            out(f"(suppressed, left out: {safe(rcpt)}: {safe(reason)})")
        if prepared.suppressed and not prepared.email.envelope_to:
            out("(not queued: every recipient is suppressed)")
        body = msg.get_body(preferencelist=("plain", "html"))
        out("")
        text = body.get_content().rstrip() if body is not None else ""
        out(for_terminal(text.replace("\r\n", "\n"), keep_newlines=True))
        attachments = [part.get_filename() for part in msg.iter_attachments()]
        if attachments:
            out(f"[attachments: {safe(', '.join(a or '?' for a in attachments))}]")
    if previews:
        out("---")


def _show_suppressed(result: Any) -> None:
    """How many recipients send left out for the suppression list, and the first of them with the reason."""
    messages = (
        f"; {result.suppressed_messages} message(s) not queued (every recipient suppressed)"
        if result.suppressed_messages
        else ""
    )
    out(f"left out {result.suppressed_recipients} suppressed recipient(s){messages}:")
    for item in result.suppressed:
        out(f"  {safe(item['label'])}: {safe(item['recipient'])}: {safe(item['reason'])}")
    if result.suppressed_recipients > len(result.suppressed):
        out(f"  ... and {result.suppressed_recipients - len(result.suppressed)} more ('mailops suppress list')")


@app.command(
    epilog=examples(
        "mailops send --to jane@example.com --subject 'Hello' --body 'Hi Jane'",
        "mailops send -r renewal -t renewal -d customers.csv --dry-run --preview 2",
        "mailops send -r renewal -t renewal -d customers.csv --batch renewals-2026-11",
        "mailops send -g admins --subject 'Disk full' --body-file report.txt -q",
    )
)
def send(
    route: Annotated[
        str | None,
        typer.Option("--route", "-r", help="Route (purpose) that picks the sender; default: the 'default' route."),
    ] = None,
    sender: Annotated[
        str | None, typer.Option("--sender", "-s", help="Send from this sender, bypassing routing.")
    ] = None,
    to: Annotated[list[str] | None, typer.Option("--to", help="Recipient (repeatable); 'Name <addr>' allowed.")] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="Recipient group from senders.yaml (repeatable).")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="CSV/JSON/YAML file: one message per row.")] = None,
    to_column: Annotated[str, typer.Option("--to-column", help="Data column holding the recipient address.")] = "email",
    cc: Annotated[list[str] | None, typer.Option("--cc", help="Cc recipient (repeatable).")] = None,
    bcc: Annotated[
        list[str] | None, typer.Option("--bcc", help="Bcc recipient (repeatable; never shown in headers).")
    ] = None,
    reply_to: Annotated[
        str | None, typer.Option("--reply-to", help="Reply-To address (default: the sender's reply_to).")
    ] = None,
    template: Annotated[
        str | None, typer.Option("--template", "-t", help="Template folder name under templates/.")
    ] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Subject (Jinja) when not using --template.")] = None,
    body: Annotated[str | None, typer.Option("--body", help="Plain-text body (Jinja).")] = None,
    body_file: Annotated[
        Path | None, typer.Option("--body-file", help="File with the plain-text body (Jinja).")
    ] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="Template variable KEY=VALUE (repeatable).")] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="Add a header 'Name: value' (repeatable; the value is Jinja)."),
    ] = None,
    attach: Annotated[
        list[Path] | None,
        typer.Option(
            "--attach",
            help="Attach this file to every message (repeatable); "
            "with {{ }} a per-row path such as 'invoices/{{ contract }}.pdf'.",
        ),
    ] = None,
    attachments_dir: Annotated[
        Path | None,
        typer.Option(
            "--attachments-dir", help="Folder of the data rows' attachments (default: the data file's folder)."
        ),
    ] = None,
    allow_attachments_outside: Annotated[
        bool,
        typer.Option(
            "--allow-attachments-outside", help="Let data rows attach files outside their attachments folder."
        ),
    ] = False,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Batch key: a re-run skips rows already sent or queued under it.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, render and check quotas; connect to nothing, queue nothing.")
    ] = False,
    preview: Annotated[
        int, typer.Option("--preview", help="Print the first N rendered messages.", min=0, max=MAX_ROWS)
    ] = 0,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Send at most N messages (the first N rows).", min=1, max=MAX_ROWS)
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Send the valid rows and report the invalid ones.")
    ] = False,
    queue_only: Annotated[
        bool, typer.Option("--queue-only", help="Validate and queue, send nothing now; 'mailops deliver' (cron) sends.")
    ] = False,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="WHEN",
            help="Queue the messages due at WHEN: +30m, +2h, +1d or 2026-12-24T09:00 (config time zone); "
            "'mailops deliver' sends them then.",
        ),
    ] = None,
    include_suppressed: Annotated[
        bool, typer.Option("--include-suppressed", help="Send to addresses on the suppression list too.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (for cron).")] = False,
) -> None:
    """Send one message or a mail merge: everything is validated and queued before anything is sent."""
    from .. import routing, sending
    from ..prepare import SendRequest, parse_vars

    config = load_config()
    due_at = None
    if at is not None:
        from ..history import parse_at

        due_at = parse_at(at, config.timezone, runtime.now())
    plan = routing.resolve(config, route, sender)
    warn_unverified_tls(config, plan.candidates)
    request = SendRequest(
        to=list(to or []),
        cc=list(cc or []),
        bcc=list(bcc or []),
        groups=list(group or []),
        data_file=data,
        to_column=to_column,
        template=template,
        subject=subject,
        body=body,
        body_file=body_file,
        variables=parse_vars(list(var or [])),
        attachments=list(attach or []),
        attachments_dir=attachments_dir,
        allow_attachments_outside=allow_attachments_outside,
        reply_to=reply_to,
        limit=limit,
        headers=list(header or []),
    )
    credentials_warning = sending.check_credentials(config, plan)
    if credentials_warning:
        err(f"mailops: warning: {safe(credentials_warning)}")
    store = open_store(config)
    result = sending.enqueue(
        config,
        store,
        request,
        plan,
        now=runtime.now(),
        batch=batch,
        skip_invalid=skip_invalid,
        dry_run=dry_run,
        preview=preview,
        due_at=due_at,
        include_suppressed=include_suppressed,
    )
    if result.previews and not json_out:
        _show_previews(result.previews)
    if result.suppressed_recipients and not json_out and not quiet:
        _show_suppressed(result)
    invalid_note = None
    if result.problem_count:
        invalid_note = f"{result.problem_count} invalid row(s) skipped:"
        if not json_out:
            err(invalid_note)
            for problem in result.problems:
                err(f"  {safe(problem.message)}")
    if dry_run:
        for warning in result.warnings:
            err(f"mailops: {safe(warning)}")
        would_defer = result.would_defer
        info = {**result.to_dict(), "dry_run": True, "would_defer_for_quota": would_defer}
        if json_out:
            print_json(info)
        elif not quiet:
            out(
                f"dry run: {result.total} message(s) valid via "
                f"{plan.route or 'sender ' + plan.nominal} ({', '.join(plan.candidates)}); nothing queued or sent"
            )
            if would_defer:
                if all(unit == "messages" for _, _, unit in result.rooms):
                    left = str(int(sum(room for _, room, _ in result.rooms)))
                else:  # units differ: say each sender's
                    left = ", ".join(f"{key} {int(room)} {unit}" for key, room, unit in result.rooms)
                out(f"{would_defer} of them would be deferred: the senders' remaining quota is {left}")
        if result.problem_count:
            raise typer.Exit(1)
        return
    if result.skipped_duplicates and not json_out and not quiet:
        out(f"{result.skipped_duplicates} row(s) already sent or queued under batch {batch!r}: skipped")
    if queue_only or due_at is not None:
        if json_out:
            print_json({**result.to_dict(), "due_at": due_at})
        elif not quiet and due_at is not None:
            from ..history import local_time

            when = f"{local_time(due_at, config.timezone)} {config.timezone.key}"
            out(f"queued {result.queued} message(s) due at {when}; 'mailops deliver' sends them when due")
        elif not quiet:
            out(f"queued {result.queued} message(s); 'mailops deliver' sends them")
        if result.problem_count:
            raise typer.Exit(1)
        return
    show_progress = result.queued > 1 and not quiet and not json_out and sys.stderr.isatty()
    # With --batch, a re-run finishes the batch: every due message of it (an earlier run's too, and
    # those whose process died holding them), not only the rows queued now.
    report = _deliver(
        config, store, None if batch else result.run_id, None, None, show_progress, result.queued, batch=batch
    )
    print_summary(report, config, json_out, quiet, extra=result.to_dict())
    _exit_for(report, extra_problem=bool(result.problem_count))


@app.command(
    epilog=examples(
        "mailops deliver -q --max-seconds 240      # cron, every 5 minutes", "mailops deliver --limit 100 --json"
    )
)
def deliver(
    limit: Annotated[int | None, typer.Option("--limit", help="Send at most N messages.", min=1, max=MAX_ROWS)] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option("--max-seconds", help="Stop claiming new messages after S seconds.", min=0, max=MAX_SECONDS),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors (for cron).")] = False,
) -> None:
    """Send everything due in the outbox (queued, or deferred whose time has come), then exit. Made for cron."""
    from ..outbox import Outbox

    config = load_config()
    warn_unverified_tls(config, [k for k, s in config.senders.items() if s.active])
    store = open_store(config)
    # staged rows of a send that died before queueing them were never accepted: drop them
    Outbox(store, config.delivery).discard_abandoned(runtime.now() - 86400)
    report = _deliver(config, store, None, limit, max_seconds, False, 0)
    # retention as we go: a few batches of bodies older than `retention:` (the next run goes on)
    now = runtime.now()
    Outbox(store, config.delivery).expire_bodies(now - config.retention, now)
    print_summary(report, config, json_out, quiet)
    _exit_for(report)


@app.command(
    "sendmail",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog=examples(
        "echo 'Subject: backup done' | mailops sendmail admin@example.com", "mailops sendmail -t -i < message.eml"
    ),
)
def sendmail(ctx: typer.Context) -> None:
    """Queue one message read on stdin, as /usr/sbin/sendmail (cron, mailx, PHP); 'mailops sendmail --help'."""
    run_sendmail(list(ctx.args))  # main() normally runs it directly, so that no flag goes through click


def sendmail_args(args: list[str]) -> list[str] | None:
    """The arguments after ``sendmail`` when ``args`` run that command (global options before it applied), else None."""
    i = 0
    while i < len(args):  # bounded: every pass consumes one or two arguments
        if args[i] in ("--config", "-c") and i + 1 < len(args):
            STATE.config_path, i = args[i + 1], i + 2
        elif args[i].startswith("--config="):
            STATE.config_path, i = args[i].partition("=")[2], i + 1
        elif args[i] == "--debug":
            STATE.debug, i = True, i + 1
        else:
            break
    return args[i + 1 :] if i < len(args) and args[i] == "sendmail" else None


def run_sendmail(argv: list[str]) -> None:
    """``mailops sendmail``: queue the message on stdin, deliver it now; exit 0 once it is queued."""
    import io

    from .. import gateway

    STATE.sendmail = True
    args = gateway.parse_args(argv)
    if args.help:
        out(gateway.USAGE.rstrip())
        return
    config = load_config()
    stream = getattr(sys.stdin, "buffer", None) or io.BytesIO(sys.stdin.read().encode("utf-8"))
    data = gateway.read_message(stream, dot_ends=args.dot_ends)
    store = open_store(config)
    accepted = gateway.accept(config, store, args, data, now=runtime.now())
    left_out = ", ".join(f"{rcpt} ({reason})" for rcpt, reason in accepted.suppressed)
    if not accepted.queued:
        err(
            f"mailops: sendmail: {safe(accepted.message_id)} not queued: every recipient is on the suppression list: "
            f"{safe(left_out)}; 'mailops suppress remove ADDR' to send to it again"
        )
        return  # exit 0: the message was handled as the operator asked (not sent to suppressed addresses)
    if accepted.suppressed:
        err(f"mailops: sendmail: left out {len(accepted.suppressed)} suppressed recipient(s): {safe(left_out)}")
    report = _deliver(config, store, accepted.run_id, None, None, False, 1)
    for line in report.warnings:
        err(f"mailops: warning: {safe(line)}")
    if report.total_sent == 0:
        # queued all the same: exit 0, like a sendmail whose relay is down; cron logs this line
        why = "; ".join(report.problems[:3]) or "not delivered in this run"
        err(
            f"mailops: sendmail: {safe(accepted.message_id)} is queued, not sent yet: {safe(why)}; "
            "'mailops deliver' retries"
        )
