"""SmtpSession against real aiosmtpd servers on 127.0.0.1: TLS, AUTH, reuse, faults and classification."""

from __future__ import annotations

import smtplib
import socket
import threading
import time
import traceback
from email.message import EmailMessage

import pytest

from mailops.transport import SendResult, SmtpFailure, SmtpSession
from tests.fixtures_smtp import DEFAULT_PASSWORD, AuthAttempt, fail_first, make_sender

RCPT = "customer@example.org"


def mime(subject: str = "Hello", body: str = "Hi there.\n") -> bytes:
    message = EmailMessage()
    message["From"] = "sales@example.com"
    message["To"] = RCPT
    message["Subject"] = subject
    message.set_content(body)
    return message.as_bytes()


def failure_of(session: SmtpSession, *args: object) -> SmtpFailure:
    with pytest.raises(SmtpFailure) as info:
        if args:
            session.send(*args)  # type: ignore[arg-type]
        else:
            session.open()
    return info.value


# ------------------------------------------------------------------ opening


def test_starttls_with_private_ca_logs_in(smtp_server):
    server = smtp_server()
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.open()
        assert session.tls_version in ("TLSv1.2", "TLSv1.3")
        assert session.cipher
        assert session.auth_ok is True
        assert session.auth_mechanism == "PLAIN"
        assert session.auth_reply == (235, "2.7.0 Authentication successful")
        assert session.server_banner.startswith("mail.test.example")
        assert list(session.timings) == ["connect", "ehlo", "starttls", "auth"]
        assert [name for name, _, _ in session.steps] == ["connect", "ehlo", "starttls", "ehlo", "auth"]
    assert server.commands == ["EHLO", "STARTTLS", "EHLO", "AUTH", "QUIT"]
    assert server.auth_attempts == [("PLAIN", "sales@example.com", True)]


def test_unknown_ca_fails_certificate_verification_before_auth(smtp_server):
    server = smtp_server()
    session = SmtpSession(make_sender(server, ca_file=None), DEFAULT_PASSWORD)
    failure = failure_of(session)
    assert (failure.step, failure.kind, failure.code) == ("tls", "tls", None)
    assert failure.text.startswith("certificate verification failed: ")
    assert failure.text == "certificate verification failed: unable to get local issuer certificate"
    assert failure.sender_problem
    assert not session.is_open
    assert "AUTH" not in server.commands
    assert server.auth_attempts == []


def test_certificate_for_another_name_is_a_hostname_mismatch(smtp_server):
    server = smtp_server(cert_hosts=["mail.example.net"])
    failure = failure_of(SmtpSession(make_sender(server), DEFAULT_PASSWORD))
    assert failure.kind == "tls"
    assert failure.text == (
        "certificate verification failed: IP address mismatch, certificate is not valid for '127.0.0.1'."
    )


def test_unreadable_ca_file_is_a_tls_failure_before_connecting(smtp_server, tmp_path):
    server = smtp_server()
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    failure = failure_of(SmtpSession(make_sender(server, ca_file=bogus), DEFAULT_PASSWORD))
    assert (failure.step, failure.kind) == ("tls", "tls")
    assert failure.text.startswith(f"cannot load ca_file {bogus}: ")
    assert failure.text.endswith("; it must hold PEM certificates")
    assert server.connections == 0


def test_tls_verify_false_accepts_an_untrusted_certificate(smtp_server):
    server = smtp_server()
    with SmtpSession(make_sender(server, ca_file=None, tls_verify=False), DEFAULT_PASSWORD) as session:
        result = session.send(mime(), "sales@example.com", [RCPT])
    assert result.accepted == [RCPT]
    assert len(server.messages) == 1


def test_implicit_tls(smtp_server):
    server = smtp_server(mode="ssl")
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        result = session.send(mime(), "sales@example.com", [RCPT])
        assert session.tls_version in ("TLSv1.2", "TLSv1.3")
        assert list(session.timings) == ["connect", "ehlo", "auth"]
    assert result.code == 250
    assert server.messages[0].username == "sales@example.com"
    assert "STARTTLS" not in server.commands


