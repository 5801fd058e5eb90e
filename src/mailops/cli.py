"""The ``mailops`` command line: parse options, call the domain, print results.

No SMTP or SQL here. Heavy modules (database, templating, SMTP) are imported
inside the commands that need them so ``mailops --help``, ``--version`` and
``password status`` start fast. Every expected error is a MailopsError,
turned into one line on stderr and its exit code in :func:`main`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError  # Typer vendors click (0.26-0.29); it does not re-export these
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperGroup

from .errors import ConfigError, InvalidBatchError, MailopsError, UsageError

if TYPE_CHECKING:
    from .config import Config
    from .reader import Reader
    from .store import Store


@contextmanager
def _usage_errors_in_one_line() -> Iterator[None]:
    """Click's own usage errors (unknown option or command, missing argument, bad value) become mailops'
    one-line error with exit code 2, like every other bad input, instead of Usage/Try/Error lines."""
    try:
        yield
    except NoArgsIsHelpError:
        raise  # bare `mailops`: click shows the help
    except ClickUsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "mailops"
        where = path.removeprefix("mailops").strip()
        text = " ".join(exc.format_message().split()).rstrip(".")
        param = getattr(exc, "param", None)
        low, high = getattr(param, "min", None), getattr(param, "max", None)
        if low is not None and high is not None and re.search(r": Input should be (less|greater) than", text):
            # a number out of its range: say the whole range, not just the end it crossed
            def show(bound: object) -> str:
                return f"{bound:g}" if isinstance(bound, float) else str(bound)

            text = f"{text.partition(': Input should be')[0]}: must be from {show(low)} to {show(high)}"
        raise UsageError(f"{where + ': ' if where else ''}{text}; see '{path} --help'") from None


class _Commands(TyperGroup):
    """The top-level command group; every sub-command is parsed and run through it."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors_in_one_line():
            return super().invoke(ctx)


#: Bounds of numeric options, so that no number reaches the database (64-bit integers) or a clock out of range.
MAX_ID = 2**63 - 1  # message ids are 64-bit integers
MAX_ROWS = 10_000_000  # --limit, --preview
MAX_SECONDS = 7 * 86400.0  # deliver --max-seconds


