"""password and oauth: where each sender's secret comes from."""

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import ConfigError, MailopsError, UsageError
from . import runtime
from .helptext import examples
from .output import out, print_json, show_table
from .runtime import load_config, open_store, reading

if TYPE_CHECKING:
    from ..config import Config

password_app = typer.Typer(help="Store, remove and inspect sender passwords (kept in the system keyring).")
oauth_app = typer.Typer(help="OAuth2 senders (oauth2: in senders.yaml): log in, store a refresh token.")


@password_app.command(
    "set", epilog=examples("mailops password set sales", "printf '%s\\n' \"$PW\" | mailops password set sales --stdin")
)
def password_set(
    sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")],
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from standard input (for scripts).")
    ] = False,
) -> None:
    """Store a sender's password in the system keyring (asks twice, input hidden)."""
    from .. import secrets

    config = load_config()
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
    out(f"stored the password of {sender} in the keyring ({secrets.backend_info().name})")


@password_app.command("delete", epilog=examples("mailops password delete sales"))
def password_delete(sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")]) -> None:
    """Remove a sender's password from the system keyring (also of a sender no longer in senders.yaml)."""
    from .. import secrets

    if secrets.delete_password(sender):
        out(f"deleted the password of {sender} from the keyring")
        return
    try:
        config = load_config()
    except ConfigError:
        config = None  # cleaning up the keyring must not need a usable senders.yaml
    if config is not None:
        config.sender(sender)  # nothing stored and not a sender: a typo; one line listing the senders, exit 2
    out(f"no password of {sender} was in the keyring")


@password_app.command("status", epilog=examples("mailops password status", "mailops password status --json"))
def password_status(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show, per sender, where its password (or OAuth2 refresh token) comes from (never the value)."""
    from .. import secrets

    config = load_config()
    backend = secrets.backend_info()
    tokens = _token_states(config)
    rows = []
    for sender in config.senders.values():
        shown = ""  # the table adds what is known of the access token
        if not sender.auth:
            source = words = "not needed (auth: false)"
            available = True
        else:
            found = secrets.password_source(sender)
            available = found in ("env", "command", "keyring")
            words = secrets.describe_source(sender, found)  # "stored (keyring)", "from MAILOPS_PASSWORD_SALES"...
            source = found
            if sender.oauth2 is not None:
                source = "oauth2: token_command" if found == "command" else f"oauth2 refresh token: {found}"
        row: dict[str, Any] = {
            "sender": sender.key,
            "email": sender.email,
            "active": sender.active,
            "source": source,
            "available": available,
            "password": words,
        }
        if sender.oauth2 is not None and not sender.oauth2.token_command:
            state, text = _access_token(tokens, sender.key, config)
            known = (tokens or {}).get(sender.key)
            row.update(access_token=state, access_token_expires_at=known.expires_at if known else None)
            shown = f"; {text}" if available else ""
        rows.append((row, shown))
    if json_out:
        senders = [row for row, _ in rows]
        print_json(
            {"backend": backend.name, "backend_usable": backend.usable, "problem": backend.problem, "senders": senders}
        )
        return
    show_table(
        None,
        ["sender", "email", "active", "password"],
        [[r["sender"], r["email"], "yes" if r["active"] else "no", r["password"] + shown] for r, shown in rows],
    )
    # the problem text names the backend itself
    out(f"keyring backend: {backend.name}" if backend.usable else f"keyring backend refused: {backend.problem}")


def _token_states(config: "Config") -> dict[str, Any] | None:
    """What the database knows of the OAuth2 senders' access tokens ({} without such a sender, so the database is
    not opened for nothing); None when it cannot be read."""
    if not any(s.oauth2 is not None and not s.oauth2.token_command for s in config.senders.values()):
        return {}
    from ..health import load_tokens

    try:
        with reading(config) as db:
            return dict(load_tokens(db))
    except MailopsError:
        return None


def _access_token(tokens: dict[str, Any] | None, key: str, config: "Config") -> tuple[str, str]:
    """(state, text) of a sender's last access token: valid, expired, none (never obtained) or unknown."""
    from ..history import local_time

    if tokens is None:
        return "unknown", "access token: unknown (the database cannot be read)"
    state = tokens.get(key)
    if state is None or state.expires_at is None:
        return "none", "no access token yet (one is fetched at the first send or test-smtp)"
    when = f"{local_time(state.expires_at, config.timezone)} {config.timezone.key}"
    if state.expires_at > runtime.now():
        return "valid", f"access token valid until {when}"
    return "expired", f"access token expired {when} (a new one is fetched when needed)"


# ---------------------------------------------------------------- oauth


def _oauth_sender(config: "Config", key: str) -> Any:
    """The sender ``key`` when it logs in with an OAuth2 refresh token; UsageError naming the fix otherwise."""
    sender = config.sender(key)
    if sender.oauth2 is None:
        raise UsageError(f"sender {key!r} has no oauth2: in {config.path}; add it (see senders.yaml.example) first")
    if sender.oauth2.token_command:
        raise UsageError(
            f"sender {key!r} takes its access token from oauth2.token_command; mailops keeps no refresh token for it"
        )
    return sender


def _token_stored(config: "Config", key: str) -> None:
    """A new refresh token is in the keyring: a problem doctor showed about storing an older one is over."""
    from ..health import clear_token_problem

    try:
        with open_store(config).write() as conn:
            clear_token_problem(conn, key)
    except MailopsError:
        pass  # the token is stored; the database only said what doctor shows, and says it until a refresh works


@oauth_app.command("token", epilog=examples("printf '%s\\n' \"$TOKEN\" | mailops oauth token support --stdin"))
def oauth_token(
    sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")],
    stdin: Annotated[bool, typer.Option("--stdin", help="Read the refresh token from standard input.")] = False,
) -> None:
    """Store a refresh token obtained elsewhere (another tool's login) in the system keyring."""
    from .. import secrets

    config = load_config()
    _oauth_sender(config, sender)
    if not stdin:
        raise UsageError("pipe the refresh token in with --stdin (it is never taken from the command line)")
    value = sys.stdin.readline().strip()
    if not value:
        raise UsageError(f"no refresh token on standard input for {sender!r}: nothing stored")
    secrets.set_refresh_token(sender, value)
    _token_stored(config, sender)
    out(f"stored the OAuth refresh token of {sender} in the keyring ({secrets.backend_info().name})")


@oauth_app.command("login", epilog=examples("mailops oauth login support", "mailops oauth login sales --no-browser"))
def oauth_login(
    sender: Annotated[str, typer.Argument(help="Sender name from senders.yaml.")],
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Only print the sign-in URL (Google); do not open a browser.")
    ] = False,
) -> None:
    """Sign in and store the refresh token: device code for Microsoft (works over SSH), browser + PKCE for Google."""
    import webbrowser

    from .. import oauth, secrets
    from ..errors import SecretError

    config = load_config()
    settings = _oauth_sender(config, sender).oauth2
    backend = secrets.backend_info()
    if not backend.usable:  # say so before the operator signs in for nothing
        raise SecretError(f"cannot store the OAuth refresh token of sender {sender!r}: {backend.problem}")
    target = config.sender(sender)
    if settings.family == "google":
        oauth.login_loopback(target, out, None if no_browser else webbrowser.open)
    else:
        oauth.login_device_code(target, out)
    _token_stored(config, sender)
    out(f"stored the OAuth refresh token of {sender} in the keyring ({backend.name})")