def test_ssl_against_a_starttls_port_is_a_tls_failure(smtp_server):
    server = smtp_server()
    failure = failure_of(SmtpSession(make_sender(server, security="ssl"), DEFAULT_PASSWORD))
    assert (failure.step, failure.kind) == ("tls", "tls")
    assert failure.text.startswith(f"TLS handshake with 127.0.0.1:{server.port} failed: ")


def test_server_without_starttls_is_refused_and_gets_no_auth(smtp_server):
    server = smtp_server(mode="plain")
    session = SmtpSession(make_sender(server, security="starttls"), DEFAULT_PASSWORD)
    failure = failure_of(session)
    assert (failure.step, failure.kind, failure.code) == ("starttls", "no-starttls", None)
    assert failure.text == f"127.0.0.1:{server.port} does not offer STARTTLS"
    assert failure.sender_problem
    assert server.commands == ["EHLO", "QUIT"]
    assert server.auth_attempts == []


def test_plaintext_auth_is_refused_without_allow_plaintext_auth(smtp_server):
    server = smtp_server(mode="plain")
    failure = failure_of(SmtpSession(make_sender(server), DEFAULT_PASSWORD))
    assert (failure.step, failure.kind) == ("auth", "plaintext-refused")
    assert failure.text == (
        f"refusing to send the password of sales over an unencrypted connection to 127.0.0.1:{server.port}"
    )
    assert "AUTH" not in server.commands
    assert server.auth_attempts == []


def test_plaintext_auth_when_allowed(smtp_server):
    server = smtp_server(mode="plain")
    with SmtpSession(make_sender(server, allow_plaintext_auth=True), DEFAULT_PASSWORD) as session:
        session.send(mime(), "sales@example.com", [RCPT])
        assert session.tls_version is None
    assert server.logins == 1
    assert server.messages[0].username == "sales@example.com"


def test_auth_login_when_plain_is_not_offered(smtp_server):
    server = smtp_server(exclude_mechanisms=("PLAIN",))
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.open()
        assert session.auth_mechanism == "LOGIN"
    assert server.auth_attempts == [("LOGIN", "sales@example.com", True)]
    # The LOGIN continuation lines carry the credentials: they are not commands and are not logged.
    assert server.commands == ["EHLO", "STARTTLS", "EHLO", "AUTH", "QUIT"]


def test_wrong_password_is_auth_failure_with_server_reply_and_one_attempt(smtp_server):
    server = smtp_server()
    failure = failure_of(SmtpSession(make_sender(server), "not-the-password"))
    assert (failure.step, failure.kind, failure.code) == ("auth", "auth", 535)
    assert failure.text == "5.7.8 Authentication credentials invalid"
    assert failure.sender_problem and not failure.temporary
    # 535 means bad credentials: trying LOGIN after PLAIN would only add to the lockout count.
    assert server.auth_attempts == [AuthAttempt("PLAIN", "sales@example.com", False)]


def test_unknown_user_is_refused(smtp_server):
    server = smtp_server(users={"finance@example.com": "other"})
    failure = failure_of(SmtpSession(make_sender(server), DEFAULT_PASSWORD))
    assert (failure.kind, failure.code) == ("auth", 535)


def test_server_without_auth_for_a_sender_that_needs_it(smtp_server):
    server = smtp_server(mode="ssl", auth=False)
    failure = failure_of(SmtpSession(make_sender(server, auth=True), DEFAULT_PASSWORD))
    assert (failure.step, failure.kind) == ("auth", "no-auth-offered")
    assert failure.text == f"127.0.0.1:{server.port} does not offer AUTH on this connection"


def test_sender_without_auth_sends_without_login(smtp_server):
    server = smtp_server(auth=False)
    with SmtpSession(make_sender(server), None) as session:
        session.send(mime(), "sales@example.com", [RCPT])
        assert session.auth_ok is None
    assert "AUTH" not in server.commands
    assert server.messages[0].username is None


def test_missing_password_is_reported_without_contacting_auth(smtp_server):
    server = smtp_server()
    failure = failure_of(SmtpSession(make_sender(server), None))
    assert (failure.kind, failure.text) == ("auth", "no password available for sales")
    assert "AUTH" not in server.commands


