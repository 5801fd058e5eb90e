"""The ``mailops`` command line: the Typer app, the global options, and :func:`main`.

The commands live in one module per group (setup, checks, sending, history,
password, queue, suppress); this module puts them together in the order
``mailops --help`` lists them. No SMTP or SQL here. Heavy modules (database,
templating, SMTP) are imported inside the commands that need them so
``mailops --help``, ``--version`` and ``password status`` start fast. Every
expected error is a MailopsError, turned into one line on stderr and its exit
code in :func:`main`, and nowhere else.

The modules that define commands do not postpone their annotations (no
``from __future__ import annotations``): Typer reads every command's
annotations at each start, and strings it would compile and evaluate, about
40 ms per start; a name imported only for type checking is quoted instead.
"""

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError  # Typer vendors click (0.26-0.29); it does not re-export these
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperGroup

from ..errors import InvalidBatchError, MailopsError, UsageError
from . import checks, history, password, queue, runtime, sending, setup, suppress
from .helptext import examples, make_readable
from .output import err, safe
from .runtime import STATE
from .sending import run_sendmail, sendmail_args


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        make_readable(self)  # Typer has built the whole tree by now: every command's help names its values

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors_in_one_line():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Commands,
    name="mailops",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples(
        "mailops init                 # starter files, then the next steps",
        "mailops send -r renewal -t renewal -d customers.csv --dry-run",
        "mailops deliver -q           # from cron: send what is due",
        "mailops send --help          # any command's options and examples",
    ),
)
# Unnamed groups add their commands to the top level; --help lists commands in this order, then the groups.
app.add_typer(setup.app)
app.add_typer(checks.app)
app.add_typer(sending.app)
app.add_typer(history.app)
app.add_typer(password.password_app, name="password")
app.add_typer(password.oauth_app, name="oauth")
app.add_typer(queue.queue_app, name="queue")
app.add_typer(setup.db_app, name="db")
app.add_typer(suppress.suppress_app, name="suppress")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; the one place where errors become messages and exit codes."""
    STATE.sendmail, STATE.config_path, STATE.debug = False, None, False  # set again by the options below
    STATE.timezone = None
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None and Path(sys.argv[0]).name == "sendmail":
        args = ["sendmail", *args]  # installed as /usr/sbin/sendmail (a symlink to mailops)
    try:
        rest = sendmail_args(args)
        if rest is not None:
            run_sendmail(rest)
        else:
            app(args=args, prog_name="mailops", standalone_mode=True)
    except MailopsError as exc:
        if STATE.debug:
            import traceback

            traceback.print_exc()  # plain traceback: no local variables (they may hold passwords)
        # one line, whatever a data file or server put in the message
        err(f"mailops: error: {safe(exc)}")
        if isinstance(exc, InvalidBatchError) and exc.problem_count > 1:
            for problem in exc.problems:
                err(f"  {safe(problem)}")
            if exc.problem_count > len(exc.problems):
                err(f"  ... and {exc.problem_count - len(exc.problems)} more")
        sys.exit(exc.sysexit if STATE.sendmail else exc.exit_code)
    except KeyboardInterrupt:
        err("mailops: interrupted; nothing queued was lost ('mailops deliver' sends what is left)")
        sys.exit(130)
    finally:
        runtime.close_stores()


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
