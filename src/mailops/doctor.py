"""``mailops doctor``: check everything that can be checked without sending, one line per finding."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config
from .errors import MailopsError
from .routing import DEFAULT_ROUTE


@dataclass
class DoctorReport:
    """Findings: what is fine, and problems each with its fix."""

    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


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
        if source in ("env", "command", "keyring"):
            report.ok.append(f"{sender.key}: password from {source}")
        elif source == "missing":
            report.problems.append(f"{sender.key}: no password; run 'mailops password set {sender.key}'")
        else:
            needs_keyring = True
            report.problems.append(
                f"{sender.key}: password unavailable (keyring refused); set "
                f"{secrets.password_env_var(sender.key)} or password_command for this sender"
            )
    if not backend.usable and needs_keyring:
        report.problems.append(str(backend.problem))  # it names the backend and the way around it

    try:
        store = Store(config.database_url)
        store.check_not_newer()
        pending = store.pending_migrations()
        if store.schema_version() is None:
            # never used yet: every command creates the schema on first use, nothing to fix
            report.ok.append(f"database {mask_url(config.database_url)}: reachable, empty (schema created on first use)")
        elif pending:
            report.problems.append(
                f"database {mask_url(config.database_url)}: schema not up to date (pending: {', '.join(pending)}); "
                "run 'mailops db upgrade'"
            )
        else:
            report.ok.append(f"database {mask_url(config.database_url)}: reachable, schema {store.schema_version()}")
        store.close()
    except MailopsError as exc:
        report.problems.append(str(exc))
    return report
