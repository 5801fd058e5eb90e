"""``mailops doctor``: check everything that can be checked without sending, one line per finding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .config import Config, Sender
from .envnames import password_env_var
from .errors import MailopsError
from .routing import DEFAULT_ROUTE

Status = Literal["ok", "warning", "problem"]


@dataclass(frozen=True)
class Finding:
    """One result: what was checked, ok / warning / problem, what was found, and the fix (None when fine)."""

    check: str  # "config", "route default", "templates", "keyring", "sender sales", "database", "connect sales"
    status: Status
    detail: str
    fix: str | None = None

    @property
    def line(self) -> str:
        """The finding as one line of text: ``detail; fix``."""
        return f"{self.detail}; {self.fix}" if self.fix else self.detail


def split_fix(text: str) -> tuple[str, str | None]:
    """An error's ``problem; fix`` text as (problem, fix); (text, None) when it names no fix after a ``;``."""
    detail, sep, fix = text.rpartition("; ")
    return (detail, fix) if sep and detail else (text, None)


@dataclass
class DoctorReport:
    """Findings in the order they were made, and each sender's effective settings."""

    findings: list[Finding] = field(default_factory=list)
    #: sender key -> (setting, effective value, where it came from) for every setting in SHOWN_SETTINGS
    settings: dict[str, list[tuple[str, Any, str]]] = field(default_factory=dict)

    def add(self, check: str, status: Status, detail: str, fix: str | None = None) -> None:
        """Record a finding."""
        self.findings.append(Finding(check, status, detail, fix))

    def add_error(self, check: str, text: str, status: Status = "problem") -> None:
        """Record an error message (``problem; fix``) as a finding."""
        self.add(check, status, *split_fix(text))

    def lines(self, status: Status) -> list[str]:
        """The findings of one status as lines of text."""
        return [f.line for f in self.findings if f.status == status]

    @property
    def problems(self) -> list[str]:
        """The problems as lines (each with its fix); any makes doctor exit 1."""
        return self.lines("problem")


#: The settings doctor shows per sender, with where each came from.
SHOWN_SETTINGS = (
    "host", "port", "security", "username", "auth", "daily_limit", "monthly_limit", "limit_unit", "per_minute",
    "min_interval", "max_message_size", "timeout", "connections", "max_per_connection", "tls_verify",
)  # fmt: skip


def sender_settings(sender: Sender) -> list[tuple[str, Any, str]]:
    """(setting, value, source) for ``sender``: source is explicit, defaults, provider NAME or built-in default."""
    sources = dict(sender.sources)
    return [(name, getattr(sender, name), sources.get(name, "built-in default")) for name in SHOWN_SETTINGS]


def _intranet_warnings(config: Config, active: list[Sender]) -> list[Finding]:
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
                    Finding(
                        f"sender {sender.key}",
                        "warning",
                        f"{sender.key}: {key} {value} is an intranet or test address, but the sender goes through "
                        f"{title} on the public Internet",
                        "use your own relay for it, or a public address",
                    )
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
                    Finding(
                        f"group {group}",
                        "warning",
                        f"group {group}: {internal[0]}{more} is an intranet or test address",
                        f"sent through a public provider ({names}) it cannot arrive: "
                        "route such mail through your own relay",
                    )
                )
    return warnings


