"""A loopback SMTP sink for the benchmark: STARTTLS + AUTH (any password), optional per-message delay.

It advertises PIPELINING (RFC 2920) at EHLO, as Gmail, Outlook and Postfix do
(``--no-pipelining`` leaves it out). aiosmtpd answers pipelined commands in
order either way; it only does not announce them by itself. The other clients
the benchmark runs (smtplib loops, aiosmtplib 5) never pipeline, offered or not.

Run as its own process so the server does not share a GIL with the client being measured:

    python bench/sink.py --port 0 --delay-ms 20 --ready-file /tmp/sink.json

It writes its CA certificate next to the ready file, ``{"port": ..., "ca_file": ...}``
to the ready file once listening, and the message count to ``--count-file`` on
exit (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import threading
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Sink:
    """Accept every message after an optional delay."""

    def __init__(self, delay: float, pipelining: bool) -> None:
        self.delay = delay
        self.pipelining = pipelining
        self.count = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves it to this hook once there is one; MAIL needs it
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]  # the last line ends the reply
        return responses

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.count += 1
        return "250 2.0.0 OK"


def _accept_any(server, session, envelope, mechanism, auth_data) -> AuthResult:
    return AuthResult(success=True)


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--count-file", type=Path)
    parser.add_argument("--no-pipelining", action="store_true", help="do not advertise PIPELINING")
    args = parser.parse_args()

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    # next to the ready file: the caller owns that folder and removes it when done
    ca_file = args.ready_file.parent / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)

    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's own deprecation chatter
    sink = Sink(args.delay_ms / 1000, not args.no_pipelining)
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=args.port,
        tls_context=context,
        require_starttls=True,
        authenticator=_accept_any,
        auth_require_tls=True,
        decode_data=False,
        data_size_limit=None,
    )
    controller.start()
    args.ready_file.write_text(json.dumps({"port": controller.port, "ca_file": str(ca_file)}))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    controller.stop()
    if args.count_file:
        args.count_file.write_text(str(sink.count))


if __name__ == "__main__":
    main()