def test_closed_port_fails_fast_as_connect(closed_port):
    sender = make_sender(port=closed_port)
    start = time.monotonic()
    failure = failure_of(SmtpSession(sender, DEFAULT_PASSWORD))
    assert time.monotonic() - start < 5
    assert (failure.step, failure.kind) == ("connect", "connect")
    assert failure.text == f"connection refused by 127.0.0.1:{closed_port}"
    assert failure.temporary and failure.sender_problem


def test_stalled_server_times_out(stalling_server):
    sender = make_sender(stalling_server, timeout=1)
    start = time.monotonic()
    failure = failure_of(SmtpSession(sender, DEFAULT_PASSWORD))
    assert time.monotonic() - start < 4
    assert (failure.step, failure.kind) == ("connect", "timeout")
    assert failure.text == f"no answer from 127.0.0.1:{stalling_server.port} within 1 s"
    assert failure.temporary and failure.sender_problem


def test_unresolvable_host_is_a_connect_failure(monkeypatch):
    # Tests stay on loopback: the resolver failure is simulated, the rest of the path is real.
    def no_such_host(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    failure = failure_of(SmtpSession(make_sender(host="no-such-host.invalid", port=2525), DEFAULT_PASSWORD))
    assert failure.kind == "connect"
    assert failure.text == "cannot resolve host 'no-such-host.invalid': Name or service not known"


# ------------------------------------------------------------------ sending


def test_many_messages_share_one_connection_and_one_login(smtp_server):
    server = smtp_server()
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        results = [session.send(mime(f"n{i}"), "sales@example.com", [RCPT]) for i in range(5)]
    assert all(isinstance(r, SendResult) and r.code == 250 and r.accepted == [RCPT] for r in results)
    assert [m.subject for m in server.messages] == ["n0", "n1", "n2", "n3", "n4"]
    assert server.connections == 1
    assert server.logins == 1
    # a completed transaction needs no RSET before the next one (one round trip saved per message)
    assert server.commands.count("RSET") == 0
    assert server.commands.count("MAIL") == 5


def test_partial_refusal_reports_refused_recipients(smtp_server):
    server = smtp_server()
    server.rcpt_hook = lambda address: "550 5.1.1 no such user" if address.startswith("bad") else None
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        result = session.send(mime(), "sales@example.com", [RCPT, "bad@example.org", "other@example.org"])
    assert result.accepted == [RCPT, "other@example.org"]
    assert result.refused == {"bad@example.org": (550, "5.1.1 no such user")}
    assert server.messages[0].rcpt_tos == [RCPT, "other@example.org"]


def test_all_recipients_refused_permanently_then_the_connection_still_works(smtp_server):
    server = smtp_server()
    server.rcpt_hook = lambda address: "550 5.1.1 no such user" if address.startswith("bad") else None
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, mime(), "sales@example.com", ["bad1@example.org", "bad2@example.org"])
        assert (failure.step, failure.kind, failure.code) == ("rcpt", "permanent", 550)
        assert failure.text == "all 2 recipients refused; bad1@example.org: 5.1.1 no such user"
        assert failure.refused == {
            "bad1@example.org": (550, "5.1.1 no such user"),
            "bad2@example.org": (550, "5.1.1 no such user"),
        }
        assert not failure.sender_problem and not failure.temporary
        session.send(mime(), "sales@example.com", [RCPT])
    assert len(server.messages) == 1
    assert server.connections == 1


def test_recipients_refused_with_a_4xx_among_them_is_temporary(smtp_server):
    server = smtp_server()
    server.rcpt_hook = lambda address: "450 4.2.1 mailbox busy" if address.startswith("busy") else "550 5.1.1 unknown"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, mime(), "sales@example.com", ["x@example.org", "busy@example.org"])
    assert (failure.kind, failure.code) == ("temporary", 550)
    assert failure.temporary


def test_data_451_is_temporary_and_the_next_message_goes_through(smtp_server):
    server = smtp_server()
    server.data_hook = fail_first(1, "451 4.3.0 try later")
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, mime(), "sales@example.com", [RCPT])
        assert (failure.step, failure.kind, failure.code, failure.text) == ("data", "temporary", 451, "4.3.0 try later")
        assert failure.temporary and not failure.sender_problem and not failure.maybe_delivered
        session.send(mime(), "sales@example.com", [RCPT])
    assert len(server.messages) == 1
    assert server.connections == 1


