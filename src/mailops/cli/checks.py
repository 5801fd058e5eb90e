"""test-smtp and doctor: is each sender reachable, is the configuration sound."""

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError
from . import runtime
from .helptext import examples
from .output import err, out, print_json, safe, warn_unverified_tls
from .runtime import load_config, open_store

if TYPE_CHECKING:
    from ..config import Config

app = typer.Typer()


def _run_checks(config: "Config", keys: list[str], send_to: str | None) -> list[Any]:
    from .. import health, secrets
    from ..errors import SecretError
    from ..smtpcheck import CheckResult, check_sender

    store = open_store(config)
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
            health.record(
                conn, key, result.ok, runtime.now(), error, health.settings_of(sender), max_size=result.server_max_size
            )
        results.append(result)
    for line in health.record_token_news(store):
        err(f"mailops: warning: {safe(line)}")
    return results


def _show_check(result: Any) -> None:
    mark = "ok" if result.ok else "FAILED"
    out(f"{result.sender}: {mark}  {result.host}:{result.port} ({result.security})")
    if result.tls_version:
        out(f"  tls: {result.tls_version} {result.cipher or ''}")
    if result.auth_mechanism or result.auth_result:
        out(f"  auth: {result.auth_mechanism or '-'} {result.auth_result or ''}")
    steps = ", ".join(
        f"{name} {seconds * 1000:.0f} ms{'' if ok else ' (failed)'}" for name, seconds, ok in result.steps
    )
    if steps:
        out(f"  steps: {steps}")
    if result.message_id:
        out(f"  test message sent: {result.message_id}")
    for warning in result.warnings:
        out(f"  warning: {safe(warning)}")
    if not result.ok:
        code = f"{result.code} " if result.code else ""
        out(f"  error: {code}{safe(result.error)}")
        if result.hint:
            out(f"  hint: {safe(result.hint)}")


@app.command("test-smtp", epilog=examples("mailops test-smtp", "mailops test-smtp sales --send-to you@example.com"))
def test_smtp(
    senders: Annotated[list[str] | None, typer.Argument(help="Senders to test (default: every active sender).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Test every sender, inactive ones too.")] = False,
    send_to: Annotated[str | None, typer.Option("--send-to", help="Also send a real test message to ADDR.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Connect, negotiate TLS, log in (and optionally send) for each sender; record its health."""
    config = load_config()
    if senders and all_:
        raise UsageError("name senders or pass --all, not both")
    if send_to:
        from ..compose import parse_address

        parse_address(send_to, where="--send-to")
    keys = list(senders) if senders else [k for k, s in config.senders.items() if all_ or s.active]
    for key in keys:
        config.sender(key)
    if not keys:
        raise UsageError("no active senders to test; name one or pass --all")
    warn_unverified_tls(config, keys)
    results = _run_checks(config, keys, send_to)
    if json_out:
        print_json([r.to_dict() for r in results])
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


@app.command(epilog=examples("mailops doctor", "mailops doctor --connect"))
def doctor(
    connect: Annotated[bool, typer.Option("--connect", help="Also run test-smtp on every active sender.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check config, routes, groups, templates, keyring, passwords and database; one line per problem with its fix."""
    from ..doctor import run_doctor

    config = load_config()
    report = run_doctor(config)
    warn_unverified_tls(config, [k for k, s in config.senders.items() if s.active])
    if connect:
        keys = [k for k, s in config.senders.items() if s.active]
        for result in _run_checks(config, keys, None):
            check = f"connect {result.sender}"
            if result.ok:
                where = f"{result.host}:{result.port}"
                if config.senders[result.sender].auth:
                    report.add(check, "ok", f"{result.sender}: connected to {where} and logged in")
                else:
                    report.add(check, "ok", f"{result.sender}: connected (no login: auth false) to {where}")
            else:
                report.add(check, "problem", f"{result.sender}: {safe(result.error)}", safe(result.hint) or None)
    if json_out:
        findings: list[dict[str, Any]] = [
            {"check": f.check, "status": f.status, "detail": f.detail, "fix": f.fix} for f in report.findings
        ]
        for key, rows in report.settings.items():
            provider = config.senders[key].provider
            findings.append(
                {
                    "check": f"settings {key}",
                    "status": "info",
                    "detail": f"{key}: effective settings" + (f" (provider {provider})" if provider else ""),
                    "fix": None,
                    "settings": {name: {"value": value, "source": source} for name, value, source in rows},
                }
            )
        print_json(findings)
    else:
        for line in report.lines("ok"):
            out(f"ok       {line}")
        for key, rows in report.settings.items():
            provider = config.senders[key].provider
            out(f"sender   {key}" + (f" (provider {provider})" if provider else "") + ": effective settings")
            for name, value, source in rows:
                shown = _setting_text(value)
                out(f"           {name:<19}{safe(shown)!s:<36}{source}")
        for line in report.lines("warning"):
            out(f"WARNING  {safe(line)}")
        for line in report.problems:
            out(f"PROBLEM  {line}")
        out(f"{len(report.problems)} problem(s)" if report.problems else "no problems found")
    if report.problems:
        raise typer.Exit(1)