app = typer.Typer(
    cls=_Commands,
    name="mailops",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
password_app = typer.Typer(help="Store, remove and inspect sender passwords (kept in the system keyring).")
queue_app = typer.Typer(help="Inspect and manage the outbox: list, show, retry, cancel, purge.")
db_app = typer.Typer(help="The database: schema status and upgrades.")
suppress_app = typer.Typer(help="The suppression list: addresses send leaves out (hard bounces, opt-outs).")
oauth_app = typer.Typer(help="OAuth2 senders (oauth2: in senders.yaml): log in, store a refresh token.")
app.add_typer(password_app, name="password")
app.add_typer(oauth_app, name="oauth")
app.add_typer(queue_app, name="queue")
app.add_typer(db_app, name="db")
app.add_typer(suppress_app, name="suppress")


class _State:
    config_path: str | None = None
    debug: bool = False
    sendmail: bool = False  # running `mailops sendmail`: errors exit with sysexits.h codes


STATE = _State()


# ---------------------------------------------------------------- shared helpers


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # Rich honours NO_COLOR itself; highlight off keeps numbers in tables plain.
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _out(text: str = "") -> None:
    typer.echo(text)


def _err(text: str) -> None:
    typer.echo(text, err=True)


def _safe(value: Any) -> str:
    """Text from the database, a data file or a server, made harmless for a terminal (ESC shown as \\x1b)."""
    from .controls import for_terminal

    return for_terminal("" if value is None else str(value))


def _warn_unverified_tls(config: Config, keys: Any) -> None:
    """One line on stderr naming the senders among ``keys`` that connect with ``tls_verify: false``."""
    names = [k for k in keys if not config.senders[k].tls_verify and config.senders[k].security != "none"]
    if names:
        _err(
            f"mailops: warning: tls_verify: false for {', '.join(names)}: the server's certificate is not checked, "
            "so anyone on the way can read the mail and the password; use it only for testing (trust a private "
            "CA with ca_file instead)"
        )


def _load_config() -> Config:
    from .config import load_config

    return load_config(STATE.config_path)


_OPEN_STORES: list[Store] = []


def _open_store(config: Config) -> Store:
    from .store import Store

    store = Store.open(config.database_url)
    _OPEN_STORES.append(store)  # closed by main(): a server database should not keep idle connections
    return store


@contextmanager
def _reading(config: Config) -> Iterator[Reader]:
    """A reader for ``log`` and ``stats``: a light connection of its own (no SQLAlchemy) when the schema is
    current, else a read transaction of the Store, which first creates or migrates the database."""
    from .reader import Reader, open_reader

    reader = open_reader(config.database_url)
    if reader is None:
        with _open_store(config).read() as conn:
            yield Reader.over(conn)
        return
    try:
        yield reader
    finally:
        reader.close()


def _print_json(data: Any) -> None:
    from .controls import json_for_terminal

    # still the same JSON value: only characters a terminal may act on are written as \uXXXX
    typer.echo(json_for_terminal(json.dumps(data, indent=2, default=str, ensure_ascii=False)))


def _table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        # Text, not str: a cell is shown as it is, never read as Rich markup ("[link=...]" in a subject)
        table.add_row(*[Text(_safe(v)) for v in row])
    _console().print(table)


def _now() -> float:
    return time.time()


# ---------------------------------------------------------------- root


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"mailops {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            help="senders.yaml to use (else $MAILOPS_CONFIG, ./senders.yaml, user config dir).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors (never local variables).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Send a company's outgoing mail through its sender accounts: routes, quotas, outbox, log.

    Exit codes: 0 done, 1 some messages failed or were deferred (or a check failed), 2 usage/config/input error.
    """
    STATE.config_path = config
    STATE.debug = debug


# ---------------------------------------------------------------- init / demo / dev-server


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the config in.")] = Path("."),
) -> None:
    """Create a starter senders.yaml and an example template in DIR (never overwrites)."""
    from .scaffold import write_starter

    created = write_starter(directory)
    for path in created:
        _out(f"created {path}")
    _out(f"next: edit {directory / 'senders.yaml'}, then run 'mailops password set SENDER' and 'mailops doctor'")


@app.command("dev-server")
def dev_server(
    host: Annotated[
        str, typer.Option(help="Address to bind; keep loopback unless you mean to expose it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8025,
    maildir: Annotated[Path | None, typer.Option(help="Store every message in this Maildir.")] = None,
    web: Annotated[
        int | None,
        typer.Option(
            "--web",
            metavar="PORT",
            help="Also serve a browser view of the captured mail on this port (same --host).",
            min=1,
            max=65535,
        ),
    ] = None,
) -> None:
    """Run a local capture SMTP server for trying templates and routes safely (Ctrl-C stops it)."""
    import contextlib
    import tempfile

    from .devserver import CaptureServer, serve_forever
    from .devweb import WebView

    def show(msg: Any) -> None:
        # anything on the network may send here: show control characters as escapes
        _out(
            _safe(
                f"received {msg.message_id or '(no Message-ID)'} from {msg.mail_from} to {', '.join(msg.rcpt_tos)}: "
                f"{msg.subject!r} ({msg.size} bytes)"
            )
        )

    with contextlib.ExitStack() as stack:
        where = f" storing in {maildir}" if maildir else ""
        if web is not None and maildir is None:
            # The web view reads a Maildir: without --maildir, one that lives as long as this run.
            maildir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailops-capture-"))) / "Maildir"
            where = " storing in a temporary Maildir (removed when it stops)"
        server = stack.enter_context(CaptureServer(host=host, port=port, maildir=maildir, on_message=show))
        viewer = stack.enter_context(WebView(maildir, host=host, port=web)) if web is not None and maildir else None
        _err(f"capturing mail on {host}:{port}{where}; point a sender at it with security: none and auth: false")
        if viewer is not None:
            _err(f"web view of the captured mail: {viewer.url}")
        serve_forever(server)  # returns on Ctrl-C (it handles KeyboardInterrupt itself)
    _err(f"stopped after capturing {server.count} message(s)")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the demo's files.")] = Path("mailops-demo"),
) -> None:
    """Run a real mail merge through a route to a local capture server, then show the log."""
    from .demo import run_demo

    code = run_demo(directory, echo=_out)
    raise typer.Exit(code)


# ---------------------------------------------------------------- passwords


@password_app.command("set")
def password_set(
    sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")],
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from standard input (for scripts).")
    ] = False,
) -> None:
    """Store a sender's password in the system keyring (asks twice, input hidden)."""
    from . import secrets

    config = _load_config()
    config.sender(sender)
    if stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for the password: pipe it in with --stdin")
        value = typer.prompt(f"Password for {sender}", hide_input=True, confirmation_prompt=True)
    if not value:
        raise UsageError(f"empty password for {sender!r}: nothing stored")
    secrets.set_password(sender, value)
    _out(f"stored the password of {sender} in the keyring ({secrets.backend_info().name})")


@password_app.command("delete")
def password_delete(sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")]) -> None:
    """Remove a sender's password from the system keyring (also of a sender no longer in senders.yaml)."""
    from . import secrets

    if secrets.delete_password(sender):
        _out(f"deleted the password of {sender} from the keyring")
        return
    try:
        config = _load_config()
    except ConfigError:
        config = None  # cleaning up the keyring must not need a usable senders.yaml
    if config is not None:
        config.sender(sender)  # nothing stored and not a sender: a typo; one line listing the senders, exit 2
    _out(f"no password of {sender} was in the keyring")


@password_app.command("status")
def password_status(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show, per sender, where its password (or OAuth2 refresh token) comes from (never the value)."""
    from . import secrets

    config = _load_config()
    backend = secrets.backend_info()
    rows = []
    for sender in config.senders.values():
        source: str = secrets.password_source(sender) if sender.auth else "not needed (auth: false)"
        if sender.oauth2 is not None:
            source = "oauth2: token_command" if source == "command" else f"oauth2 refresh token: {source}"
        rows.append({"sender": sender.key, "email": sender.email, "active": sender.active, "source": source})
    if json_out:
        _print_json(
            {"backend": backend.name, "backend_usable": backend.usable, "problem": backend.problem, "senders": rows}
        )
        return
    _table(
        None,
        ["sender", "email", "active", "password"],
        [[r["sender"], r["email"], r["active"], r["source"]] for r in rows],
    )
    # the problem text names the backend itself
    _out(f"keyring backend: {backend.name}" if backend.usable else f"keyring backend refused: {backend.problem}")


# ---------------------------------------------------------------- oauth


def _oauth_sender(config: Config, key: str) -> Any:
    """The sender ``key`` when it logs in with an OAuth2 refresh token; UsageError naming the fix otherwise."""
    sender = config.sender(key)
    if sender.oauth2 is None:
        raise UsageError(f"sender {key!r} has no oauth2: in {config.path}; add it (see senders.yaml.example) first")
    if sender.oauth2.token_command:
        raise UsageError(
            f"sender {key!r} takes its access token from oauth2.token_command; mailops keeps no refresh token for it"
        )
    return sender


@oauth_app.command("token")
def oauth_token(
    sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")],
    stdin: Annotated[bool, typer.Option("--stdin", help="Read the refresh token from standard input.")] = False,
) -> None:
    """Store a refresh token obtained elsewhere (another tool's login) in the system keyring."""
    from . import secrets

    _oauth_sender(_load_config(), sender)
    if not stdin:
        raise UsageError("pipe the refresh token in with --stdin (it is never taken from the command line)")
    value = sys.stdin.readline().strip()
    if not value:
        raise UsageError(f"no refresh token on standard input for {sender!r}: nothing stored")
    secrets.set_refresh_token(sender, value)
    _out(f"stored the OAuth refresh token of {sender} in the keyring ({secrets.backend_info().name})")


@oauth_app.command("login")
def oauth_login(
    sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")],
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Only print the sign-in URL (Google); do not open a browser.")
    ] = False,
) -> None:
    """Sign in and store the refresh token: device code for Microsoft (works over SSH), browser + PKCE for Google."""
    import webbrowser

    from . import oauth, secrets
    from .errors import SecretError

    config = _load_config()
    settings = _oauth_sender(config, sender).oauth2
    backend = secrets.backend_info()
    if not backend.usable:  # say so before the operator signs in for nothing
        raise SecretError(f"cannot store the OAuth refresh token of sender {sender!r}: {backend.problem}")
    target = config.sender(sender)
    if settings.family == "google":
        oauth.login_loopback(target, _out, None if no_browser else webbrowser.open)
    else:
        oauth.login_device_code(target, _out)
    _out(f"stored the OAuth refresh token of {sender} in the keyring ({backend.name})")


# ---------------------------------------------------------------- test-smtp / doctor


def _run_checks(config: Config, keys: list[str], send_to: str | None) -> list[Any]:
    from . import health, secrets
    from .errors import SecretError
    from .smtpcheck import CheckResult, check_sender

    store = _open_store(config)
    results = []
    for key in keys:
        sender = config.sender(key)
        try:
            password = secrets.get_password(sender) if sender.auth else None
        except SecretError as exc:
            # the message already names the fix, which differs by cause: 'password set' would fail
            # on a machine without a usable keyring, where the env variable is the way
            result = CheckResult(sender=key, host=sender.host, port=sender.port, security=sender.security)
            result.error = str(exc)
            results.append(result)
            continue
        result = check_sender(sender, password, send_to, timezone=config.timezone)
        with store.write() as conn:
            error = None if result.ok else (result.error or "check failed")
            health.record(conn, key, result.ok, _now(), error, health.settings_of(sender))
        results.append(result)
    return results


def _show_check(result: Any) -> None:
    mark = "ok" if result.ok else "FAILED"
    _out(f"{result.sender}: {mark}  {result.host}:{result.port} ({result.security})")
    if result.tls_version:
        _out(f"  tls: {result.tls_version} {result.cipher or ''}")
    if result.auth_mechanism or result.auth_result:
        _out(f"  auth: {result.auth_mechanism or '-'} {result.auth_result or ''}")
    steps = ", ".join(
        f"{name} {seconds * 1000:.0f} ms{'' if ok else ' (failed)'}" for name, seconds, ok in result.steps
    )
    if steps:
        _out(f"  steps: {steps}")
    if result.message_id:
        _out(f"  test message sent: {result.message_id}")
    for warning in result.warnings:
        _out(f"  warning: {_safe(warning)}")
    if not result.ok:
        code = f"{result.code} " if result.code else ""
        _out(f"  error: {code}{_safe(result.error)}")
        if result.hint:
            _out(f"  hint: {_safe(result.hint)}")


@app.command("test-smtp")
def test_smtp(
    senders: Annotated[list[str] | None, typer.Argument(help="Senders to test (default: every active sender).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Test every sender, inactive ones too.")] = False,
    send_to: Annotated[str | None, typer.Option("--send-to", help="Also send a real test message to ADDR.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Connect, negotiate TLS, log in (and optionally send) for each sender; record its health."""
    config = _load_config()
    if senders and all_:
        raise UsageError("name senders or pass --all, not both")
    if send_to:
        from .compose import parse_address

        parse_address(send_to, where="--send-to")
    keys = list(senders) if senders else [k for k, s in config.senders.items() if all_ or s.active]
    for key in keys:
        config.sender(key)
    if not keys:
        raise UsageError("no active senders to test; name one or pass --all")
    _warn_unverified_tls(config, keys)
    results = _run_checks(config, keys, send_to)
    if json_out:
        _print_json([r.to_dict() for r in results])
    else:
        for result in results:
            _show_check(result)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _setting_text(value: Any) -> str:
    """A setting as senders.yaml writes it: true/false, 30 rather than 30.0, 'not set' for None."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@app.command()
def doctor(
    connect: Annotated[bool, typer.Option("--connect", help="Also run test-smtp on every active sender.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check config, routes, groups, templates, keyring, passwords and database; one line per problem with its fix."""
    from .doctor import run_doctor

    config = _load_config()
    report = run_doctor(config)
    _warn_unverified_tls(config, [k for k, s in config.senders.items() if s.active])
    if connect:
        keys = [k for k, s in config.senders.items() if s.active]
        for result in _run_checks(config, keys, None):
            if result.ok:
                where = f"{result.host}:{result.port}"
                if config.senders[result.sender].auth:
                    report.ok.append(f"{result.sender}: connected to {where} and logged in")
                else:
                    report.ok.append(f"{result.sender}: connected (no login: auth false) to {where}")
            else:
                report.problems.append(
                    f"{result.sender}: {_safe(result.error)}" + (f"; {_safe(result.hint)}" if result.hint else "")
                )
    if json_out:
        settings = {
            key: {name: {"value": value, "source": source} for name, value, source in rows}
            for key, rows in report.settings.items()
        }
        _print_json({"ok": report.ok, "problems": report.problems, "warnings": report.warnings, "senders": settings})
    else:
        for line in report.ok:
            _out(f"ok       {line}")
        for key, rows in report.settings.items():
            provider = config.senders[key].provider
            _out(f"sender   {key}" + (f" (provider {provider})" if provider else "") + ": effective settings")
            for name, value, source in rows:
                shown = _setting_text(value)
                _out(f"           {name:<19}{_safe(shown)!s:<36}{source}")
        for line in report.warnings:
            _out(f"WARNING  {_safe(line)}")
        for line in report.problems:
            _out(f"PROBLEM  {line}")
        _out(f"{len(report.problems)} problem(s)" if report.problems else "no problems found")
    if report.problems:
        raise typer.Exit(1)


# ---------------------------------------------------------------- send / deliver


def _progress_runner(total: int, enabled: bool) -> Any:
    """A context manager yielding a callback that advances a progress bar (or does nothing)."""

    @contextmanager
    def runner() -> Any:
        if not enabled:
            yield lambda _outcome: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=_console(True)
        ) as progress:
            task = progress.add_task("send", total=total)
            yield lambda _outcome: progress.advance(task)

    return runner()


def _problem_lines(report: Any, config: Config) -> list[str]:
    """What was not done and what happens next: the lines cron must mail to the operator (also with -q)."""
    from .history import humanize_wait, local_time

    lines = []
    if report.total_deferred and report.next_due_at:
        when = local_time(report.next_due_at, config.timezone)
        lines.append(
            f"{report.total_deferred} message(s) deferred until {when} "
            f"(in {humanize_wait(report.next_due_at - _now())}); 'mailops deliver' sends them when due"
        )
    left = _backlog_line(report, config)
    if left:
        lines.append(_safe(left))
    shown = report.problems[:10]
    lines.extend(f"  {_safe(problem)}" for problem in shown)
    more = len(report.problems) - len(shown) + report.hidden_problems
    if more:
        lines.append(f"  ... and {more} more (see 'mailops log --status failed' and 'mailops queue list')")
    return lines


def _backlog_line(report: Any, config: Config) -> str | None:
    """What is left in the outbox (of the run or batch): due now, deferred until when, in flight elsewhere."""
    from .history import local_time

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


def _batch_done(report: Any) -> bool:
    """True when every message of the send's batch is sent (or cancelled by the operator)."""
    states = report.backlog.get("batch_states")
    return states is None or not (set(states) - {"sent", "cancelled"})


def _summary(report: Any, config: Config, json_out: bool, quiet: bool, extra: dict[str, Any] | None = None) -> None:
    data = report.to_dict()
    if extra:
        data = {**extra, **data}
    if STATE.debug:
        for trace in report.tracebacks:
            _err(trace.rstrip())
    if json_out:
        _print_json(data)
        return
    if quiet:
        # Cron mails what a job prints: silence only when everything was done.
        if report.has_problems or not _batch_done(report) or (report.interrupted and not report.deadline_reached):
            for line in _problem_lines(report, config):
                _err(line)
        return
    rows = [[s, v["sent"], v["deferred"], v["failed"]] for s, v in data["per_sender"].items()]
    if rows:
        _table("summary", ["sender", "sent", "deferred", "failed"], rows)
    refused = (
        f"; {report.refused_recipients} recipient(s) refused in {report.partially_refused} message(s)"
        if report.refused_recipients
        else ""
    )
    _out(f"sent {report.total_sent}, deferred {report.total_deferred}, failed {report.total_failed}{refused}")
    for line in _problem_lines(report, config):
        _out(line)


def _exit_for(report: Any, extra_problem: bool = False) -> None:
    # --max-seconds with work left is the plan, not a failure; a signal is an interruption
    interrupted = report.interrupted and not report.deadline_reached
    if report.has_problems or interrupted or extra_problem or not _batch_done(report):
        raise typer.Exit(1)


def _deliver(
    config: Config,
    store: Store,
    run_id: str | None,
    limit: int | None,
    max_seconds: float | None,
    show_progress: bool,
    total: int,
    batch: str | None = None,
) -> Any:
    import signal

    from .delivery import Deliverer

    deliverer = Deliverer(config, store)

    def on_sigterm(_sig: int, _frame: Any) -> None:
        # cron / systemd stop: finish the message in flight, return the rest to the queue
        deliverer.stop_event.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with _progress_runner(total, show_progress) as advance:
            return deliverer.run(run_id=run_id, batch=batch, limit=limit, max_seconds=max_seconds, progress=advance)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_previews(previews: list[Any]) -> None:
    import email
    from email import policy

    from .controls import for_terminal

    for prepared in previews:
        msg = email.message_from_bytes(prepared.email.mime, policy=policy.default)
        _out(f"--- {prepared.label} ---")
        shown = ("From", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID")
        for header in shown:
            if msg[header]:
                _out(f"{header}: {_safe(msg[header])}")
        for name, value in msg.items():  # added headers (--header, route, headers.yaml), in message order
            if name not in shown and name.lower() != "mime-version" and not name.lower().startswith("content-"):
                _out(f"{name}: {_safe(str(value))}")
        if prepared.email.envelope_to:
            _out(f"(envelope to: {_safe(', '.join(prepared.email.envelope_to))})")
        for rcpt, reason in prepared.suppressed:
            _out(f"(suppressed, left out: {_safe(rcpt)}: {_safe(reason)})")
        if prepared.suppressed and not prepared.email.envelope_to:
            _out("(not queued: every recipient is suppressed)")
        body = msg.get_body(preferencelist=("plain", "html"))
        _out("")
        text = body.get_content().rstrip() if body is not None else ""
        _out(for_terminal(text.replace("\r\n", "\n"), keep_newlines=True))
        attachments = [part.get_filename() for part in msg.iter_attachments()]
        if attachments:
            _out(f"[attachments: {_safe(', '.join(a or '?' for a in attachments))}]")
    if previews:
        _out("---")


def _show_suppressed(result: Any) -> None:
    """How many recipients send left out for the suppression list, and the first of them with the reason."""
    messages = (
        f"; {result.suppressed_messages} message(s) not queued (every recipient suppressed)"
        if result.suppressed_messages
        else ""
    )
    _out(f"left out {result.suppressed_recipients} suppressed recipient(s){messages}:")
    for item in result.suppressed:
        _out(f"  {_safe(item['label'])}: {_safe(item['recipient'])}: {_safe(item['reason'])}")
    if result.suppressed_recipients > len(result.suppressed):
        _out(f"  ... and {result.suppressed_recipients - len(result.suppressed)} more ('mailops suppress list')")


@app.command()
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
    from . import routing, sending
    from .prepare import SendRequest, parse_vars

    config = _load_config()
    due_at = None
    if at is not None:
        from .history import parse_at

        due_at = parse_at(at, config.timezone, _now())
    plan = routing.resolve(config, route, sender)
    _warn_unverified_tls(config, plan.candidates)
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
        _err(f"mailops: warning: {_safe(credentials_warning)}")
    store = _open_store(config)
    result = sending.enqueue(
        config,
        store,
        request,
        plan,
        now=_now(),
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
            _err(invalid_note)
            for problem in result.problems:
                _err(f"  {_safe(problem.message)}")
    if dry_run:
        for warning in result.warnings:
            _err(f"mailops: {_safe(warning)}")
        would_defer = result.would_defer
        info = {**result.to_dict(), "dry_run": True, "would_defer_for_quota": would_defer}
        if json_out:
            _print_json(info)
        elif not quiet:
            _out(
                f"dry run: {result.total} message(s) valid via "
                f"{plan.route or 'sender ' + plan.nominal} ({', '.join(plan.candidates)}); nothing queued or sent"
            )
            if would_defer:
                if all(unit == "messages" for _, _, unit in result.rooms):
                    left = str(int(sum(room for _, room, _ in result.rooms)))
                else:  # units differ: say each sender's
                    left = ", ".join(f"{key} {int(room)} {unit}" for key, room, unit in result.rooms)
                _out(f"{would_defer} of them would be deferred: the senders' remaining quota is {left}")
        if result.problem_count:
            raise typer.Exit(1)
        return
    if result.skipped_duplicates and not json_out and not quiet:
        _out(f"{result.skipped_duplicates} row(s) already sent or queued under batch {batch!r}: skipped")
    if queue_only or due_at is not None:
        if json_out:
            _print_json({**result.to_dict(), "due_at": due_at})
        elif not quiet and due_at is not None:
            from .history import local_time

            when = f"{local_time(due_at, config.timezone)} {config.timezone.key}"
            _out(f"queued {result.queued} message(s) due at {when}; 'mailops deliver' sends them when due")
        elif not quiet:
            _out(f"queued {result.queued} message(s); 'mailops deliver' sends them")
        if result.problem_count:
            raise typer.Exit(1)
        return
    show_progress = result.queued > 1 and not quiet and not json_out and sys.stderr.isatty()
    # With --batch, a re-run finishes the batch: every due message of it (an earlier run's too, and
    # those whose process died holding them), not only the rows queued now.
    report = _deliver(
        config, store, None if batch else result.run_id, None, None, show_progress, result.queued, batch=batch
    )
    _summary(report, config, json_out, quiet, extra=result.to_dict())
    _exit_for(report, extra_problem=bool(result.problem_count))


@app.command()
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
    from .outbox import Outbox

    config = _load_config()
    _warn_unverified_tls(config, [k for k, s in config.senders.items() if s.active])
    store = _open_store(config)
    # staged rows of a send that died before queueing them were never accepted: drop them
    Outbox(store, config.delivery).discard_abandoned(_now() - 86400)
    report = _deliver(config, store, None, limit, max_seconds, False, 0)
    _summary(report, config, json_out, quiet)
    _exit_for(report)


@app.command(
    "sendmail",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
def sendmail(ctx: typer.Context) -> None:
    """Queue one message read on stdin, as /usr/sbin/sendmail (cron, mailx, PHP); 'mailops sendmail --help'."""
    _sendmail(list(ctx.args))  # main() normally runs it directly, so that no flag goes through click


def _sendmail_args(args: list[str]) -> list[str] | None:
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


def _sendmail(argv: list[str]) -> None:
    """``mailops sendmail``: queue the message on stdin, deliver it now; exit 0 once it is queued."""
    import io

    from . import gateway

    STATE.sendmail = True
    args = gateway.parse_args(argv)
    if args.help:
        _out(gateway.USAGE.rstrip())
        return
    config = _load_config()
    stream = getattr(sys.stdin, "buffer", None) or io.BytesIO(sys.stdin.read().encode("utf-8"))
    data = gateway.read_message(stream, dot_ends=args.dot_ends)
    store = _open_store(config)
    accepted = gateway.accept(config, store, args, data, now=_now())
    report = _deliver(config, store, accepted.run_id, None, None, False, 1)
    if report.total_sent == 0:
        # queued all the same: exit 0, like a sendmail whose relay is down; cron logs this line
        why = "; ".join(report.problems[:3]) or "not delivered in this run"
        _err(
            f"mailops: sendmail: {_safe(accepted.message_id)} is queued, not sent yet: {_safe(why)}; "
            "'mailops deliver' retries"
        )


# ---------------------------------------------------------------- queue


@queue_app.command("list")
def queue_list(
    state: Annotated[
        str | None, typer.Option("--state", help="queued, sending, sent, deferred, failed or cancelled.")
    ] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch.")] = None,
    sender: Annotated[str | None, typer.Option("--sender", help="Only this sender.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most N rows.", min=1, max=MAX_ROWS)] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List messages in the outbox, newest first, with counts per state."""
    from .history import local_time
    from .outbox import Outbox
    from .states import STATES

    if state and state not in STATES:
        raise UsageError(f"--state {state!r}: expected one of {', '.join(STATES)}")
    config = _load_config()
    outbox = Outbox(_open_store(config), config.delivery)
    rows = outbox.list(state=state, batch=batch, sender=sender, limit=limit)
    counts = outbox.counts()
    if json_out:
        _print_json({"counts": counts, "messages": rows})
        return
    tz = config.timezone
    _table(
        None,
        ["id", "state", "due", "sender", "to", "subject", "attempts", "reason"],
        [
            [
                r["id"],
                r["state"],
                local_time(r["due_at"], tz) if r["state"] in ("queued", "deferred") else "",
                r["sender"] or r["nominal_sender"],
                _stored_list(r["recipients"]),
                r["subject"],
                r["attempts"],
                r["reason"] or "",
            ]
            for r in rows
        ],
    )
    _out("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "the outbox is empty")


@queue_app.command("show")
def queue_show(
    message: Annotated[int, typer.Argument(help="Message id (from 'mailops queue list').", min=1, max=MAX_ID)],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one message: state, headers and every attempt."""
    import email
    from email import policy

    from .errors import InputError
    from .history import local_time
    from .outbox import Outbox

    config = _load_config()
    found = Outbox(_open_store(config), config.delivery).get(message)
    if found is None:
        raise InputError(f"no message with id {message} in the outbox; see 'mailops queue list'")
    row, attempts = found
    parsed = email.message_from_bytes(bytes(row.pop("mime") or b""), policy=policy.default)
    headers = {k: str(v) for k, v in parsed.items()}
    if json_out:
        _print_json({"message": row, "headers": headers, "attempts": attempts})
        return
    tz = config.timezone
    # every value here may come from a data file or a server: _safe() shows control characters as escapes
    _out(f"message {row['id']}: {row['state']}" + (f" ({_safe(row['reason'])})" if row["reason"] else ""))
    _out(
        f"  batch: {_safe(row['batch'] or '-')}  route: {_safe(row['route'] or '-')}  "
        f"candidates: {_safe(_stored_list(row['candidates']))}"
    )
    _out(
        f"  created: {local_time(row['created_at'], tz)}  due: {local_time(row['due_at'], tz)}  "
        f"attempts: {row['attempts']}"
    )
    _out(f"  envelope: {_safe(row['envelope_from'])} -> {_safe(_stored_list(row['recipients']))}")
    if row["recipient_status"]:
        for rcpt, status in _stored_mapping(row["recipient_status"]).items():
            _out(f"  {_safe(rcpt)}: {_safe(status)}")
    for key, value in headers.items():
        _out(f"  {_safe(key)}: {_safe(value)}")
    for a in attempts:
        code = f"{a['smtp_code']} " if a["smtp_code"] else ""
        text = f"{code}{a['smtp_text'] or ''} {a['detail'] or ''}"
        _out(f"  attempt {local_time(a['at'], tz)} {_safe(a['sender'] or '-')}: {a['outcome']} {_safe(text)}".rstrip())


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
    from .errors import InputError

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


@queue_app.command("retry")
def queue_retry(
    message: Annotated[int | None, typer.Argument(help="Message id.", min=1, max=MAX_ID)] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Every message of this batch.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every deferred or failed message.")] = False,
) -> None:
    """Make deferred or failed messages due now ('mailops deliver' then sends them)."""
    from .outbox import Outbox

    _one_target(message, batch, all_)
    config = _load_config()
    outbox = Outbox(_open_store(config), config.delivery)
    _must_exist(outbox, message, batch)
    n, refused = outbox.retry_refused(_now(), msg_id=message, batch=batch, all_=all_)
    _out(f"{n} message(s) due now; run 'mailops deliver' to send them")
    if refused:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        _out(f"retrying {len(refused)} recipient(s) the server refused permanently ({shown})")


@queue_app.command("cancel")
def queue_cancel(
    message: Annotated[int | None, typer.Argument(help="Message id.", min=1, max=MAX_ID)] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Every unsent message of this batch.")] = None,
) -> None:
    """Cancel messages that are not sent yet (in-flight ones cannot be cancelled)."""
    from .outbox import Outbox

    _one_target(message, batch)
    config = _load_config()
    outbox = Outbox(_open_store(config), config.delivery)
    _must_exist(outbox, message, batch)
    n = outbox.cancel(_now(), msg_id=message, batch=batch)
    _out(f"cancelled {n} message(s)")


@queue_app.command("purge")
def queue_purge(
    before: Annotated[str, typer.Option("--before", help="Delete sent messages older than this date (or 30d).")],
) -> None:
    """Delete the stored bodies of sent messages older than a date; the log keeps every row."""
    from .history import parse_since, record_event
    from .outbox import Outbox

    config = _load_config()
    cutoff = parse_since(before, config.timezone, _now(), option="--before")
    store = _open_store(config)
    n = Outbox(store, config.delivery).purge(cutoff)
    record_event(store, "purge", f"purged {n} sent message(s) before {before}", _now())
    _out(f"purged {n} sent message(s) older than {before}; the log is unchanged")


# ---------------------------------------------------------------- counts, log, stats


@app.command("reset-counts")
def reset_counts(
    senders: Annotated[list[str] | None, typer.Argument(help="Senders whose counters to reset.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every sender.")] = False,
    period: Annotated[str, typer.Option("--period", help="day, month or all.")] = "day",
) -> None:
    """Zero quota usage for the current day and/or month; log rows are kept (the reset is recorded)."""
    from . import quota
    from .history import record_event
    from .outbox import Outbox

    if period not in ("day", "month", "all"):
        raise UsageError(f"--period {period!r}: expected day, month or all")
    if bool(senders) == all_:
        raise UsageError("name the senders to reset or pass --all (one of them)")
    config = _load_config()
    keys = list(senders) if senders else list(config.senders)
    for key in keys:
        config.sender(key)
    store = _open_store(config)
    now = _now()
    with store.write() as conn:
        cleared = quota.reset(conn, keys, period, config.timezone, now)
    released = Outbox(store, config.delivery).release_quota_deferred(keys, now)
    detail = "; ".join(f"{s} {p} was {c}" for s, p, c in cleared) or "nothing to reset"
    record_event(store, "reset-counts", f"period={period} senders={','.join(keys)}: {detail}", now)
    if not cleared:
        _out(f"nothing to reset: {', '.join(keys)} had no usage for period {period}")
    for sender, key, count in cleared:
        _out(f"reset {sender} {key.replace(':', ' ')}: {count} -> 0")
    if released:
        _out(f"{released} message(s) deferred for quota are due again; 'mailops deliver' sends them")


@app.command()
def log(
    sender: Annotated[str | None, typer.Option("--sender", help="Only this sender.")] = None,
    route: Annotated[str | None, typer.Option("--route", help="Only this route.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="sent, partial, deferred, failed or skipped.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Only attempts to this recipient (substring).")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="24h, 7d or a date like 2026-11-01.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most N rows, newest first.", min=1, max=MAX_ROWS)] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show delivery attempts, newest first."""
    from .history import LogFilter, local_time, parse_since, query_log

    config = _load_config()
    flt = LogFilter(
        sender=sender,
        route=route,
        status=status,
        to=to,
        batch=batch,
        since=parse_since(since, config.timezone, _now()) if since else None,
        limit=limit,
    )
    with _reading(config) as db:
        rows = query_log(db, flt)
    if json_out:
        _print_json(rows)
        return
    tz = config.timezone
    _table(
        None,
        ["time", "outcome", "sender", "route", "to", "subject", "smtp", "detail"],
        [
            [
                local_time(r["at"], tz),
                r["outcome"],
                r["sender"] or "-",
                r["route"] or "-",
                r["recipients"],
                r["subject"],
                f"{r['smtp_code'] or ''} {r['smtp_text'] or ''}".strip(),
                r["detail"] or "",
            ]
            for r in rows
        ],
    )
    if not rows:
        _out("no attempts match")


@app.command()
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
) -> None:
    """Per sender: sent today / this month against limits, success rate, response time, last error, health.

    Example: 'mailops stats --days 14' draws the last two weeks; add --json for the same numbers.
    """
    from .history import daily_outcomes, local_time, parse_since, sender_stats

    config = _load_config()
    now = _now()
    start = parse_since(since, config.timezone, now)
    with _reading(config) as db:
        rows = sender_stats(db, config, start, now)
        daily = daily_outcomes(db, config, days, now) if days is not None else None
    if daily is not None:
        quota = [
            {
                "sender": r["sender"],
                "limit_unit": r["limit_unit"],
                "today": {"used": r["sent_today"], "limit": r["daily_limit"], "pct": r["daily_usage_pct"]},
                "month": {"used": r["sent_this_month"], "limit": r["monthly_limit"], "pct": r["monthly_usage_pct"]},
            }
            for r in rows
        ]
        if json_out:
            _print_json({**daily, "quota": quota})
            return
        from .charts import draw_daily, draw_quota

        console = _console()
        draw_daily(console, daily, {r["sender"]: r["email"] for r in rows})
        draw_quota(console, rows)
        return
    if json_out:
        _print_json(rows)
        return

    def against(n: int, limit: int | None, pct: float | None, unit: str) -> str:
        counted = f"{n}/{limit} ({pct:g}%)" if limit else f"{n}"
        return counted + (" recipients" if unit == "recipients" else "")

    _table(
        None,
        ["sender", "today", "month", f"success ({since})", "avg s", "health", "last error"],
        [
            [
                r["sender"] + ("" if r["active"] else " (inactive)"),
                against(r["sent_today"], r["daily_limit"], r["daily_usage_pct"], r["limit_unit"]),
                against(r["sent_this_month"], r["monthly_limit"], r["monthly_usage_pct"], r["limit_unit"]),
                f"{r['success_rate']:g}% of {r['attempts']}" if r["success_rate"] is not None else "-",
                r["avg_response_s"] if r["avg_response_s"] is not None else "-",
                r["health"] + (f" ({local_time(r['checked_at'], config.timezone)})" if r["checked_at"] else ""),
                (f"{local_time(r['last_error_at'], config.timezone)}: " if r["last_error_at"] else "")
                + (r["last_error"] or ""),
            ]
            for r in rows
        ],
    )


# ---------------------------------------------------------------- db


@db_app.command("status")
def db_status(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the database URL (password masked), schema version and row counts."""
    from .dburl import mask_url
    from .store import Store

    config = _load_config()
    store = Store(config.database_url)  # no automatic migration: status reports what is pending
    _OPEN_STORES.append(store)
    store.check_not_newer()
    url, schema, pending = mask_url(config.database_url), store.schema_version(), store.pending_migrations()
    rows = store.row_counts() if not pending else {}
    if json_out:
        _print_json({"url": url, "schema": schema, "pending_migrations": pending, "rows": rows})
        return
    _out(f"database: {url}")
    _out(
        f"schema: {schema or '(blank)'}"
        + (f"; pending: {', '.join(pending)} (run 'mailops db upgrade')" if pending else "")
    )
    for table, n in rows.items():
        _out(f"  {table}: {n}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (every command also does this on first use)."""
    from .store import Store

    config = _load_config()
    store = Store(config.database_url)
    _OPEN_STORES.append(store)
    applied = store.migrate()
    _out(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")


# ---------------------------------------------------------------- entry point


# ---------------------------------------------------------------- suppress


def _suppress_addresses(values: list[str], where: str) -> list[str]:
    """Each value as one checked address (its addr_spec); InputError naming ``where`` for a bad one."""
    from .compose import parse_address

    return [parse_address(value, where=where).addr_spec for value in values]


@suppress_app.command("add")
def suppress_add(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to stop sending to.", metavar="ADDR...")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (shown by 'suppress list' and by send).")] = None,
) -> None:
    """Add addresses to the suppression list: send leaves them out from now on."""
    from . import suppress
    from .compose import check_header_text

    config = _load_config()
    keys = _suppress_addresses(addresses, "suppress add")
    if reason is not None:
        check_header_text(reason, where="--reason")
    store = _open_store(config)
    with store.write() as conn:
        added = suppress.add(conn, keys, reason=reason, source="manual", now=_now())
    _out(
        f"added {added} address(es) to the suppression list"
        + (f"; {len(keys) - added} already listed" if len(keys) > added else "")
    )


@suppress_app.command("remove")
def suppress_remove(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to send to again.", metavar="ADDR...")],
) -> None:
    """Remove addresses from the suppression list."""
    from . import suppress

    config = _load_config()
    keys = _suppress_addresses(addresses, "suppress remove")
    store = _open_store(config)
    with store.write() as conn:
        removed = suppress.remove(conn, keys)
    missing = len({k.lower() for k in keys}) - removed
    _out(
        f"removed {removed} address(es) from the suppression list" + (f"; {missing} were not listed" if missing else "")
    )


@suppress_app.command("list")
def suppress_list(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the suppressed addresses, when and why each was added."""
    from . import suppress
    from .history import local_time

    config = _load_config()
    store = _open_store(config)
    with store.read() as conn:
        entries = suppress.entries(conn)
    if json_out:
        _print_json(
            [{"address": e.address, "added_at": e.added_at, "reason": e.reason, "source": e.source} for e in entries]
        )
        return
    if not entries:
        _out("the suppression list is empty")
        return
    tz = config.timezone
    _table(
        "suppressed",
        ["address", "added", "source", "reason"],
        [[_safe(e.address), local_time(e.added_at, tz), e.source, _safe(e.reason or "")] for e in entries],
    )


@suppress_app.command("import")
def suppress_import(
    file: Annotated[Path, typer.Argument(help="One address per line, or a CSV file with an 'email' column.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (default: imported from FILE).")] = None,
) -> None:
    """Add every address of a file to the suppression list; a bad address stops the import (nothing added)."""
    from . import suppress
    from .compose import check_header_text, parse_address

    config = _load_config()
    lines = suppress.read_import_file(file)
    keys = [parse_address(text, where=f"{file} line {number}").addr_spec for number, text in lines]
    text = reason if reason is not None else f"imported from {file.name}"
    check_header_text(text, where="--reason")
    store = _open_store(config)
    with store.write() as conn:
        added = suppress.add(conn, keys, reason=text, source="import", now=_now())
    _out(
        f"imported {len(keys)} address(es) from {file}: {added} new, "
        f"{len({k.lower() for k in keys}) - added} already listed"
    )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; the one place where errors become messages and exit codes."""
    STATE.sendmail, STATE.config_path, STATE.debug = False, None, False  # set again by the options below
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None and Path(sys.argv[0]).name == "sendmail":
        args = ["sendmail", *args]  # installed as /usr/sbin/sendmail (a symlink to mailops)
    try:
        sendmail_args = _sendmail_args(args)
        if sendmail_args is not None:
            _sendmail(sendmail_args)
        else:
            app(args=args, prog_name="mailops", standalone_mode=True)
    except MailopsError as exc:
        if STATE.debug:
            import traceback

            traceback.print_exc()  # plain traceback: no local variables (they may hold passwords)
        # one line, whatever a data file or server put in the message
        _err(f"mailops: error: {_safe(exc)}")
        if isinstance(exc, InvalidBatchError) and exc.problem_count > 1:
            for problem in exc.problems:
                _err(f"  {_safe(problem)}")
            if exc.problem_count > len(exc.problems):
                _err(f"  ... and {exc.problem_count - len(exc.problems)} more")
        sys.exit(exc.sysexit if STATE.sendmail else exc.exit_code)
    except KeyboardInterrupt:
        _err("mailops: interrupted; nothing queued was lost ('mailops deliver' sends what is left)")
        sys.exit(130)
    finally:
        while _OPEN_STORES:
            _OPEN_STORES.pop().close()


def run() -> None:
    """The ``mailops`` executable: :func:`main`, then exit without the interpreter's teardown.

    Tearing down the module graphs of SQLAlchemy, pydantic and the rest costs
    0.03-0.1 s per command, which cron jobs and scripts that call mailops in a
    loop pay for nothing. Stores are closed by :func:`main`; output is flushed
    here. An unexpected exception still takes Python's normal path (traceback).
    """
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # as Python does for sys.exit("message")
            print(exc.code, file=sys.stderr)
            code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # reader went away, or stream closed: nothing more to say
        code = code or 1
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
