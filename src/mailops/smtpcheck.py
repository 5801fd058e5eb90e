"""The domain of ``mailops test-smtp``: connect, negotiate TLS, log in, optionally send, and explain failures.

Nothing here writes to the database or prints: :func:`check_sender` returns a
:class:`CheckResult` and the caller records the sender's health and renders it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING

from .config import Sender
from .transport import SmtpFailure, SmtpSession

if TYPE_CHECKING:
    from .compose import PreparedEmail

_GMAIL_HOSTS = ("gmail", "googlemail")
_MICROSOFT_HOSTS = ("outlook", "office365", "hotmail", "live.com")
#: Ports whose security is a near-universal convention.
_IMPLICIT_TLS_PORT = 465
_STARTTLS_PORTS = (587, 25)


@dataclass
class CheckResult:
    """Outcome of testing one sender; ``to_dict`` gives the ``--json`` form."""

    sender: str
    host: str
    port: int
    security: str
    ok: bool = False
    steps: list[tuple[str, float, bool]] = field(default_factory=list)  # (step, seconds, ok) in order
    tls_version: str | None = None
    cipher: str | None = None
    auth_mechanism: str | None = None
    auth_result: str | None = None  # "235 accepted", "535 refused", "skipped (auth: false)"
    error: str | None = None  # the server's reply text or the error, one line
    code: int | None = None  # the server's reply code for the error, when there is one
    hint: str | None = None  # one-line fix
    warnings: list[str] = field(default_factory=list)
    message_id: str | None = None  # of the test message, when one was sent
    server_max_size: int | None = None  # the SIZE the server announced at EHLO (None: no limit given)

    @property
    def seconds(self) -> float:
        """Total time of all steps."""
        return sum(seconds for _, seconds, _ in self.steps)

    def to_dict(self) -> dict[str, object]:
        """Plain data for JSON output; steps become objects."""
        data = asdict(self)
        data["steps"] = [{"step": name, "seconds": round(seconds, 4), "ok": ok} for name, seconds, ok in self.steps]
        data["seconds"] = round(self.seconds, 4)
        return data


def _warnings_for(sender: Sender) -> list[str]:
    warnings = []
    if sender.security != "none" and not sender.tls_verify:
        warnings.append("certificate verification disabled by tls_verify: false")
    if sender.security == "none":
        if sender.auth and sender.allow_plaintext_auth:
            warnings.append("the password is sent unencrypted (security: none with allow_plaintext_auth: true)")
        else:
            warnings.append("the connection is not encrypted (security: none)")
    return warnings


def build_test_message(sender: Sender, send_to: str, now: datetime | None = None) -> PreparedEmail:
    """The small message ``test-smtp --send-to`` sends, composed like every other message.

    Through ``compose``: the same address parser for ``send_to`` and the
    sender's reply_to, and the same folding, so a long display name cannot
    give a line the server refuses.
    """
    from .compose import build_message, make_address, make_message_id, parse_address

    reply_to = None
    if sender.reply_to:
        reply_to = [parse_address(sender.reply_to, where=f"senders.{sender.key}.reply_to")]
    return build_message(
        from_addr=make_address(sender.display_name or "", sender.email),
        reply_to=reply_to,
        to=[parse_address(send_to, where="--send-to")],
        cc=[],
        bcc=[],
        subject=f"mailops test message from {sender.key}",
        text=(
            f"This is a test message sent by 'mailops test-smtp {sender.key}' through "
            f"{sender.host}:{sender.port} (security: {sender.security}).\n"
            "If you can read it, this sender can deliver mail.\n"
        ),
        html=None,
        attachments=[],
        message_id=make_message_id(sender.domain),
        date=now or datetime.now(UTC),
        where="test message",
    )


def check_sender(
    sender: Sender,
    password: str | None,
    send_to: str | None = None,
    *,
    now: datetime | None = None,
    timezone: tzinfo | None = None,
) -> CheckResult:
    """Connect, negotiate TLS, authenticate and, with ``send_to``, send a test message; never raises SmtpFailure.

    The test message is dated when it is handed over, in ``timezone`` (UTC when not given).
    """
    result = CheckResult(
        sender=sender.key, host=sender.host, port=sender.port, security=sender.security, warnings=_warnings_for(sender)
    )
    session = SmtpSession(sender, password)
    try:
        try:
            session.open()
            if send_to:
                # Date: when it is handed over (after connecting and logging in), in the configured zone.
                message = build_test_message(sender, send_to, now or datetime.now(timezone or UTC))
                result.message_id = message.message_id
                start = time.monotonic()
                try:
                    session.send(message.mime, message.envelope_from, message.envelope_to)
                except SmtpFailure:
                    session.steps.append(("send", time.monotonic() - start, False))
                    raise
                session.steps.append(("send", time.monotonic() - start, True))
            result.ok = True
        except SmtpFailure as failure:
            result.error = failure.text
            result.code = failure.code
            result.hint = hint_for(sender, failure)
        _describe_session(result, session, sender)
    finally:
        if session.is_open:
            start = time.monotonic()
            session.close()
            result.steps.append(("quit", time.monotonic() - start, True))
    return result


def _describe_session(result: CheckResult, session: SmtpSession, sender: Sender) -> None:
    result.steps = list(session.steps)
    result.tls_version = session.tls_version
    result.server_max_size = session.announced_size
    result.cipher = session.cipher
    result.auth_mechanism = session.auth_mechanism
    if not sender.auth:
        result.auth_result = "skipped (auth: false)"
    elif session.auth_reply is not None:
        code = session.auth_reply[0]
        result.auth_result = f"{code} accepted" if session.auth_ok else f"{code} refused"


def _port_mismatch(sender: Sender) -> str | None:
    if sender.security == "starttls" and sender.port == _IMPLICIT_TLS_PORT:
        return (
            f"port {sender.port} expects TLS from the first byte: use security: ssl with port 465, "
            "or security: starttls with port 587"
        )
    if sender.security == "ssl" and sender.port in _STARTTLS_PORTS:
        return (
            f"port {sender.port} starts in plain text and upgrades with STARTTLS: use security: starttls "
            f"with port {sender.port}, or security: ssl with port 465"
        )
    return None


def hint_for(sender: Sender, failure: SmtpFailure) -> str | None:
    """A one-line fix for a failed check, or None when there is nothing better to say than the error."""
    key = sender.key
    host = sender.host.lower()
    address = f"{sender.host}:{sender.port}"
    text = failure.text.lower()

    mismatch = _port_mismatch(sender)
    if (
        mismatch
        and failure.kind in ("timeout", "tls", "no-starttls", "temporary", "protocol")
        and failure.step
        in (
            "connect",
            "ehlo",
            "starttls",
            "tls",
        )
    ):
        return mismatch

    if failure.kind == "auth":
        if failure.code is None and "no password" in text:
            return f"no password is stored for {key}: run 'mailops password set {key}'"
        from .providers import auth_hint

        provider_hint = auth_hint(sender.provider, key)
        if provider_hint:
            return provider_hint
        if any(name in host for name in _GMAIL_HOSTS):
            return (
                "Gmail refuses the normal account password: create an app password "
                f"(https://myaccount.google.com/apppasswords) and store it with 'mailops password set {key}'"
            )
        if any(name in host for name in _MICROSOFT_HOSTS):
            return (
                f"Microsoft refuses the login for {key}: use an app password, or ask the admin to enable "
                f"SMTP AUTH for the mailbox (off by default in Microsoft 365), then run 'mailops password set {key}'"
            )
        return (
            f"wrong username or password for {key}: check 'username' in senders.yaml "
            f"and run 'mailops password set {key}'"
        )

    if failure.kind == "tls" and "cannot load ca_file" in text:
        return f"ca_file of {key} is not a usable CA certificate: point it at the CA's certificate in PEM format"
    if failure.kind == "tls":
        if "mismatch" in text or "not valid for" in text:
            return (
                f"the server's certificate is not valid for {sender.host!r}: set host to the name on the "
                "certificate (usually the provider's documented SMTP host)"
            )
        if "expired" in text:
            return (
                "the server's certificate has expired: tell the server's administrator "
                "(tls_verify: false only for testing)"
            )
        if "certificate verification failed" in text:
            return (
                "the server's certificate is not trusted: set ca_file to the CA that signed it "
                "(tls_verify: false only for testing)"
            )
        return (
            f"TLS negotiation with {address} failed: check that security matches the port (starttls on 587, ssl on 465)"
        )

    if failure.kind == "no-starttls":
        return "the server does not offer STARTTLS on this port: use security: ssl with port 465, or check host/port"

    if failure.kind == "connect":
        if "resolve" in text:
            return f"the host name {sender.host!r} does not resolve: check host in senders.yaml and DNS"
        return f"nothing listens on {address}: check host, port and firewall"

    if failure.kind == "timeout":
        return f"no answer within {sender.timeout:g} s: check host/port/firewall or raise timeout"

    if failure.kind == "plaintext-refused":
        return (
            f"{key} would send its password unencrypted: use security: starttls or ssl, or, only for a trusted "
            "local relay, set allow_plaintext_auth: true with security: none"
        )

    if failure.kind == "no-auth-offered":
        return (
            f"{address} offers no usable AUTH here: set auth: false if it is a relay that needs no login, "
            "otherwise check security and port"
        )

    if failure.step == "mail" and failure.code == 530:
        return f"the server requires a login: set auth: true for {key} and run 'mailops password set {key}'"
    if failure.step == "mail" and failure.kind == "permanent":
        return f"the server refuses {sender.email} as sender: check that {sender.username} may send as that address"
    if failure.step == "rcpt" and failure.kind == "permanent":
        return "the server refused the test recipient: check the --send-to address"
    return None