def test_data_5xx_is_permanent(smtp_server):
    server = smtp_server()
    server.data_hook = lambda envelope: "554 5.7.1 message rejected as spam"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, mime(), "sales@example.com", [RCPT])
    assert (failure.step, failure.kind, failure.code) == ("data", "permanent", 554)
    assert server.messages == []


def test_mail_from_refused(smtp_server):
    server = smtp_server(pipelining=False)  # one command at a time: nothing follows a refused MAIL FROM
    server.mail_hook = lambda address: "553 5.7.1 sender not owned by user"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, mime(), "other@example.com", [RCPT])
    assert (failure.step, failure.kind, failure.code, failure.text) == (
        "mail",
        "permanent",
        553,
        "5.7.1 sender not owned by user",
    )
    assert failure.sender_problem
    assert "RCPT" not in server.commands


def test_idle_connection_closed_by_server_is_reopened_transparently(smtp_server):
    server = smtp_server()
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime("first"), "sales@example.com", [RCPT])
        assert server.drop_connections() == 1
        session.send(mime("second"), "sales@example.com", [RCPT])
    assert [m.subject for m in server.messages] == ["first", "second"]
    assert server.connections == 2
    assert server.logins == 2


def test_421_before_data_on_a_reused_connection_reconnects_once(smtp_server):
    server = smtp_server()
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime("first"), "sales@example.com", [RCPT])
        server.mail_hook = fail_first(1, "421 4.4.2 idle too long, closing")
        session.send(mime("second"), "sales@example.com", [RCPT])
    assert [m.subject for m in server.messages] == ["first", "second"]
    assert server.connections == 2


def test_421_on_a_fresh_connection_is_reported_not_retried(smtp_server):
    server = smtp_server()
    server.mail_hook = lambda address: "421 4.7.0 try again later"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, mime(), "sales@example.com", [RCPT])
    assert (failure.step, failure.kind, failure.code) == ("mail", "temporary", 421)
    assert server.connections == 1


def test_max_per_connection_rotates_connections(smtp_server):
    server = smtp_server()
    with SmtpSession(make_sender(server, max_per_connection=2), DEFAULT_PASSWORD) as session:
        for i in range(5):
            session.send(mime(f"n{i}"), "sales@example.com", [RCPT])
    assert len(server.messages) == 5
    assert server.connections == 3
    assert server.logins == 3


def test_max_per_connection_argument_overrides_the_sender(smtp_server):
    server = smtp_server()
    with SmtpSession(make_sender(server, max_per_connection=100), DEFAULT_PASSWORD, max_per_connection=1) as session:
        for i in range(3):
            session.send(mime(f"n{i}"), "sales@example.com", [RCPT])
    assert server.connections == 3


def test_server_silent_after_data_is_reported_as_maybe_delivered_and_not_retried(smtp_server):
    server = smtp_server()

    def slow(envelope):
        time.sleep(1.5)  # longer than the client's timeout; blocks the server loop briefly
        return None

    server.data_hook = slow
    with SmtpSession(make_sender(server, timeout=1), DEFAULT_PASSWORD) as session:
        start = time.monotonic()
        failure = failure_of(session, mime(), "sales@example.com", [RCPT])
        assert time.monotonic() - start < 4
        assert not session.is_open
    assert (failure.step, failure.kind) == ("data", "timeout")
    assert failure.maybe_delivered
    assert failure.temporary
    # Another sender could deliver it a second time: the caller must not fail over.
    assert not failure.sender_problem
    assert server.commands.count("DATA") == 1


def test_non_ascii_body_is_sent_as_8bitmime(smtp_server):
    server = smtp_server()
    message = EmailMessage()
    message["Subject"] = "Grüße"
    message.set_content("Grüße aus Köln\n", cte="8bit")
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(message.as_bytes(), "sales@example.com", [RCPT])
    received = server.messages[0]
    assert "BODY=8BITMIME" in received.mail_options
    # Bare LF from the default email policy goes out as CRLF, with nothing added to the body.
    assert received.data.endswith("\r\n\r\nGrüße aus Köln\r\n".encode())
    assert b"\n" not in received.data.replace(b"\r\n", b"")


def test_send_needs_a_recipient(smtp_server):
    server = smtp_server()
    with (
        SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session,
        pytest.raises(ValueError, match="at least one recipient"),
    ):
        session.send(mime(), "sales@example.com", [])
    assert server.connections == 0


