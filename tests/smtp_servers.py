"""Real SMTP servers for tests: an instrumented aiosmtpd server and a server that never answers.

:class:`LocalSmtpServer` runs aiosmtpd on 127.0.0.1 in one of three modes:

* ``starttls`` — STARTTLS offered and required before anything else, AUTH
  PLAIN/LOGIN only inside TLS, AUTH required before MAIL (like port 587);
* ``ssl`` — implicit TLS from the first byte (like port 465);
* ``plain`` — no TLS at all; AUTH is still advertised over plaintext so a
  test can prove the client refuses to send its password there.

It records what a test needs to assert on: ``messages`` (accepted messages),
``auth_attempts`` (mechanism, username, succeeded — never the password),
``commands`` (every verb the client sent, seen on the wire before aiosmtpd
applies any policy, so "AUTH was never received" really means that),
``command_writes`` (the verbs of each chunk the server read at once, to see
pipelining), ``connections`` (TCP sessions) and ``logins`` (successful AUTHs).

``pipelining`` (default on, as Gmail, Outlook and Postfix do) advertises
PIPELINING (RFC 2920) at EHLO; aiosmtpd reads commands from a stream and
answers them in order either way, it only does not announce it by itself.

Faults are programmed with hooks that return an SMTP reply to send instead
of accepting (or ``None`` to accept): ``mail_hook(address)``,
``rcpt_hook(address)``, ``data_command_hook(envelope)`` (the DATA command itself, once
a recipient was accepted, before 354), ``data_hook(envelope)`` (after the end
of data). :meth:`drop_connections`
closes every open connection, as a server does with an idle client.

Handlers run on the aiosmtpd event-loop thread, so every record is appended
under a lock; read them after the client call returned (the server records
before it replies).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, NamedTuple

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailops.devserver import BoundController

DEFAULT_USER = "sales@example.com"
DEFAULT_PASSWORD = "s3cret-pass"
MODES = ("starttls", "ssl", "plain")
INVALID_CREDENTIALS = "535 5.7.8 Authentication credentials invalid"

Hook = Callable[[str], "str | None"]


class _QuietDeprecation(logging.Filter):
    """aiosmtpd logs a deprecation warning on every successful AUTH; it is its own, not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietDeprecation())