def run_doctor(config: Config) -> DoctorReport:
    """Check config, routes, groups, templates, keyring, passwords and the database."""
    from . import secrets
    from .dburl import mask_url
    from .store import Store

    report = DoctorReport()
    active = [s for s in config.senders.values() if s.active]
    report.add("config", "ok", f"config {config.path}: {len(config.senders)} sender(s), {len(active)} active")
    if not active:
        report.add("config", "problem", f"{config.path}: no active sender", "set 'active: true' on at least one sender")

    for sender in config.senders.values():
        report.settings[sender.key] = sender_settings(sender)
    report.findings.extend(_intranet_warnings(config, active))

    for route in config.routes.values():
        usable = [k for k in route.senders if config.senders[k].active]
        if usable:
            report.add(
                f"route {route.name}", "ok", f"route {route.name}: {route.strategy} over {', '.join(route.senders)}"
            )
        else:
            report.add(
                f"route {route.name}",
                "problem",
                f"route {route.name}: every sender is inactive ({', '.join(route.senders)})",
                "activate one or add an active sender to the route",
            )
    if DEFAULT_ROUTE not in config.routes:
        report.add(
            f"route {DEFAULT_ROUTE}",
            "problem",
            f"{config.path}: no 'default' route; 'mailops send' without --route or --sender will refuse to run",
            "add routes.default",
        )
    if config.groups:
        report.add("groups", "ok", f"groups: {', '.join(f'{g} ({len(m)})' for g, m in config.groups.items())}")

    if config.templates_dir.is_dir():
        from .templates import list_templates

        names = list_templates(config.templates_dir)
        report.add("templates", "ok", f"templates {config.templates_dir}: {', '.join(names) or 'none yet'}")
    else:
        report.add(
            "templates",
            "problem",
            f"templates folder {config.templates_dir} does not exist",
            f"create it or fix 'templates:' in {config.path}",
        )

    backend = secrets.backend_info()
    if backend.usable:
        report.add("keyring", "ok", f"keyring backend: {backend.name}")
    needs_keyring = False
    for sender in active:
        check = f"sender {sender.key}"
        if sender.security == "none" and sender.auth and not sender.allow_plaintext_auth:
            # mailops never sends a password in clear text: this sender can never log in
            report.add(
                check,
                "problem",
                f"{sender.key}: security: none with auth: true can never log in (mailops does not send a "
                "password unencrypted)",
                "set 'auth: false' for a local relay that needs no login, or "
                "'security: starttls' / 'ssl' for a server that does",
            )
            continue
        if not sender.auth:
            report.add(check, "ok", f"{sender.key}: no login needed (auth: false)")
            continue
        source = secrets.password_source(sender)
        if sender.oauth2 is not None:
            if source in ("env", "command", "keyring"):
                what = "token_command" if source == "command" else f"refresh token from {source}"
                report.add(check, "ok", f"{sender.key}: OAuth2 ({what})")
            else:
                report.add_error(check, str(secrets.credentials_problem(sender)))
            continue
        if source in ("env", "command", "keyring"):
            report.add(check, "ok", f"{sender.key}: password from {source}")
        elif source == "missing":
            report.add(check, "problem", f"{sender.key}: no password", f"run 'mailops password set {sender.key}'")
        else:
            needs_keyring = True
            report.add(
                check,
                "problem",
                f"{sender.key}: password unavailable (keyring refused)",
                f"set {password_env_var(sender.key)} or password_command for this sender",
            )
    if not backend.usable and needs_keyring:
        report.add_error("keyring", str(backend.problem))  # it names the backend and the way around it

    where = f"database {mask_url(config.database_url)}"
    try:
        store = Store(config.database_url)
        store.check_not_newer()
        pending = store.pending_migrations()
        if store.schema_version() is None:
            # never used yet: every command creates the schema on first use, nothing to fix
            report.add("database", "ok", f"{where}: reachable, empty (schema created on first use)")
        elif pending:
            report.add(
                "database",
                "problem",
                f"{where}: schema not up to date (pending: {', '.join(pending)})",
                "run 'mailops db upgrade'",
            )
        else:
            report.add("database", "ok", f"{where}: reachable, schema {store.schema_version()}")
            from .health import load_tokens

            with store.read() as conn:
                tokens = load_tokens(conn)
            for sender in active:
                state = tokens.get(sender.key)
                if sender.oauth2 is not None and state is not None and state.problem:
                    report.add_error(f"sender {sender.key}", state.problem)  # it names the sender and the fix
        store.close()
    except MailopsError as exc:
        report.add_error("database", str(exc))
    return report