def test_close_never_raises_even_when_the_server_is_gone(smtp_server):
    server = smtp_server()
    session = SmtpSession(make_sender(server), DEFAULT_PASSWORD)
    session.open()
    server.stop()
    session.close()
    session.close()
    assert not session.is_open


# ------------------------------------------------------------------ secrets


def test_password_never_appears_in_errors_or_reprs(smtp_server):
    secret = "Tr0ub4dor&3-wrong"
    server = smtp_server()
    session = SmtpSession(make_sender(server), secret)
    failure = failure_of(session)
    rendered = [
        str(failure),
        repr(failure),
        repr(session),
        "".join(traceback.format_exception(failure)),
        repr(server),
        repr(server.auth_attempts),
    ]
    assert all(secret not in text for text in rendered)
    assert repr(session) == f"SmtpSession(sender='sales', server='127.0.0.1:{server.port}', closed)"


def test_non_ascii_password_fails_without_leaking_it(smtp_server):
    secret = "pässwört-geheim"
    server = smtp_server()
    failure = failure_of(SmtpSession(make_sender(server), secret))
    assert (failure.kind, failure.code) == ("auth", None)
    assert failure.text == "the username or password of sales has non-ASCII characters, which AUTH PLAIN cannot send"
    formatted = "".join(traceback.format_exception(failure))
    assert secret not in formatted and secret not in repr(failure)
    assert failure.__context__ is None


# --------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("failure", "sender_problem", "temporary"),
    [
        (SmtpFailure("connect", "connect", None, "refused"), True, True),
        (SmtpFailure("connect", "timeout", None, "slow"), True, True),
        (SmtpFailure("tls", "tls", None, "bad cert"), True, False),
        (SmtpFailure("auth", "auth", 535, "bad"), True, False),
        (SmtpFailure("connect", "temporary", 421, "busy"), True, True),
        (SmtpFailure("mail", "permanent", 550, "quota exceeded"), True, False),
        (SmtpFailure("rcpt", "permanent", 550, "no such user"), False, False),
        (SmtpFailure("rcpt", "temporary", 450, "greylisted"), False, True),
        (SmtpFailure("data", "temporary", 451, "later"), False, True),
        (SmtpFailure("data", "timeout", None, "slow", maybe_delivered=True), False, True),
        (SmtpFailure("data", "permanent", 554, "spam"), False, False),
    ],
)
def test_failure_classification(failure, sender_problem, temporary):
    assert failure.sender_problem is sender_problem
    assert failure.temporary is temporary


def test_failure_str_is_one_line_with_step_and_code():
    assert str(SmtpFailure("auth", "auth", 535, "5.7.8 bad")) == "auth: 535 5.7.8 bad"
    assert (
        str(SmtpFailure("connect", "connect", None, "connection refused by h:1"))
        == "connect: connection refused by h:1"
    )


# ------------------------------------------------------------------ bookkeeping while the server works


def test_while_waiting_runs_before_the_end_of_data(smtp_server):
    # The caller writes the previous message's outcome in the callback: the server must not be able to
    # accept this message before it has run (a crash there would leave two accepted messages unrecorded).
    server = smtp_server()
    seen: list[object] = []
    server.data_hook = lambda _envelope: seen.append("end of data") or None

    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        result = session.send(
            mime(), "sales@example.com", [RCPT], while_waiting=lambda: seen.append(("callback", len(server.messages)))
        )
    assert seen == [("callback", 0), "end of data"]
    assert (result.code, result.accepted) == (250, [RCPT])
    assert len(server.messages) == 1


def test_a_failing_while_waiting_abandons_the_message_before_the_server_has_it(smtp_server):
    server = smtp_server()

    def crash() -> None:
        raise RuntimeError("the outcome could not be written")

    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        with pytest.raises(RuntimeError):
            session.send(mime(subject="abandoned"), "sales@example.com", [RCPT], while_waiting=crash)
        result = session.send(mime(subject="next"), "sales@example.com", [RCPT])  # on a fresh connection
    assert result.code == 250
    assert [m.subject for m in server.messages] == ["next"]
    assert server.connections == 2


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_while_waiting_runs_once_the_commands_are_out_with_pipelining_only(smtp_server, pipelining):
    # With PIPELINING the callback runs while the server answers MAIL FROM, RCPT TO and DATA, so also when it
    # then refuses them; one command at a time, a refusal comes before the data and the callback never runs.
    server = smtp_server(pipelining=pipelining)
    server.rcpt_hook = lambda address: "550 5.1.1 no such user"
    calls = []
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session, pytest.raises(SmtpFailure):
        session.send(mime(), "sales@example.com", [RCPT], while_waiting=lambda: calls.append(1))
    assert calls == ([1] if pipelining else [])
    assert server.messages == []


