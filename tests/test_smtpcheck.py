"""check_sender and hint_for against real servers: what test-smtp reports and the fixes it suggests."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from mailops.smtpcheck import CheckResult, check_sender, hint_for
from mailops.transport import SmtpFailure
from tests.fixtures_smtp import DEFAULT_PASSWORD, make_sender

CA_HINT = (
    "the server's certificate is not trusted: set ca_file to the CA that signed it (tls_verify: false only for testing)"
)
WRONG_PASSWORD_HINT = (
    "wrong username or password for sales: check 'username' in senders.yaml and run 'mailops password set sales'"
)


def step_names(result: CheckResult) -> list[str]:
    return [name for name, _, _ in result.steps]


def test_starttls_with_ca_file_passes(smtp_server):
    server = smtp_server()
    result = check_sender(make_sender(server), DEFAULT_PASSWORD)
    assert result.ok, result
    assert (result.sender, result.host, result.port, result.security) == ("sales", "127.0.0.1", server.port, "starttls")
    assert step_names(result) == ["connect", "ehlo", "starttls", "ehlo", "auth", "quit"]
    assert all(ok for _, _, ok in result.steps)
    assert result.tls_version in ("TLSv1.2", "TLSv1.3")
    assert result.cipher
    assert (result.auth_mechanism, result.auth_result) == ("PLAIN", "235 accepted")
    assert (result.error, result.code, result.hint, result.warnings) == (None, None, None, [])
    assert server.messages == []


def test_without_ca_file_certificate_verification_fails(smtp_server):
    server = smtp_server()
    result = check_sender(make_sender(server, ca_file=None), DEFAULT_PASSWORD)
    assert not result.ok
    assert result.error == "certificate verification failed: unable to get local issuer certificate"
    assert result.hint == CA_HINT
    assert result.steps[-1][0] == "starttls" and result.steps[-1][2] is False
    assert result.auth_result is None
    assert "AUTH" not in server.commands


def test_wrong_password_shows_the_server_reply_and_a_hint(smtp_server):
    server = smtp_server()
    result = check_sender(make_sender(server), "wrong")
    assert not result.ok
    assert (result.code, result.error) == (535, "5.7.8 Authentication credentials invalid")
    assert result.auth_result == "535 refused"
    assert result.hint == WRONG_PASSWORD_HINT
    assert step_names(result) == ["connect", "ehlo", "starttls", "ehlo", "auth"]
    assert result.steps[-1][2] is False
    assert server.commands[-2:] == ["AUTH", "QUIT"]  # the connection is closed politely


def test_server_without_starttls_never_receives_auth(smtp_server):
    server = smtp_server(mode="plain")
    result = check_sender(make_sender(server, security="starttls"), DEFAULT_PASSWORD)
    assert not result.ok
    assert result.error == f"127.0.0.1:{server.port} does not offer STARTTLS"
    assert result.hint == (
        "the server does not offer STARTTLS on this port: use security: ssl with port 465, or check host/port"
    )
    assert "AUTH" not in server.commands
    assert server.auth_attempts == []


def test_closed_port_fails_fast(closed_port):
    start = time.monotonic()
    result = check_sender(make_sender(port=closed_port), DEFAULT_PASSWORD)
    assert time.monotonic() - start < 5
    assert not result.ok
    assert result.error == f"connection refused by 127.0.0.1:{closed_port}"
    assert result.hint == f"nothing listens on 127.0.0.1:{closed_port}: check host, port and firewall"
    assert step_names(result) == ["connect"]


def test_stalling_server_fails_after_the_timeout(stalling_server):
    start = time.monotonic()
    result = check_sender(make_sender(stalling_server, timeout=1), DEFAULT_PASSWORD)
    assert time.monotonic() - start < 4
    assert not result.ok
    assert result.error == f"no answer from 127.0.0.1:{stalling_server.port} within 1 s"
    assert result.hint == "no answer within 1 s: check host/port/firewall or raise timeout"


def test_implicit_tls_with_a_real_test_message(smtp_server):
    server = smtp_server(mode="ssl")
    now = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    sender = make_sender(server, display_name="Sales Team", reply_to="help@example.com")
    result = check_sender(sender, DEFAULT_PASSWORD, send_to="ops@example.org", now=now)
    assert result.ok, result
    assert step_names(result) == ["connect", "ehlo", "auth", "send", "quit"]
    assert result.tls_version in ("TLSv1.2", "TLSv1.3")
    [received] = server.messages
    assert received.mail_from == "sales@example.com"
    assert received.rcpt_tos == ["ops@example.org"]
    message = received.message
    assert message["Subject"] == "mailops test message from sales"
    assert message["From"] == "Sales Team <sales@example.com>"
    assert message["To"] == "ops@example.org"
    assert message["Reply-To"] == "help@example.com"
    assert message["Date"] == "Sat, 01 Mar 2025 09:30:00 +0000"
    assert message["Message-ID"] == result.message_id
    assert result.message_id.endswith("@example.com>")
    assert "mailops test-smtp sales" in message.get_content()


def test_refused_test_recipient(smtp_server):
    server = smtp_server()
    server.rcpt_hook = lambda address: "550 5.1.1 no such user"
    result = check_sender(make_sender(server), DEFAULT_PASSWORD, send_to="nobody@example.org")
    assert not result.ok
    assert result.auth_result == "235 accepted"
    assert (result.code, result.steps[-2][0], result.steps[-2][2]) == (550, "send", False)
    assert result.hint == "the server refused the test recipient: check the --send-to address"


def test_plaintext_auth_refused_without_allow_plaintext_auth(smtp_server):
    server = smtp_server(mode="plain")
    result = check_sender(make_sender(server), DEFAULT_PASSWORD)
    assert not result.ok
    assert result.error == (
        f"refusing to send the password of sales over an unencrypted connection to 127.0.0.1:{server.port}"
    )
    assert result.hint == (
        "sales would send its password unencrypted: use security: starttls or ssl, or, only for a trusted "
        "local relay, set allow_plaintext_auth: true with security: none"
    )
    assert "AUTH" not in server.commands


def test_plaintext_auth_allowed_logs_in_with_a_warning(smtp_server):
    server = smtp_server(mode="plain")
    result = check_sender(make_sender(server, allow_plaintext_auth=True), DEFAULT_PASSWORD)
    assert result.ok, result
    assert result.auth_result == "235 accepted"
    assert result.tls_version is None
    assert result.warnings == ["the password is sent unencrypted (security: none with allow_plaintext_auth: true)"]
    assert server.logins == 1


def test_relay_without_auth(smtp_server):
    server = smtp_server(mode="plain", auth=False)
    result = check_sender(make_sender(server, auth=False), None, send_to="ops@example.org")
    assert result.ok, result
    assert result.auth_result == "skipped (auth: false)"
    assert result.warnings == ["the connection is not encrypted (security: none)"]
    assert len(server.messages) == 1


def test_tls_verify_false_passes_with_a_warning(smtp_server):
    server = smtp_server()
    result = check_sender(make_sender(server, ca_file=None, tls_verify=False), DEFAULT_PASSWORD)
    assert result.ok, result
    assert result.warnings == ["certificate verification disabled by tls_verify: false"]


def test_hostname_mismatch_hint(smtp_server):
    server = smtp_server(cert_hosts=["mail.example.net"])
    result = check_sender(make_sender(server), DEFAULT_PASSWORD)
    assert not result.ok
    assert result.hint == (
        "the server's certificate is not valid for '127.0.0.1': set host to the name on the certificate "
        "(usually the provider's documented SMTP host)"
    )


def test_to_dict_is_json_and_has_no_password(smtp_server):
    server = smtp_server()
    secret = "wrong-but-secret"
    result = check_sender(make_sender(server), secret)
    data = result.to_dict()
    text = json.dumps(data)
    assert secret not in text and secret not in repr(result)
    assert data["steps"][0]["step"] == "connect"
    assert set(data) >= {"sender", "host", "port", "ok", "tls_version", "auth_result", "error", "code", "hint"}


# ------------------------------------------------------------------ hints


def gmail(**overrides):
    return make_sender(host="smtp.gmail.com", port=587, **overrides)


@pytest.mark.parametrize(
    ("sender", "failure", "hint"),
    [
        (
            gmail(),
            SmtpFailure("auth", "auth", 535, "5.7.8 Username and Password not accepted"),
            "Gmail refuses the normal account password: create an app password "
            "(https://myaccount.google.com/apppasswords) and store it with 'mailops password set sales'",
        ),
        (
            make_sender(host="smtp.googlemail.com", port=465, security="ssl"),
            SmtpFailure("auth", "auth", 534, "5.7.9 Application-specific password required"),
            "Gmail refuses the normal account password: create an app password "
            "(https://myaccount.google.com/apppasswords) and store it with 'mailops password set sales'",
        ),
        (
            make_sender(host="smtp.office365.com", port=587),
            SmtpFailure(
                "auth", "auth", 535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"
            ),
            "Microsoft refuses the login for sales: use an app password, or ask the admin to enable SMTP AUTH "
            "for the mailbox (off by default in Microsoft 365), then run 'mailops password set sales'",
        ),
        (
            make_sender(host="mail.example.com"),
            SmtpFailure("auth", "auth", 535, "5.7.8 bad"),
            WRONG_PASSWORD_HINT,
        ),
        (  # a provider preset's own hint, whatever the host
            make_sender(host="127.0.0.1", provider="gmail"),
            SmtpFailure("auth", "auth", 535, "5.7.8 Username and Password not accepted"),
            "Gmail refuses the account password over SMTP: create an app password "
            "(https://myaccount.google.com/apppasswords, needs 2-Step Verification) and store it with "
            "'mailops password set sales', or log in with OAuth2 (an 'oauth2:' mapping)",
        ),
        (
            make_sender(host="smtp.gmail.com", provider="sendgrid"),
            SmtpFailure("auth", "auth", 535, "5.7.8 bad"),
            "SendGrid refuses the login: the username is the word 'apikey' and the password an API key with "
            "Mail Send permission, stored with 'mailops password set sales'",
        ),
        (
            make_sender(host="mail.example.com"),
            SmtpFailure("auth", "auth", None, "no password available for sales"),
            "no password is stored for sales: run 'mailops password set sales'",
        ),
        (
            make_sender(host="mail.example.com", port=465, security="starttls", timeout=30),
            SmtpFailure("connect", "timeout", None, "no answer from mail.example.com:465 within 30 s"),
            "port 465 expects TLS from the first byte: use security: ssl with port 465, "
            "or security: starttls with port 587",
        ),
        (
            make_sender(host="mail.example.com", port=587, security="ssl"),
            SmtpFailure("tls", "tls", None, "TLS handshake with mail.example.com:587 failed: WRONG_VERSION_NUMBER"),
            "port 587 starts in plain text and upgrades with STARTTLS: use security: starttls with port 587, "
            "or security: ssl with port 465",
        ),
        (
            make_sender(host="mail.example.com"),
            SmtpFailure("tls", "tls", None, "cannot load ca_file /x/ca.pem: no certificate or crl found"),
            "ca_file of sales is not a usable CA certificate: point it at the CA's certificate in PEM format",
        ),
        (
            make_sender(host="mail.example.com", port=2525),
            SmtpFailure(
                "connect", "connect", None, "cannot resolve host 'mail.example.com': Name or service not known"
            ),
            "the host name 'mail.example.com' does not resolve: check host in senders.yaml and DNS",
        ),
        (
            make_sender(host="relay.local", port=25, security="none"),
            SmtpFailure("auth", "no-auth-offered", None, "relay.local:25 does not offer AUTH on this connection"),
            "relay.local:25 offers no usable AUTH here: set auth: false if it is a relay that needs no login, "
            "otherwise check security and port",
        ),
        (
            make_sender(host="relay.local", port=25, security="none", auth=False),
            SmtpFailure("mail", "permanent", 530, "5.7.0 Authentication required"),
            "the server requires a login: set auth: true for sales and run 'mailops password set sales'",
        ),
        (
            make_sender(host="mail.example.com"),
            SmtpFailure("mail", "permanent", 553, "5.7.1 sender not owned"),
            "the server refuses sales@example.com as sender: check that sales@example.com may send as that address",
        ),
        (
            make_sender(host="mail.example.com"),
            SmtpFailure("data", "temporary", 451, "4.3.0 later"),
            None,
        ),
    ],
)
def test_hint_for(sender, failure, hint):
    assert hint_for(sender, failure) == hint
