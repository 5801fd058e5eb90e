"""smtplib sessions: TLS, AUTH, timeouts, connection reuse and classification of SMTP failures.

:class:`SmtpSession` owns one SMTP connection for one sender. Every library
error (smtplib, ssl, socket) becomes a :class:`SmtpFailure` that says at which
step it happened and what kind of problem it is, so the caller can decide
between failing over to another sender, retrying later, or giving up.

Safety rules kept here:

* TLS always uses :func:`ssl.create_default_context` (plus the sender's
  ``ca_file``); verification is off only when the sender says ``tls_verify: false``.
* The password is sent only over an encrypted connection, unless the sender
  explicitly allows plaintext AUTH with ``security: none``.
* Every socket operation is bounded by the sender's ``timeout``.
* The password never appears in an exception, a repr or a log line.
* Once the message data was transmitted, a failure is reported and never
  retried here: a blind retry could deliver the message twice.

With a server that advertises PIPELINING (RFC 2920), MAIL FROM, the RCPT TOs
and DATA go out in one write and their replies are read in order; each reply
is handled as in the one-command-at-a-time exchange, which servers without
PIPELINING get.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .config import Sender

#: Steps after which a failure says nothing about the message, only about the sender's server or account.
_SESSION_STEPS = frozenset({"connect", "ehlo", "starttls", "tls", "auth", "mail"})
#: Kinds that point at the sender's configuration or server rather than at one message.
_SENDER_KINDS = frozenset({"connect", "timeout", "tls", "no-starttls", "auth", "plaintext-refused", "no-auth-offered"})
#: AUTH mechanisms we can speak, in order of preference (PLAIN is fine inside TLS; CRAM-MD5 last resort).
_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
#: Failures after which the connection is still in a clean SMTP state, so QUIT is polite.
_POLITE_AFTER = frozenset({"no-starttls", "plaintext-refused", "no-auth-offered", "auth"})
_CRLF_RE = re.compile(rb"\r\n|\r|\n")
#: Addresses smtplib's quoteaddr returns unchanged inside <>: a dot-atom of common characters at a plain
#: domain (parsing each with email.utils.parseaddr cost a tenth of a worker's CPU). Others go through quoteaddr.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
#: QUIT is a courtesy: never wait the full sender timeout for it.
_QUIT_TIMEOUT = 5.0


@dataclass(eq=False)
class SmtpFailure(Exception):
    """One failed SMTP step, classified; internal to sending (the caller turns it into outcomes or errors)."""

    step: str  # connect | ehlo | starttls | tls | auth | mail | rcpt | data | quit
    # connect | timeout | tls | no-starttls | no-auth-offered | auth | plaintext-refused
    # | temporary | permanent | protocol
    kind: str
    code: int | None  # SMTP reply code when the server gave one
    text: str  # server reply text or OS/SSL error, one line, never a password
    #: recipient -> (code, text) when the failure is "every recipient was refused"
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: True when the connection broke after the message data went out: the server may have accepted it
    maybe_delivered: bool = False

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        reply = f"{self.code} {self.text}" if self.code is not None else self.text
        return f"{self.step}: {reply}"

    @property
    def sender_problem(self) -> bool:
        """True when another sender may succeed: the server or account failed, not this message.

        Failures before any recipient was named (connect, TLS, login, MAIL FROM)
        concern the sender; a failure during DATA never does, because the message
        may already be on its way and a second sender could deliver it twice.
        """
        if self.step in ("data", "quit"):
            return False
        return self.kind in _SENDER_KINDS or self.step in _SESSION_STEPS

    @property
    def temporary(self) -> bool:
        """True when trying again later may work: 4xx replies, timeouts, refused or dropped connections."""
        if self.kind in ("temporary", "timeout", "connect"):
            return True
        return self.code is not None and 400 <= self.code < 500


@dataclass
class SendResult:
    """What the server did with one message."""

    accepted: list[str]  # envelope recipients the server accepted
    refused: dict[str, tuple[int, str]]  # recipient -> (code, text) for recipients refused while others were accepted
    code: int | None  # final reply to DATA
    text: str
    seconds: float
    server_max_size: int | None = None  # the SIZE the server announced at EHLO on this connection


class _Retry(Exception):
    """Internal: the reused connection went away before DATA; reconnect once and start the message again."""

    def __init__(self, failure: SmtpFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class _CallerError(Exception):
    """Internal: the caller's ``while_waiting`` raised ``error``. Carried past the transaction's handlers so that
    an ``OSError`` of the caller's (a database file, say) is not taken for the server's and retried or reported
    as an SMTP failure; :meth:`SmtpSession.send` raises ``error`` itself."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class _BeforeEndOfData:
    """The caller's ``while_waiting`` of one :meth:`SmtpSession.send`, run at most once (a reconnect repeats
    the transaction, not the caller's bookkeeping); if it raises, the connection is dropped first."""

    __slots__ = ("callback", "session")

    def __init__(self, session: SmtpSession, callback: Callable[[], None] | None) -> None:
        self.session = session
        self.callback = callback

    def __call__(self) -> None:
        callback, self.callback = self.callback, None
        if callback is None:
            return
        try:
            callback()
        except Exception as exc:
            self.session._abort()  # the message is unfinished: dropping the connection abandons it
            raise _CallerError(exc) from exc
        except BaseException:
            self.session._abort()
            raise