def test_with_pipelining_while_waiting_runs_before_the_replies_to_the_commands_are_read(smtp_server):
    # The server holds its reply to MAIL FROM until the callback has run: a client that read that reply
    # first would wait out the hook and get the 451.
    server = smtp_server(pipelining=True)
    ran = threading.Event()
    server.mail_hook = lambda address: None if ran.wait(10) else "451 4.3.0 the callback did not run first"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        result = session.send(mime(), "sales@example.com", [RCPT], while_waiting=ran.set)
    assert (result.code, result.accepted) == (250, [RCPT])
    assert len(server.messages) == 1


def test_while_waiting_runs_once_when_a_dropped_idle_connection_is_reopened(smtp_server):
    # The reconnect repeats the transaction, not the caller's bookkeeping.
    server = smtp_server(pipelining=True)
    calls = []
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime(subject="first"), "sales@example.com", [RCPT])
        assert server.drop_connections() == 1
        session.send(mime(subject="second"), "sales@example.com", [RCPT], while_waiting=lambda: calls.append(1))
    assert calls == [1]
    assert [m.subject for m in server.messages] == ["first", "second"]
    assert server.connections == 2


def test_a_failing_while_waiting_drops_the_connection_and_the_next_send_reconnects(smtp_server):
    server = smtp_server()

    def broken() -> None:
        raise RuntimeError("bookkeeping failed")

    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        with pytest.raises(RuntimeError, match="bookkeeping failed"):
            session.send(mime("First"), "sales@example.com", [RCPT], while_waiting=broken)
        second = session.send(mime("Second"), "sales@example.com", [RCPT])
    assert second.code == 250
    assert server.connections == 2  # the first connection, its reply unread, was not reused
    assert server.messages[-1].subject == "Second"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
@pytest.mark.parametrize(
    "error",
    [ConnectionResetError("the database connection was reset"), smtplib.SMTPException("a nested client's")],
    ids=["ConnectionError", "SMTPException"],
)
def test_the_callers_own_network_error_is_its_own_not_the_servers(smtp_server, pipelining, error):
    # On a reused connection a ConnectionError taken for the server's would reconnect and send the message
    # though the caller's bookkeeping failed; any other would be reported as an SMTP failure.
    server = smtp_server(pipelining=pipelining)

    def broken() -> None:
        raise error

    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime(subject="first"), "sales@example.com", [RCPT])
        with pytest.raises(type(error)) as raised:
            session.send(mime(subject="second"), "sales@example.com", [RCPT], while_waiting=broken)
    assert raised.value is error
    assert [m.subject for m in server.messages] == ["first"]
    assert server.connections == 1


def test_lines_starting_with_a_dot_arrive_intact(smtp_server):
    server = smtp_server()
    body = ".\n..two\n.three\nend\n"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime(body=body), "sales@example.com", [RCPT], while_waiting=lambda: None)
    assert server.messages[0].message.get_content().replace("\r\n", "\n") == body


def test_line_endings_and_dot_stuffing_match_the_regular_expressions_smtplib_uses():
    """The C-speed helpers give what smtplib's regexes give (``_fix_eols``, ``_quote_periods``) on every mix."""
    import random
    import re

    from mailops.transport import _crlf, _dot_stuffed

    fix_eols = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
    quote_periods = re.compile(rb"(?m)^\.")
    rng = random.Random(20261201)
    for _ in range(5000):
        data = bytes(rng.choice(b".\r\na") for _ in range(rng.randint(0, 40)))
        crlf = _crlf(data)
        assert crlf == fix_eols.sub(b"\r\n", data), data
        assert _dot_stuffed(crlf) == quote_periods.sub(b"..", crlf), crlf