class AuthAttempt(NamedTuple):
    """One AUTH exchange as the server saw it; compares equal to a plain tuple."""

    mechanism: str
    username: str
    succeeded: bool


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes = field(repr=False)  # exactly the bytes after DATA
    message: EmailMessage = field(repr=False)  # parsed with policy.default
    username: str | None  # who was logged in, None without AUTH
    mail_options: list[str] = field(default_factory=list)

    @property
    def subject(self) -> str | None:
        """The Subject header, decoded."""
        value = self.message["subject"]
        return None if value is None else str(value)


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP protocol that also logs verbs and connections for the owning server."""

    def __init__(self, owner: LocalSmtpServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._owner = owner
        self._line_buffer = bytearray()
        self.raw_transport: asyncio.Transport
        # What the next client line is: a command, a DATA payload line, or an AUTH continuation
        # (which carries credentials and must not be logged).
        self._expect = "command"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        fresh = self._original_transport is None  # not the TLS upgrade of an existing connection
        super().connection_made(transport)
        if fresh:
            assert isinstance(transport, asyncio.Transport)
            self.raw_transport = transport  # the TCP (or implicit TLS) transport, closing it ends everything
            self._owner._connection_opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._owner._connection_closed(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._line_buffer += data
        verbs: list[str] = []
        while True:
            end = self._line_buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._line_buffer[: end + 1])
            del self._line_buffer[: end + 1]
            verb = self._observe(line)
            if verb:
                verbs.append(verb)
        if verbs:
            self._owner._record_write(verbs)
        super().data_received(data)

    def _observe(self, line: bytes) -> str | None:
        if self._expect == "data":
            if line.rstrip(b"\r\n") == b".":
                self._expect = "command"
            return None
        if self._expect == "auth":
            self._expect = "command"
            return None
        verb = line.strip().split(b" ", 1)[0][:16].decode("ascii", errors="replace").upper()
        if verb:
            self._owner._record_command(verb)
        return verb or None

    async def smtp_DATA(self, arg: str) -> None:
        hook = self._owner.data_command_hook
        if hook is not None and self.envelope is not None and self.envelope.rcpt_tos:
            reply = hook(self.envelope)
            if reply:
                await self.push(reply)
                return
        await super().smtp_DATA(arg)

    async def push(self, status: Any) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else str(status)
        # Set before the reply leaves: the client answers only after reading it.
        if text.startswith("354"):
            self._expect = "data"
        elif text.startswith("334"):
            self._expect = "auth"
        elif text.startswith("220 Ready to start TLS"):
            self._line_buffer.clear()  # what follows is the TLS handshake, decrypted lines come later
        await super().push(status)


class _RecordingController(BoundController):
    """Builds _RecordingSMTP protocols; the handler is the LocalSmtpServer itself."""

    def factory(self) -> SMTP:
        return _RecordingSMTP(self.handler, self.handler, **self.SMTP_kwargs)


class LocalSmtpServer:
    """An aiosmtpd server on 127.0.0.1 with recording and fault hooks (see the module docstring)."""

    def __init__(
        self,
        *,
        mode: str = "starttls",
        auth: bool = True,
        users: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        ca_file: Path | None = None,
        require_auth: bool | None = None,
        exclude_mechanisms: tuple[str, ...] = (),
        hostname: str = "mail.test.example",
        data_size_limit: int | None = None,
        pipelining: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode != "plain" and tls_context is None:
            raise ValueError(f"mode {mode!r} needs a server tls_context")
        self.mode = mode
        self.auth = auth
        self.pipelining = pipelining
        self._users = dict(users) if users is not None else {DEFAULT_USER: DEFAULT_PASSWORD}
        self.ca_file = ca_file
        self.host = "127.0.0.1"
        self.port = 0
        self.mail_hook: Hook | None = None
        self.rcpt_hook: Hook | None = None
        self.data_hook: Callable[[Envelope], str | None] | None = None
        self.data_command_hook: Callable[[Envelope], str | None] | None = None
        self.messages: list[ReceivedMessage] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.commands: list[str] = []
        self.command_writes: list[list[str]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._live: set[_RecordingSMTP] = set()
        # Enforced in handle_MAIL rather than by aiosmtpd, which warns about AUTH without STARTTLS
        # even for implicit TLS.
        self.require_auth = (auth and mode != "plain") if require_auth is None else require_auth
        smtp_kwargs: dict[str, Any] = {
            "decode_data": False,
            "auth_require_tls": mode == "starttls",  # ssl mode is TLS already; plain mode must advertise AUTH
            "authenticator": self._authenticate,
            "auth_exclude_mechanism": list(exclude_mechanisms),  # e.g. ("PLAIN",) to offer only LOGIN
            "server_hostname": hostname,
            "timeout": 30,  # server-side idle limit; tests close connections themselves
        }
        if data_size_limit is not None:  # announced as SIZE at EHLO, larger DATA refused with 552
            smtp_kwargs["data_size_limit"] = data_size_limit
        if mode == "starttls":
            smtp_kwargs.update(tls_context=tls_context, require_starttls=True)
        self._controller = _RecordingController(
            self,
            self.host,
            0,
            ssl_context=tls_context if mode == "ssl" else None,
            **smtp_kwargs,
        )
        self.port = self._controller.port
        self._running = False

    def __repr__(self) -> str:
        # Deliberately without users/passwords.
        return f"LocalSmtpServer(mode={self.mode!r}, {self.host}:{self.port}, messages={len(self.messages)})"

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def logins(self) -> int:
        """Successful AUTH exchanges."""
        with self._lock:
            return sum(1 for attempt in self.auth_attempts if attempt.succeeded)

    # ------------------------------------------------------------- lifecycle

    def start(self) -> LocalSmtpServer:
        """Serve in a background thread."""
        try:
            self._controller.start()
        except BaseException:
            self._controller.close_listener()
            raise
        self._running = True
        # Controller.start() opened one connection to wake the server up; it is not the test's.
        with self._lock:
            self.connections = 0
            self.commands.clear()
            self.command_writes.clear()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._running:
            # aiosmtpd's stop() cancels tasks but leaves client transports open (ResourceWarnings).
            self.drop_connections(timeout=2.0)
            self._running = False
            self._controller.stop()
        else:
            self._controller.close_listener()

    def __enter__(self) -> LocalSmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def drop_connections(self, timeout: float = 5.0) -> int:
        """Close every open client connection from the server side; returns how many were closed."""
        done = threading.Event()
        closed: list[int] = []
        loop = self._controller.loop

        def close_all() -> None:
            for protocol in list(self._live):
                transport = protocol.raw_transport
                if not transport.is_closing():
                    # abort(), not close(): a TLS close would wait for the idle client's close_notify.
                    transport.abort()
                    closed.append(1)
            # abort() schedules the socket's release; two loop turns later it has happened.
            loop.call_soon(loop.call_soon, done.set)

        loop.call_soon_threadsafe(close_all)
        if not done.wait(timeout):
            raise TimeoutError("the server loop did not close its connections in time")
        return len(closed)

    # ------------------------------------------------------- recording hooks

    def _connection_opened(self, protocol: _RecordingSMTP) -> None:
        with self._lock:
            self.connections += 1
            self._live.add(protocol)

    def _connection_closed(self, protocol: _RecordingSMTP) -> None:
        with self._lock:
            self._live.discard(protocol)

    def _record_command(self, verb: str) -> None:
        with self._lock:
            self.commands.append(verb)

    def _record_write(self, verbs: list[str]) -> None:
        with self._lock:
            self.command_writes.append(verbs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        username = auth_data.login.decode("utf-8", errors="replace")
        password = auth_data.password.decode("utf-8", errors="replace")
        ok = self._users.get(username) == password
        with self._lock:
            self.auth_attempts.append(AuthAttempt(mechanism, username, ok))
        if ok:
            return AuthResult(success=True, auth_data=username)
        return AuthResult(success=False, handled=False, message=INVALID_CREDENTIALS)

    # ------------------------------------------------------ aiosmtpd handler

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves it to a handle_EHLO hook; MAIL needs it
        if self.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]  # the last line ends the reply
        if self.auth:
            return responses
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        reply = self.mail_hook(address) if self.mail_hook else None
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_hook(address) if self.rcpt_hook else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.data_hook(envelope) if self.data_hook else None
        if reply:
            return reply
        raw = envelope.original_content or b""
        parsed = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=raw,
            message=parsed,
            username=session.auth_data if session.authenticated else None,
            mail_options=list(envelope.mail_options),
        )
        with self._lock:
            self.messages.append(received)
        return "250 2.0.0 OK queued"


class StallingServer:
    """A TCP listener on 127.0.0.1 that completes connections and never says a word.

    The kernel accepts connections into the backlog, so no thread is needed;
    a client waiting for the greeting is bounded only by its own timeout.
    """

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.host = "127.0.0.1"
        self.port: int = self._socket.getsockname()[1]

    def __repr__(self) -> str:
        return f"StallingServer({self.host}:{self.port})"

    def close(self) -> None:
        """Stop listening."""
        self._socket.close()


def closed_port() -> int:
    """A port on 127.0.0.1 on which nothing listens (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fail_first(times: int, reply: str) -> Callable[[Any], str | None]:
    """A hook that answers ``reply`` to the first ``times`` calls and then accepts."""
    calls = {"n": 0}
    lock = threading.Lock()

    def hook(_: Any) -> str | None:
        with lock:
            calls["n"] += 1
            return reply if calls["n"] <= times else None

    return hook


def refusing(*addresses: str, reply: str = "550 5.1.1 no such user") -> Callable[[str], str | None]:
    """An ``rcpt_hook`` that refuses the chosen recipients at RCPT with ``reply`` and accepts the rest."""
    chosen = {a.lower() for a in addresses}

    def hook(address: str) -> str | None:
        return reply if address.lower() in chosen else None

    return hook