def _one_line(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return " ".join(value.split())


def _challenge_status(challenge: bytes) -> str | None:
    """The ``status`` (and ``scope``) of an XOAUTH2 error challenge, which is JSON, as short text."""
    import json

    try:
        payload = json.loads(challenge)
    except ValueError:
        return None
    if not isinstance(payload, dict) or "status" not in payload:
        return None
    scope = f", scope {payload['scope']}" if payload.get("scope") else ""
    return _one_line(f"status {payload['status']}{scope}")[:200]


def _kind_for_code(code: int | None) -> str:
    if code is not None and 400 <= code < 500:
        return "temporary"
    if code is not None and 500 <= code < 600:
        return "permanent"
    return "protocol"


def _no_delay(smtp: smtplib.SMTP) -> None:
    """Send every write at once (TCP_NODELAY). A message's end of data goes out in its own write, after
    the previous outcome is recorded; with Nagle's algorithm it would wait up to 40 ms for the ACK of
    the data before it (delayed ACK), on every message."""
    try:
        if smtp.sock is not None:
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (or already closed): nothing to tune
        pass


def _is_8bit(data: bytes) -> bool:
    return not data.isascii()  # in C: a generator over every byte cost more than the rest of the send


def announced_size(value: str | None) -> int | None:
    """The limit of an EHLO ``SIZE`` keyword's parameter (RFC 1870); None without one, or for 0 (no limit)."""
    if value is None or not value.strip().isdigit():
        return None
    size = int(value.strip())
    return size if size > 0 else None


def quoted_address(address: str) -> str:
    """``address`` in angle brackets as ``smtplib.quoteaddr`` quotes it for MAIL FROM and RCPT TO."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def _command(verb: str, args: str) -> str:
    """One command line as ``smtplib.SMTP.putcmd`` writes it (and refuses it: no CR or LF inside)."""
    line = f"{verb} {args}\r\n"
    if "\r" in line[:-2] or "\n" in line[:-2]:
        shown = line[:-2].replace("\n", "\\n").replace("\r", "\\r")
        raise ValueError(f"command and arguments contain prohibited newline characters: {shown}")
    return line


def _crlf(data: bytes) -> bytes:
    """``data`` with every line ending CRLF; returned as it is when it already is (mailops' own messages):
    three counts cost a few milliseconds a megabyte, the substitution ten times that."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs and data.count(b"\r") == pairs:
        return data
    return _CRLF_RE.sub(b"\r\n", data)


def _dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency for CRLF-only ``data``: a line that starts with "." gets a second one.

    Line starts are the start and what follows each CRLF: smtplib's regular expression, without one.
    """
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


class _BannerMixin(smtplib.SMTP):
    """Keeps the server's greeting, which smtplib's constructor otherwise discards."""

    banner: str | None = None

    def connect(self, host: str = "localhost", port: int = 0, source_address: Any = None) -> tuple[int, bytes]:
        # source_address goes to smtplib unchanged (typeshed's type for it differs between versions)
        code, message = super().connect(host, port, source_address)
        self.banner = _one_line(message)
        return code, message


class _SMTP(_BannerMixin, smtplib.SMTP):
    """smtplib.SMTP keeping the greeting."""


class _SMTP_SSL(_BannerMixin, smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL keeping the greeting."""


class SmtpSession:
    """One SMTP connection for one sender, opened lazily and reused for many messages.

    After :meth:`open`, the attributes ``server_banner``, ``tls_version``,
    ``cipher``, ``auth_mechanism``, ``auth_ok``, ``auth_reply`` and ``timings``
    describe the session (``steps`` also lists the failed step, for test-smtp).
    With ``security: ssl`` the TLS handshake is part of the ``connect`` step.
    """

    def __init__(
        self,
        sender: Sender,
        password: str | None,
        *,
        local_hostname: str | None = None,
        max_per_connection: int | None = None,
    ) -> None:
        self.sender = sender
        self._password = password  # private; never shown by repr or errors
        self.local_hostname = local_hostname
        self.max_per_connection = max_per_connection or sender.max_per_connection
        self._smtp: smtplib.SMTP | None = None
        self._sent_on_connection = 0  # transactions started on the current connection
        self._reset_info()

    def __repr__(self) -> str:
        state = "open" if self._smtp is not None else "closed"
        return f"SmtpSession(sender={self.sender.key!r}, server={self.address!r}, {state})"

    @property
    def address(self) -> str:
        """``host:port`` of the sender's server, for messages."""
        return f"{self.sender.host}:{self.sender.port}"

    @property
    def is_open(self) -> bool:
        """True while a connection is established."""
        return self._smtp is not None

    def _reset_info(self) -> None:
        self.announced_size: int | None = None  # SIZE of the last EHLO (RFC 1870): the largest message it takes
        self.server_banner: str | None = None
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.auth_mechanism: str | None = None
        self.auth_ok: bool | None = None
        self.auth_reply: tuple[int, str] | None = None
        self.steps: list[tuple[str, float, bool]] = []

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per completed step of the last :meth:`open` (connect, ehlo, starttls, auth)."""
        return {name: seconds for name, seconds, ok in self.steps if ok}

    # ------------------------------------------------------------ connection

    def _tls_context(self) -> ssl.SSLContext:
        cafile = str(self.sender.ca_file) if self.sender.ca_file else None
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
            raise SmtpFailure(
                "tls", "tls", None, _one_line(f"cannot load ca_file {cafile}: {reason}; it must hold PEM certificates")
            ) from None
        if not self.sender.tls_verify:
            # Only on the sender's explicit request (tls_verify: false); test-smtp warns about it.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _run_step(self, name: str, action: Callable[[], object]) -> object:
        """Run one step of opening the session, timing it and classifying any failure."""
        start = time.monotonic()
        try:
            result = action()
        except SmtpFailure:
            self.steps.append((name, time.monotonic() - start, False))
            raise
        except Exception as exc:  # noqa: BLE001 - classified into SmtpFailure, anything unexpected re-raised
            self.steps.append((name, time.monotonic() - start, False))
            failure = self._classify(exc, name)
        else:
            self.steps.append((name, time.monotonic() - start, True))
            return result
        raise failure

    def open(self) -> None:
        """Connect, EHLO, STARTTLS or implicit TLS as configured, EHLO again, and log in if the sender needs it."""
        self.close()
        self._reset_info()
        sender = self.sender
        try:
            self._open(sender)
        except SmtpFailure as failure:
            if failure.code is not None or failure.kind in _POLITE_AFTER:
                self.close()  # the server answered and still follows the protocol: say goodbye
            else:
                self._abort()  # broken, timed out or mid-TLS: a QUIT would only wait for nothing
            raise
        except BaseException:
            self._abort()
            raise
        self._sent_on_connection = 0

    def _open(self, sender: Sender) -> None:
        context: ssl.SSLContext | None = None
        if sender.security in ("ssl", "starttls"):
            # Built before connecting, so a bad ca_file fails without touching the network.
            try:
                context = self._tls_context()
            except SmtpFailure:
                self.steps.append(("tls", 0.0, False))
                raise

        def connect() -> smtplib.SMTP:
            # Passing the host to the constructor is what makes smtplib verify it on TLS
            # (server_hostname); the subclasses keep the greeting for test-smtp.
            if sender.security == "ssl":
                return _SMTP_SSL(
                    sender.host,
                    sender.port,
                    local_hostname=self.local_hostname,
                    timeout=sender.timeout,
                    context=context,
                )
            return _SMTP(sender.host, sender.port, local_hostname=self.local_hostname, timeout=sender.timeout)

        smtp = self._run_step("connect", connect)
        assert isinstance(smtp, (_SMTP, _SMTP_SSL))
        self._smtp = smtp
        _no_delay(smtp)
        self.server_banner = smtp.banner
        if sender.security == "ssl":
            self._note_tls(smtp)

        self._run_step("ehlo", lambda: self._ehlo(smtp))

        if sender.security == "starttls":
            if not smtp.has_extn("starttls"):
                self.steps.append(("starttls", 0.0, False))
                raise SmtpFailure("starttls", "no-starttls", None, f"{self.address} does not offer STARTTLS")
            assert context is not None
            self._run_step("starttls", lambda: self._starttls(smtp, context))
            self._note_tls(smtp)
            self._run_step("ehlo", lambda: self._ehlo(smtp))

        if sender.auth:
            self._run_step("auth", lambda: self._login(smtp))

    def _ehlo(self, smtp: smtplib.SMTP) -> None:
        code, reply = smtp.ehlo()
        if not 200 <= code < 300:
            # An old server without ESMTP: HELO works, but offers neither STARTTLS nor AUTH.
            code, reply = smtp.helo()
            if not 200 <= code < 300:
                raise SmtpFailure("ehlo", _kind_for_code(code), code, _one_line(reply))
        self.announced_size = announced_size(smtp.esmtp_features.get("size"))

    def _starttls(self, smtp: smtplib.SMTP, context: ssl.SSLContext) -> None:
        try:
            smtp.starttls(context=context)
        except smtplib.SMTPResponseException as exc:
            raise SmtpFailure(
                "starttls", _kind_for_code(exc.smtp_code), exc.smtp_code, _one_line(exc.smtp_error)
            ) from None

    def _note_tls(self, smtp: smtplib.SMTP) -> None:
        sock = smtp.sock
        if isinstance(sock, ssl.SSLSocket):
            self.tls_version = sock.version()
            cipher = sock.cipher()
            self.cipher = cipher[0] if cipher else None

    def _login(self, smtp: smtplib.SMTP) -> None:
        sender = self.sender
        encrypted = isinstance(smtp.sock, ssl.SSLSocket)
        if not encrypted and not (sender.security == "none" and sender.allow_plaintext_auth):
            raise SmtpFailure(
                "auth",
                "plaintext-refused",
                None,
                f"refusing to send the password of {sender.key} over an unencrypted connection to {self.address}",
            )
        if not smtp.has_extn("auth"):
            raise SmtpFailure("auth", "no-auth-offered", None, f"{self.address} does not offer AUTH on this connection")
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if sender.oauth2 is not None:
            self._login_xoauth2(smtp, offered)
            return
        if self._password is None:
            raise SmtpFailure("auth", "auth", None, f"no password available for {sender.key}")
        usable = [mech for mech in _MECHANISMS if mech in offered]
        if not usable:
            raise SmtpFailure(
                "auth",
                "no-auth-offered",
                None,
                f"{self.address} offers AUTH {' '.join(offered) or '(nothing)'} but none of {', '.join(_MECHANISMS)}",
            )
        failure: SmtpFailure | None = None
        encoding_problem = False
        smtp.user, smtp.password = sender.username, self._password
        try:
            for mechanism in usable:
                self.auth_mechanism = mechanism
                authobject = getattr(smtp, "auth_" + mechanism.lower().replace("-", "_"))
                try:
                    code, reply = smtp.auth(mechanism, authobject)
                except smtplib.SMTPAuthenticationError as exc:
                    failure = SmtpFailure("auth", "auth", exc.smtp_code, self._scrub(_one_line(exc.smtp_error)))
                    self.auth_reply = (exc.smtp_code, failure.text)
                    # 535 means "wrong credentials": another mechanism will not help and each
                    # failed attempt counts towards the provider's lockout.
                    if exc.smtp_code == 535:
                        break
                    continue
                except UnicodeEncodeError:
                    # smtplib sends AUTH as ASCII; the exception would carry the password, so drop it.
                    encoding_problem = True
                    break
                self.auth_ok = True
                self.auth_reply = (code, _one_line(reply))
                return
        finally:
            smtp.password = ""  # the session keeps its own copy for reconnects
        self.auth_ok = False
        if encoding_problem:
            raise SmtpFailure(
                "auth",
                "auth",
                None,
                f"the username or password of {sender.key} has non-ASCII characters, which AUTH "
                f"{self.auth_mechanism} cannot send",
            )
        assert failure is not None
        raise failure

    def _login_xoauth2(self, smtp: smtplib.SMTP, offered: list[str]) -> None:
        """SASL XOAUTH2 with the sender's access token; a refused token is replaced once by a fresh one.

        smtplib's ``auth()`` calls the auth object with no challenge for the
        initial response, then once per 334 reply with the decoded challenge.
        A refused XOAUTH2 token gets a 334 whose challenge is a JSON error
        (status, schemes, scope); the client must answer it with an empty
        line, after which the server sends its final reply (535, 454, ...),
        which smtplib raises as SMTPAuthenticationError.
        """
        from . import oauth
        from .errors import SecretError

        sender = self.sender
        self.auth_mechanism = "XOAUTH2"
        if "XOAUTH2" not in offered:
            raise SmtpFailure(
                "auth",
                "no-auth-offered",
                None,
                f"{self.address} offers AUTH {' '.join(offered) or '(nothing)'} but not XOAUTH2, which an oauth2: "
                "sender needs",
            )
        failure: SmtpFailure | None = None
        refused: str | None = None
        for _attempt in (1, 2):
            try:
                token = oauth.access_token(sender, refused=refused)
            except SecretError as exc:  # revoked refresh token, endpoint down, token_command failing
                self.auth_ok = False
                raise SmtpFailure("auth", "auth", None, _one_line(str(exc))) from None
            challenges: list[bytes] = []

            def respond(
                challenge: bytes | None = None, token: str = token, challenges: list[bytes] = challenges
            ) -> str:
                if challenge is None:
                    return oauth.xoauth2_initial_response(sender.username, token)
                challenges.append(challenge)
                return ""  # RFC 7628 3.2.3: the client answers the error challenge with an empty response

            try:
                code, reply = smtp.auth("XOAUTH2", respond)
            except smtplib.SMTPAuthenticationError as exc:
                text = _one_line(exc.smtp_error).replace(token, "***")
                status = _challenge_status(challenges[0]) if challenges else None
                if status:
                    text = f"{text} (token refused: {status})"
                failure = SmtpFailure("auth", "auth", exc.smtp_code, text)
                self.auth_reply = (exc.smtp_code, text)
                refused = token
                continue  # the token may have expired early or been revoked: one fresh token, then give up
            except UnicodeEncodeError:
                self.auth_ok = False
                raise SmtpFailure(
                    "auth",
                    "auth",
                    None,
                    f"the username of {sender.key} has non-ASCII characters, which XOAUTH2 cannot send",
                ) from None
            self.auth_ok = True
            self.auth_reply = (code, _one_line(reply))
            return
        self.auth_ok = False
        assert failure is not None
        raise failure

    def _scrub(self, text: str) -> str:
        """Remove the password should a server ever echo it back."""
        if self._password and self._password in text:
            text = text.replace(self._password, "***")
        return text

    def _classify(self, exc: BaseException, step: str) -> SmtpFailure:
        """Turn a library exception into an SmtpFailure for ``step``; re-raise what we do not know."""
        where = self.address
        if isinstance(exc, SmtpFailure):
            return exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = exc.verify_message or exc.reason or str(exc)
            return SmtpFailure("tls", "tls", None, _one_line(f"certificate verification failed: {reason}"))
        if isinstance(exc, ssl.SSLError):
            reason = exc.reason or exc.strerror or str(exc)
            return SmtpFailure("tls", "tls", None, _one_line(f"TLS handshake with {where} failed: {reason}"))
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return SmtpFailure(step, "auth", exc.smtp_code, self._scrub(_one_line(exc.smtp_error)))
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return SmtpFailure(step, "no-auth-offered" if step == "auth" else "protocol", None, _one_line(str(exc)))
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            if isinstance(exc.__context__, TimeoutError):
                # smtplib reports a read timeout as a disconnection; the cause says what happened.
                return SmtpFailure(step, "timeout", None, f"no answer from {where} within {self.sender.timeout:g} s")
            detail = _one_line(str(exc)) or "connection closed"
            return SmtpFailure(step, "temporary", None, f"{where} closed the connection ({detail})")
        if isinstance(exc, smtplib.SMTPResponseException):
            return SmtpFailure(
                step, _kind_for_code(exc.smtp_code), exc.smtp_code, self._scrub(_one_line(exc.smtp_error))
            )
        if isinstance(exc, smtplib.SMTPException):
            return SmtpFailure(step, "protocol", None, self._scrub(_one_line(str(exc))))
        if isinstance(exc, ConnectionRefusedError):
            return SmtpFailure(step, "connect", None, f"connection refused by {where}")
        if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
            return SmtpFailure(step, "timeout", None, f"no answer from {where} within {self.sender.timeout:g} s")
        if isinstance(exc, socket.gaierror):
            return SmtpFailure(step, "connect", None, f"cannot resolve host {self.sender.host!r}: {exc.strerror}")
        if isinstance(exc, OSError):
            if step == "connect" and not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                return SmtpFailure(step, "connect", None, f"cannot connect to {where}: {exc.strerror or exc}")
            return SmtpFailure(step, "temporary", None, f"connection to {where} broke: {exc.strerror or exc}")
        raise exc

    # --------------------------------------------------------------- sending

    def send(
        self, mime: bytes, mail_from: str, rcpt_to: list[str], *, while_waiting: Callable[[], None] | None = None
    ) -> SendResult:
        """Send one message; returns accepted and refused recipients, raises SmtpFailure if nothing was accepted.

        ``while_waiting`` runs once, before the end of data (the final dot)
        is sent: the caller's bookkeeping of the previous message overlaps
        this message's transaction, and is done before the server may accept
        this one (so a crash leaves at most one accepted message unrecorded).
        With PIPELINING it runs as soon as MAIL FROM, RCPT TO and DATA are
        out, while the server answers them (so also when it then refuses
        them); without, once the message data is out, and not when the
        transaction fails before that. If it raises, the connection is
        dropped (the message is abandoned, never accepted) and the exception
        propagates.
        """
        if not rcpt_to:
            raise ValueError("send() needs at least one recipient")
        # SMTP requires CRLF; messages rendered with the default policy use bare LF, and smtplib
        # sends bytes as they are (a stray LF would end up in the body).
        mime = _crlf(mime)
        start = time.monotonic()
        before_end = _BeforeEndOfData(self, while_waiting)
        if self._smtp is not None and self._sent_on_connection >= self.max_per_connection:
            # Providers limit messages per connection; rotate before they refuse us.
            self.close()
        for attempt in (1, 2):
            if self._smtp is None:
                self.open()
            # Only a connection that already carried a transaction can have been closed while idle.
            reused = self._sent_on_connection > 0
            self._sent_on_connection += 1
            try:
                result = self._transaction(mime, mail_from, rcpt_to, reused, before_end)
            except _CallerError as caller:
                raise caller.error from None
            except _Retry as retry:
                self._abort()
                if attempt == 2:
                    raise retry.failure from None
                continue
            result.seconds = time.monotonic() - start
            result.server_max_size = self.announced_size
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _transaction(
        self, mime: bytes, mail_from: str, rcpt_to: list[str], reused: bool, before_end: _BeforeEndOfData
    ) -> SendResult:
        smtp = self._smtp
        assert smtp is not None
        options = self._mail_options(smtp, mime, mail_from, rcpt_to)
        # RFC 2920: when the server offers PIPELINING (Gmail, Outlook, Postfix do), MAIL FROM, every RCPT TO
        # and DATA go out in one write and their replies are read in order, each handled as below: one
        # round trip before the message data instead of two plus one per recipient.
        pipelined = smtp.has_extn("pipelining")
        step = "mail"
        try:
            # No RSET before MAIL: a completed transaction (final reply to DATA) leaves the
            # session clean (RFC 5321 4.1.1.4) and every failed one is followed by RSET in
            # _reset(); MAIL itself shows whether an idle connection is still alive. Saves a
            # round trip per message.
            if pipelined:
                self._send_pipeline(smtp, mail_from, rcpt_to, options)
                # The caller's bookkeeping runs while the server answers (its replies wait in the socket):
                # measured, a quarter more messages a second with one connection on SQLite and PostgreSQL.
                before_end()
                code, reply = smtp.getreply()
            else:
                code, reply = smtp.mail(mail_from, options)
            if code == 421 and reused:
                raise _Retry(SmtpFailure("mail", "temporary", code, _one_line(reply)))
            if not 200 <= code < 300:
                failure = SmtpFailure("mail", _kind_for_code(code), code, self._scrub(_one_line(reply)))
                if pipelined:
                    self._end_pipeline(smtp, len(rcpt_to) + 1)  # the RCPTs' and DATA's replies are still due
                else:
                    self._reset(smtp)
                raise failure
            step = "rcpt"
            accepted: list[str] = []
            refused: dict[str, tuple[int, str]] = {}
            for recipient in rcpt_to:
                code, reply = smtp.getreply() if pipelined else smtp.rcpt(recipient)
                if 200 <= code < 300:
                    accepted.append(recipient)
                    continue
                if code == 421:
                    # The server is closing the connection: nothing was sent yet.
                    failure = SmtpFailure("rcpt", "temporary", code, _one_line(reply))
                    if reused and not accepted:
                        raise _Retry(failure)
                    self._abort()
                    raise failure
                refused[recipient] = (code, _one_line(reply))
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            failure = self._classify(exc, step)
            # A dropped idle connection, not a silent server: waiting out a second timeout helps no one.
            if reused and failure.kind == "temporary":
                raise _Retry(failure) from None
            self._abort()
            raise failure from None
        except (smtplib.SMTPException, OSError) as exc:
            failure = self._classify(exc, step)
            self._abort()
            raise failure from None

        if not accepted:
            if pipelined:
                self._end_pipeline(smtp, 1)  # DATA's reply, which RFC 2920 says to check all the same
            else:
                self._reset(smtp)
            codes = [code for code, _ in refused.values()]
            first_rcpt, (first_code, first_text) = next(iter(refused.items()))
            kind = "permanent" if all(500 <= c < 600 for c in codes) else "temporary"
            text = f"all {len(refused)} recipients refused; {first_rcpt}: {first_text}"
            raise SmtpFailure("rcpt", kind, first_code, text, refused=refused)

        try:
            code, reply = self._data(smtp, mime, before_end, pipelined)
        except smtplib.SMTPDataError as exc:
            # The server refused the DATA command itself; the payload never went out.
            self._reset(smtp)
            raise SmtpFailure("data", _kind_for_code(exc.smtp_code), exc.smtp_code, _one_line(exc.smtp_error)) from None
        except (smtplib.SMTPException, OSError) as exc:
            # The payload may have reached the server: report, never retry here.
            failure = self._classify(exc, "data")
            failure.maybe_delivered = True
            if failure.kind not in ("temporary", "timeout"):
                failure.kind = "temporary"
            self._abort()
            raise failure from None
        if not 200 <= code < 300:
            raise SmtpFailure("data", _kind_for_code(code), code, _one_line(reply), refused=refused)
        return SendResult(accepted=accepted, refused=refused, code=code, text=_one_line(reply), seconds=0.0)

    @staticmethod
    def _send_pipeline(smtp: smtplib.SMTP, mail_from: str, rcpt_to: list[str], options: list[str]) -> None:
        """MAIL FROM, RCPT TO for each recipient and DATA in one write, each line as smtplib's ``mail()``,
        ``rcpt()`` and ``docmd("data")`` would send it."""
        if "SMTPUTF8" in options:
            smtp.command_encoding = "utf-8"  # what smtplib's mail() does (_mail_options checked the server has it)
        extra = "".join(f" {option}" for option in options)
        lines = [_command("mail", f"FROM:{quoted_address(mail_from)}{extra}")]
        lines += [_command("rcpt", f"TO:{quoted_address(recipient)}") for recipient in rcpt_to]
        lines.append("data\r\n")
        smtp.send("".join(lines))

    def _end_pipeline(self, smtp: smtplib.SMTP, replies: int) -> None:
        """Close a pipelined transaction that failed before its message data: read the ``replies`` still due
        (the last is DATA's), end a DATA the server accepted anyway with an empty message's dot (RFC 2920
        3.1; with no recipient it goes nowhere), then RSET; a connection that breaks meanwhile is dropped."""
        try:
            code = 0
            for _ in range(replies):
                code, _reply = smtp.getreply()
            if code == 354:
                smtp.send(b".\r\n")
                smtp.getreply()
        except (smtplib.SMTPException, OSError):
            self._abort()
            return
        self._reset(smtp)

    def _data(
        self, smtp: smtplib.SMTP, mime: bytes, before_end: _BeforeEndOfData, pipelined: bool = False
    ) -> tuple[int, bytes]:
        """DATA as ``smtplib.SMTP.data`` does it (``mime`` already has CRLF line ends), with ``before_end`` run
        (unless it ran already) between sending the message and sending its end of data. ``pipelined``: the
        DATA command went out with MAIL FROM and RCPT TO, only its reply is to be read."""
        code, reply = smtp.getreply() if pipelined else smtp.docmd("data")
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        payload = _dot_stuffed(mime)
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        smtp.send(payload)
        # Before the end of data, not after: until the server has the final dot it cannot deliver
        # this message, so a crash while the caller records the previous outcome sends neither twice.
        before_end()
        smtp.send(b".\r\n")
        return smtp.getreply()

    def _mail_options(self, smtp: smtplib.SMTP, mime: bytes, mail_from: str, rcpt_to: list[str]) -> list[str]:
        options: list[str] = []
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(mime)}")  # lets the server refuse an oversized message before DATA
        if _is_8bit(mime) and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not all(address.isascii() for address in [mail_from, *rcpt_to]):
            if not smtp.has_extn("smtputf8"):
                raise SmtpFailure(
                    "mail",
                    "permanent",
                    None,
                    f"{self.address} does not support SMTPUTF8, needed for a non-ASCII address",
                )
            options.append("SMTPUTF8")
        return options

    def _reset(self, smtp: smtplib.SMTP) -> None:
        """RSET after a failed transaction so the connection can carry the next message."""
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._abort()

    # --------------------------------------------------------------- closing

    def _abort(self) -> None:
        """Drop the connection without a QUIT (it is already broken or unusable)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def close(self) -> None:
        """Say QUIT and close the connection; never raises."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(min(self.sender.timeout, _QUIT_TIMEOUT))
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                smtp.close()

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
