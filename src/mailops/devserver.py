"""The local capture server behind ``mailops dev-server`` and the demo.

It accepts every message without TLS or AUTH and keeps it (in a Maildir
when one is given), so templates, routing and the outbox can be tried
without a real mailbox. It binds 127.0.0.1 by default: binding another
address would let anyone who can reach it drop mail into the Maildir, so
do that only on a trusted network.
"""

from __future__ import annotations

import errno
import logging
import mailbox
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from .errors import UsageError

log = logging.getLogger(__name__)

#: How often serve_forever looks at should_stop; also bounds how long Ctrl-C waits.
_POLL_SECONDS = 0.2


class BoundController(Controller):
    """An aiosmtpd Controller serving on a socket bound before the thread starts.

    Binding up front makes "address in use" an immediate, catchable OSError
    (aiosmtpd would otherwise wait its whole ready timeout) and lets port 0
    pick a free port whose number is known (:attr:`port`).
    """

    def __init__(
        self,
        handler: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ready_timeout: float = 10.0,
        **smtp_kwargs: Any,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # socket.create_server sets SO_REUSEADDR on POSIX, as asyncio would.
        self._listener = socket.create_server((host, port), family=family)
        bound_port = self._listener.getsockname()[1]
        try:
            super().__init__(
                handler,
                hostname=host,
                port=bound_port,
                ssl_context=ssl_context,
                ready_timeout=ready_timeout,
                **smtp_kwargs,
            )
        except BaseException:
            self._listener.close()
            raise

    def _create_server(self) -> Awaitable[Any]:
        return self.loop.create_server(self._factory_invoker, sock=self._listener, ssl=self.ssl_context)

    def close_listener(self) -> None:
        """Release the socket if the controller was never started."""
        self._listener.close()


@dataclass
class CapturedMessage:
    """One message the capture server received."""

    mail_from: str
    rcpt_tos: list[str]
    subject: str | None
    message_id: str | None
    size: int  # bytes of the message as received
    maildir_key: str | None  # key in the Maildir, when one is used


class _CaptureHandler:
    """aiosmtpd handler: store the message, then tell the callback."""

    def __init__(self, maildir: mailbox.Maildir | None, on_message: Callable[[CapturedMessage], None] | None) -> None:
        self.maildir = maildir
        self.on_message = on_message
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        headers = BytesHeaderParser(policy=policy.default).parsebytes(raw)
        key = None
        if self.maildir is not None:
            # Bcc recipients exist only in the envelope: keep it visible in the stored file.
            envelope_lines = f"Return-Path: <{envelope.mail_from}>\r\nX-Original-To: {', '.join(envelope.rcpt_tos)}\r\n"
            key = self.maildir.add(envelope_lines.encode("utf-8") + raw)
        captured = CapturedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            subject=str(headers["subject"]) if headers["subject"] is not None else None,
            message_id=str(headers["message-id"]).strip() if headers["message-id"] is not None else None,
            size=len(raw),
            maildir_key=key,
        )
        self.count += 1
        if self.on_message is not None:
            try:
                self.on_message(captured)
            except Exception:  # a display problem must not lose the message, which is already stored
                log.exception("on_message callback failed for %s", captured.message_id)
        return "250 2.0.0 Message captured"


class CaptureServer:
    """A local SMTP server that accepts and keeps every message; use as a context manager.

    Binds ``127.0.0.1`` unless told otherwise; another address exposes it to
    the network. Port 0 picks a free port (see :attr:`address`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8025,
        maildir: Path | None = None,
        on_message: Callable[[CapturedMessage], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.maildir_path = Path(maildir) if maildir is not None else None
        self.on_message = on_message
        self._controller: BoundController | None = None
        self._handler: _CaptureHandler | None = None

    def __repr__(self) -> str:
        return f"CaptureServer({self.address!r}, running={self.running})"

    @property
    def address(self) -> str:
        """``host:port`` the server listens on (the real port once started with port 0)."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._controller is not None

    @property
    def count(self) -> int:
        """Messages captured since start."""
        return self._handler.count if self._handler is not None else 0

    def start(self) -> None:
        """Bind and serve in a background thread; UsageError if the address cannot be used."""
        if self._controller is not None:
            return
        box = None
        if self.maildir_path is not None:
            try:
                box = mailbox.Maildir(self.maildir_path, create=True)
            except OSError as exc:
                raise UsageError(
                    f"{self.maildir_path}: cannot create the Maildir ({exc.strerror or exc}); pick another --maildir"
                ) from None
        handler = _CaptureHandler(box, self.on_message)
        try:
            # A fixed greeting name: aiosmtpd would otherwise resolve the FQDN on every connection.
            controller = BoundController(handler, self.host, self.port, server_hostname="localhost")
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"{self.address} is already in use: pick another --port") from None
            raise UsageError(
                f"cannot listen on {self.address}: {exc.strerror or exc}; pick another --host or --port"
            ) from None
        try:
            controller.start()
        except BaseException:
            controller.close_listener()
            raise
        self.port = controller.port
        self._controller = controller
        self._handler = handler

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> CaptureServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(server: CaptureServer, should_stop: Callable[[], bool] | None = None) -> None:
    """Start ``server`` if needed and block until Ctrl-C (or ``should_stop()`` is true), then stop it."""
    server.start()
    try:
        while not (should_stop is not None and should_stop()):
            time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
