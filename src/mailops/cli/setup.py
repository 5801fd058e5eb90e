"""init, dev-server, demo and db: getting started and the database."""

from pathlib import Path
from typing import Annotated, Any

import typer

from .helptext import examples
from .output import err, out, print_json, safe
from .runtime import OPEN_STORES, load_config

app = typer.Typer()
db_app = typer.Typer(help="The database: schema status and upgrades.")


@app.command(epilog=examples("mailops init", "mailops init /srv/mail", "mailops init --force"))
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the files in.", metavar="DIR")] = Path("."),
    force: Annotated[
        bool, typer.Option("--force", help="Replace starter files that exist (yours are kept without it).")
    ] = False,
) -> None:
    """Create a starter senders.yaml, an example template and sample data in DIR; print the next steps.

    The next steps fit this machine: 'mailops password set' where the keyring
    works, else the MAILOPS_PASSWORD_<SENDER> variable.
    """
    from .. import scaffold, secrets
    from ..envnames import password_env_var

    for written in scaffold.write_starter(directory, force=force):
        kept = " (it exists; --force replaces it)" if written.action == "kept" else ""
        out(f"{written.action} {written.path}{kept}")
    backend = secrets.backend_info()  # the keyring library's own choice of backend, judged as every command does
    steps = scaffold.next_steps(
        directory,
        keyring_usable=backend.usable,
        keyring_name=backend.name,
        env_var=password_env_var(scaffold.SENDER),
    )
    out("\n".join(steps))


@app.command(
    "dev-server", epilog=examples("mailops dev-server", "mailops dev-server --port 2525 --maildir captured --web 8026")
)
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

    from ..devserver import CaptureServer, serve_forever
    from ..devweb import WebView

    def show(msg: Any) -> None:
        # anything on the network may send here: show control characters as escapes
        out(
            safe(
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
        err(f"capturing mail on {host}:{port}{where}; point a sender at it with security: none and auth: false")
        if viewer is not None:
            err(f"web view of the captured mail: {viewer.url}")
        serve_forever(server)  # returns on Ctrl-C (it handles KeyboardInterrupt itself)
    err(f"stopped after capturing {server.count} message(s)")


@app.command(epilog=examples("mailops demo", "mailops demo --dir /tmp/mailops-demo"))
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the demo's files.")] = Path("mailops-demo"),
) -> None:
    """Run a real mail merge through a route to a local capture server, then show the log."""
    from ..demo import run_demo

    code = run_demo(directory, echo=out)
    raise typer.Exit(code)


# ---------------------------------------------------------------- db


@db_app.command("status", epilog=examples("mailops db status"))
def db_status(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the database URL (password masked), schema version, row counts and the space messages, attachments and
    the log take."""
    from ..dburl import mask_url
    from ..store import Store

    config = load_config()
    store = Store(config.database_url)  # no automatic migration: status reports what is pending
    OPEN_STORES.append(store)
    store.check_not_newer()
    url, schema, pending = mask_url(config.database_url), store.schema_version(), store.pending_migrations()
    rows = store.row_counts() if not pending else {}
    sizes = store.sizes() if not pending else {}
    if json_out:
        print_json({"url": url, "schema": schema, "pending_migrations": pending, "rows": rows, "bytes": sizes})
        return
    out(f"database: {url}")
    out(
        f"schema: {schema or '(blank)'}"
        + (f"; pending: {', '.join(pending)} (run 'mailops db upgrade')" if pending else "")
    )
    for table, n in rows.items():
        out(f"  {table}: {n}")
    if sizes:
        out("size: " + ", ".join(f"{name} {_megabytes(size)}" for name, size in sizes.items()))


def _megabytes(size: int) -> str:
    """Bytes for people: ``1.4 MB``, ``24 kB`` (powers of 1000)."""
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


@db_app.command("upgrade", epilog=examples("mailops db upgrade"))
def db_upgrade() -> None:
    """Apply pending schema migrations (every command also does this on first use)."""
    from ..store import Store

    config = load_config()
    store = Store(config.database_url)
    OPEN_STORES.append(store)
    applied = store.migrate()
    out(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")
