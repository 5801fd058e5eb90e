"""Real aiosmtpd servers on 127.0.0.1 (STARTTLS/AUTH with a trustme CA), for every test that sends mail.

Fixtures
--------
``tls_ca``          session trustme CA (``trustme.CA``).
``server_cert``     session certificate for ``127.0.0.1`` and ``localhost`` signed by ``tls_ca``.
``ca_file``         path of the CA's PEM file; what a Sender's ``ca_file`` points at.
``smtp_server``     factory ``smtp_server(**options) -> LocalSmtpServer``, started, stopped at teardown::

                        server = smtp_server()                      # STARTTLS + AUTH, user sales@example.com
                        server = smtp_server(mode="ssl")            # implicit TLS
                        server = smtp_server(mode="plain")          # no TLS, AUTH advertised in clear
                        server = smtp_server(auth=False)            # no AUTH offered or required
                        server = smtp_server(users={"a@x.org": "pw"})
                        server = smtp_server(cert_hosts=["mail.example.net"])  # cert not valid for 127.0.0.1
                        server = smtp_server(exclude_mechanisms=("PLAIN",))    # offer AUTH LOGIN only
                        server = smtp_server(require_auth=False)    # AUTH offered but MAIL allowed without it
                        server = smtp_server(pipelining=False)      # no PIPELINING at EHLO (default: offered)

                    Then assert on ``server.messages``, ``server.auth_attempts``,
                    ``server.commands``, ``server.command_writes``, ``server.connections``,
                    ``server.logins`` and program faults with ``server.rcpt_hook``,
                    ``server.mail_hook``, ``server.data_command_hook``, ``server.data_hook``
                    (see tests/smtp_servers.py, also ``fail_first`` and
                    ``refusing(*addresses)``, a rcpt_hook refusing chosen recipients).
``stalling_server`` a listener that accepts TCP connections and never greets.
``closed_port``     a 127.0.0.1 port with nothing listening.
``sender_for``      ``make_sender`` below, as a fixture.

Helpers (import from ``tests.fixtures_smtp``)
---------------------------------------------
``make_sender(server, **overrides) -> Sender`` builds a Sender aimed at a test
server, with security, ca_file and a short timeout matching the server.
``DEFAULT_USER`` / ``DEFAULT_PASSWORD`` are the credentials servers accept by default.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailops.config import Sender
from tests.smtp_servers import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    INVALID_CREDENTIALS,
    AuthAttempt,
    LocalSmtpServer,
    ReceivedMessage,
    StallingServer,
    fail_first,
)
from tests.smtp_servers import closed_port as _closed_port

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "INVALID_CREDENTIALS",
    "AuthAttempt",
    "LocalSmtpServer",
    "ReceivedMessage",
    "StallingServer",
    "fail_first",
    "make_sender",
]

#: Sender timeout for tests: long enough for a loaded CI machine, short enough to bound a hang.
TEST_TIMEOUT = 5.0
_SECURITY_FOR_MODE = {"starttls": "starttls", "ssl": "ssl", "plain": "none"}


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A private certificate authority for the whole test session."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(tls_ca: trustme.CA) -> trustme.LeafCert:
    """Server certificate valid for 127.0.0.1 and localhost."""
    return tls_ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the CA certificate (PEM) that signed the test servers' certificates."""
    path = tmp_path_factory.mktemp("tls") / "test-ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
def smtp_server(
    tls_ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: Path
) -> Iterator[Callable[..., LocalSmtpServer]]:
    """Factory: ``smtp_server(mode=..., auth=..., users=..., cert_hosts=..., require_auth=...)``; all stopped at teardown."""
    started: list[LocalSmtpServer] = []

    def start(*, cert_hosts: list[str] | None = None, **options: Any) -> LocalSmtpServer:
        cert = tls_ca.issue_cert(*cert_hosts) if cert_hosts else server_cert
        server = LocalSmtpServer(tls_context=_server_context(cert), ca_file=ca_file, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def stalling_server() -> Iterator[StallingServer]:
    """A 127.0.0.1 listener that accepts connections and never sends a greeting."""
    server = StallingServer()
    yield server
    server.close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    return _closed_port()


def make_sender(
    server: LocalSmtpServer | StallingServer | None = None,
    *,
    key: str = "sales",
    email: str = DEFAULT_USER,
    **overrides: Any,
) -> Sender:
    """A Sender aimed at ``server``: security follows its mode, ca_file its CA, timeout is short.

    Any Sender field can be overridden, e.g. ``make_sender(server, ca_file=None)``
    or ``make_sender(port=closed_port, security="starttls")`` without a server.
    """
    fields: dict[str, Any] = {
        "key": key,
        "email": email,
        "host": "127.0.0.1",
        "port": 25,
        "security": "starttls",
        "username": email,
        "timeout": TEST_TIMEOUT,
    }
    if server is not None:
        fields["port"] = server.port
    if isinstance(server, LocalSmtpServer):
        fields["security"] = _SECURITY_FOR_MODE[server.mode]
        fields["ca_file"] = server.ca_file
        fields["auth"] = server.auth
    fields.update(overrides)
    return Sender(**fields)


@pytest.fixture
def sender_for() -> Callable[..., Sender]:
    """The ``make_sender`` helper as a fixture."""
    return make_sender
