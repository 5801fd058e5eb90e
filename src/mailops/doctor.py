"""``mailops doctor``: check everything that can be checked without sending, one line per finding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Config, Sender
from .envnames import password_env_var
from .errors import MailopsError
from .routing import DEFAULT_ROUTE


@dataclass
class DoctorReport:
    """Findings: what is fine, and problems each with its fix."""

    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # worth knowing, not wrong: exit code unchanged
    #: sender key -> (setting, effective value, where it came from) for every setting in SHOWN_SETTINGS
    settings: dict[str, list[tuple[str, Any, str]]] = field(default_factory=dict)


#: The settings doctor shows per sender, with where each came from.
SHOWN_SETTINGS = (
    "host", "port", "security", "username", "auth", "daily_limit", "monthly_limit", "limit_unit", "per_minute",
    "min_interval", "max_message_size", "timeout", "connections", "max_per_connection", "tls_verify",
)  # fmt: skip


def sender_settings(sender: Sender) -> list[tuple[str, Any, str]]:
    """(setting, value, source) for ``sender``: source is explicit, defaults, provider NAME or built-in default."""
    sources = dict(sender.sources)
    return [(name, getattr(sender, name), sources.get(name, "built-in default")) for name in SHOWN_SETTINGS]


def _intranet_warnings(config: Config, active: list[Sender]) -> list[str]:
    """Intranet or test addresses that would go through a public provider preset (it cannot deliver them)."""
    from .compose import is_intranet_domain
    from .providers import PROVIDERS, PUBLIC

    warnings = []
    public = [s for s in active if s.provider in PUBLIC]
    for sender in public:
        title = PROVIDERS[str(sender.provider)].title
        for key in ("email", "reply_to"):
            value = getattr(sender, key)
            if value and is_intranet_domain(value.rpartition("@")[2].rstrip(">").strip()):
                warnings.append(
                    f"{sender.key}: {key} {value} is an intranet or test address, but the sender goes through "
                    f"{title} on the public Internet; use your own relay for it, or a public address"
                )
    # A group is not tied to a route: only when every sender is a public provider is it sure that its
    # intranet members cannot arrive (send --dry-run checks the actual route of a send).
    if public and len(public) == len(active):
        names = ", ".join(s.key for s in public)
        for group, members in config.groups.items():
            internal = [m for m in members if is_intranet_domain(m.rpartition("@")[2].rstrip(">").strip())]
            if internal:
                more = f" and {len(internal) - 1} more" if len(internal) > 1 else ""
                warnings.append(
                    f"group {group}: {internal[0]}{more} is an intranet or test address; "
                    f"sent through a public provider ({names}) it cannot arrive: route such mail through your own relay"
                )
    return warnings


def run_doctor(config: Config) -> DoctorReport:
    """Check config, routes, groups, templates, keyring, passwords and the database."""
    from . import secrets
    from .dburl import mask_url
    from .store import Store

    report = DoctorReport()
    active = [s for s in config.senders.values() if s.active]
    report.ok.append(f"config {config.path}: {len(config.senders)} sender(s), {len(active)} active")
    if not active:
        report.problems.append(f"{config.path}: no active sender; set 'active: true' on at least one sender")

    for sender in config.senders.values():
        report.settings[sender.key] = sender_settings(sender)
    report.warnings.extend(_intranet_warnings(config, active))

    for route in config.routes.values():
        usable = [k for k in route.senders if config.senders[k].active]
        if usable:
            report.ok.append(f"route {route.name}: {route.strategy} over {', '.join(route.senders)}")
        else:
            report.problems.append(
                f"route {route.name}: every sender is inactive ({', '.join(route.senders)}); "
                "activate one or add an active sender to the route"
            )
    if DEFAULT_ROUTE not in config.routes:
        report.problems.append(
            f"{config.path}: no 'default' route; 'mailops send' without --route or --sender will refuse to run; "
            "add routes.default"
        )
    if config.groups:
        report.ok.append(f"groups: {', '.join(f'{g} ({len(m)})' for g, m in config.groups.items())}")

    if config.templates_dir.is_dir():
        from .templates import list_templates

        names = list_templates(config.templates_dir)
        report.ok.append(f"templates {config.templates_dir}: {', '.join(names) or 'none yet'}")
    else:
        report.problems.append(
            f"templates folder {config.templates_dir} does not exist; create it or fix 'templates:' in {config.path}"
        )

    backend = secrets.backend_info()
    if backend.usable:
        report.ok.append(f"keyring backend: {backend.name}")
    needs_keyring = False
    for sender in active:
        if sender.security == "none" and sender.auth and not sender.allow_plaintext_auth:
            # mailops never sends a password in clear text: this sender can never log in
            report.problems.append(
                f"{sender.key}: security: none with auth: true can never log in (mailops does not send a "
                "password unencrypted); set 'auth: false' for a local relay that needs no login, or "
                "'security: starttls' / 'ssl' for a server that does"
            )
            continue
        if not sender.auth:
            report.ok.append(f"{sender.key}: no login needed (auth: false)")
            continue
        source = secrets.password_source(sender)
        if sender.oauth2 is not None:
            if source in ("env", "command", "keyring"):
                what = "token_command" if source == "command" else f"refresh token from {source}"
                report.ok.append(f"{sender.key}: OAuth2 ({what})")
            else:
                report.problems.append(str(secrets.credentials_problem(sender)))
            continue
        if source in ("env", "command", "keyring"):
            report.ok.append(f"{sender.key}: password from {source}")
        elif source == "missing":
            report.problems.append(f"{sender.key}: no password; run 'mailops password set {sender.key}'")
        else:
            needs_keyring = True
            report.problems.append(
                f"{sender.key}: password unavailable (keyring refused); set "
                f"{password_env_var(sender.key)} or password_command for this sender"
            )
    if not backend.usable and needs_keyring:
        report.problems.append(str(backend.problem))  # it names the backend and the way around it

    try:
        store = Store(config.database_url)
        store.check_not_newer()
        pending = store.pending_migrations()
        if store.schema_version() is None:
            # never used yet: every command creates the schema on first use, nothing to fix
            report.ok.append(
                f"database {mask_url(config.database_url)}: reachable, empty (schema created on first use)"
            )
        elif pending:
            report.problems.append(
                f"database {mask_url(config.database_url)}: schema not up to date (pending: {', '.join(pending)}); "
                "run 'mailops db upgrade'"
            )
        else:
            report.ok.append(f"database {mask_url(config.database_url)}: reachable, schema {store.schema_version()}")
            from .health import load_tokens

            with store.read() as conn:
                tokens = load_tokens(conn)
            for sender in active:
                state = tokens.get(sender.key)
                if sender.oauth2 is not None and state is not None and state.problem:
                    report.problems.append(state.problem)  # it names the sender and the fix
        store.close()
    except MailopsError as exc:
        report.problems.append(str(exc))
    return report
