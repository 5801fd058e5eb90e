"""SMTP PIPELINING (RFC 2920): the same outcomes with and without it, against real aiosmtpd servers.

Every test runs twice: against a server that advertises PIPELINING (MAIL FROM,
the RCPT TOs and DATA go out in one write) and against one that does not (one
command, one reply). The outcome a caller sees must not depend on which.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest

from mailops.transport import SmtpFailure, SmtpSession, quoted_address
from tests.fixtures_smtp import DEFAULT_PASSWORD, fail_first, make_sender

FROM = "sales@example.com"
A, B, C = "a@example.org", "b@example.org", "c@example.org"


def mime(subject: str = "Hello") -> bytes:
    message = EmailMessage()
    message["From"] = FROM
    message["To"] = A
    message["Subject"] = subject
    message.set_content("Hi there.\n")
    return message.as_bytes()


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def server(request, smtp_server):
    return smtp_server(pipelining=request.param)


def transactions(server) -> list[list[str]]:
    """The command writes the server read from MAIL on (the session set-up left out)."""
    writes = server.command_writes
    first = next(i for i, verbs in enumerate(writes) if "MAIL" in verbs)
    return writes[first:]


def failure_of(session: SmtpSession, *recipients: str, subject: str = "Hello") -> SmtpFailure:
    with pytest.raises(SmtpFailure) as info:
        session.send(mime(subject), FROM, list(recipients))
    return info.value


def test_every_recipient_accepted(server):
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        result = session.send(mime("one"), FROM, [A, B, C])
        again = session.send(mime("two"), FROM, [A])
    assert (result.code, result.accepted, result.refused) == (250, [A, B, C], {})
    assert (again.code, again.accepted) == (250, [A])
    assert [(m.subject, m.rcpt_tos) for m in server.messages] == [("one", [A, B, C]), ("two", [A])]
    assert server.connections == 1
    if server.pipelining:
        # one write before the message data; the next message's MAIL FROM follows its end of data
        assert transactions(server)[:1] == [["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]]
        assert ["MAIL", "RCPT", "DATA"] in transactions(server)
    else:
        assert transactions(server)[:5] == [["MAIL"], ["RCPT"], ["RCPT"], ["RCPT"], ["DATA"]]


def test_one_recipient_refused(server):
    server.rcpt_hook = lambda address: "550 5.1.1 no such user" if address == B else None
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        result = session.send(mime(), FROM, [A, B, C])
    assert (result.code, result.accepted) == (250, [A, C])
    assert result.refused == {B: (550, "5.1.1 no such user")}
    assert server.messages[0].rcpt_tos == [A, C]


def test_every_recipient_refused_then_the_connection_carries_the_next_message(server):
    server.rcpt_hook = fail_first(2, "550 5.1.1 no such user")
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, A, B)
        assert (failure.step, failure.kind, failure.code) == ("rcpt", "permanent", 550)
        assert failure.text == f"all 2 recipients refused; {A}: 5.1.1 no such user"
        assert failure.refused == {A: (550, "5.1.1 no such user"), B: (550, "5.1.1 no such user")}
        assert not failure.sender_problem
        result = session.send(mime("next"), FROM, [C])
    assert result.accepted == [C]
    assert [m.subject for m in server.messages] == ["next"]
    assert server.connections == 1
    assert server.commands.count("RSET") == 1  # after the refused DATA, before the next MAIL FROM
    assert server.commands.count("DATA") == (2 if server.pipelining else 1)


def test_mail_from_refused_then_the_connection_carries_the_next_message(server):
    server.mail_hook = fail_first(1, "553 5.7.1 sender not owned by user")
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, A, B)
        assert (failure.step, failure.kind, failure.code, failure.text) == (
            "mail",
            "permanent",
            553,
            "5.7.1 sender not owned by user",
        )
        assert failure.sender_problem
        result = session.send(mime("next"), FROM, [A])
    assert result.accepted == [A]
    assert [(m.subject, m.rcpt_tos) for m in server.messages] == [("next", [A])]
    assert server.connections == 1
    # pipelined, the RCPTs and DATA were on their way and refused for want of MAIL; one by one they never went
    assert server.commands.count("RCPT") == (3 if server.pipelining else 1)


def test_data_command_refused_then_the_connection_carries_the_next_message(server):
    server.data_command_hook = fail_first(1, "554 5.7.1 too many messages from you")
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, A)
        assert (failure.step, failure.kind, failure.code, failure.text) == (
            "data",
            "permanent",
            554,
            "5.7.1 too many messages from you",
        )
        assert not failure.maybe_delivered and not failure.sender_problem
        result = session.send(mime("next"), FROM, [A])
    assert result.code == 250
    assert [m.subject for m in server.messages] == ["next"]
    assert server.connections == 1


def test_data_command_refused_for_now_is_temporary(server):
    server.data_command_hook = lambda _envelope: "451 4.3.0 try again later"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, A)
    assert (failure.step, failure.kind, failure.code) == ("data", "temporary", 451)
    assert failure.temporary and not failure.maybe_delivered
    assert server.messages == []


def test_message_refused_after_its_data(server):
    server.data_hook = fail_first(1, "554 5.7.1 message rejected as spam")
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, A)
        assert (failure.step, failure.kind, failure.code) == ("data", "permanent", 554)
        result = session.send(mime("next"), FROM, [A])
    assert result.code == 250
    assert [m.subject for m in server.messages] == ["next"]


def test_421_at_a_recipient_after_another_was_accepted_drops_the_connection_and_is_not_retried(server):
    server.rcpt_hook = lambda address: "421 4.7.0 closing, try later" if address == B else None
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime("first"), FROM, [A])
        failure = failure_of(session, A, B, C, subject="second")
        assert (failure.step, failure.kind, failure.code) == ("rcpt", "temporary", 421)
        assert failure.temporary
        assert not session.is_open
    assert [m.subject for m in server.messages] == ["first"]
    assert server.connections == 1


def test_421_at_the_first_recipient_of_a_reused_connection_reconnects_once(server):
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime("first"), FROM, [A])
        server.rcpt_hook = fail_first(1, "421 4.4.2 idle too long, closing")
        result = session.send(mime("second"), FROM, [A, B])
    assert result.accepted == [A, B]
    assert [(m.subject, m.rcpt_tos) for m in server.messages] == [("first", [A]), ("second", [A, B])]
    assert server.connections == 2


def test_421_at_mail_from_of_a_reused_connection_reconnects_once(server):
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime("first"), FROM, [A])
        server.mail_hook = fail_first(1, "421 4.4.2 idle too long, closing")
        session.send(mime("second"), FROM, [A])
    assert [m.subject for m in server.messages] == ["first", "second"]
    assert server.connections == 2


def test_421_at_mail_from_of_a_fresh_connection_is_reported_not_retried(server):
    server.mail_hook = lambda address: "421 4.7.0 try again later"
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        failure = failure_of(session, A, B)
    assert (failure.step, failure.kind, failure.code) == ("mail", "temporary", 421)
    assert server.connections == 1
    assert server.messages == []


def test_a_connection_the_server_closed_while_idle_is_reopened_transparently(server):
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        session.send(mime("first"), FROM, [A])
        assert server.drop_connections() == 1
        session.send(mime("second"), FROM, [A, B])
    assert [m.subject for m in server.messages] == ["first", "second"]
    assert server.connections == 2


def test_while_waiting_runs_before_the_end_of_data(server):
    seen: list[object] = []
    server.data_hook = lambda _envelope: seen.append("end of data") or None
    with SmtpSession(make_sender(server), DEFAULT_PASSWORD) as session:
        result = session.send(
            mime(), FROM, [A, B], while_waiting=lambda: seen.append(("callback", len(server.messages)))
        )
    assert seen == [("callback", 0), "end of data"]
    assert result.accepted == [A, B]


@pytest.mark.parametrize(
    "address",
    [
        "a@example.org",
        "First.Last+tag@sub.example.co.uk",
        "x_y-z@xn--bcher-kva.example",
        "o'brien@example.org",
        '"john doe"@example.org',
        "Name <name@example.org>",
        "a..b@example.org",
        ".a@example.org",
        "a.@example.org",
        "weird(comment)@example.org",
        "user@[127.0.0.1]",
        "",
        "no-at-sign",
        "ünïcode@exämple.org",
    ],
)
def test_addresses_are_quoted_as_smtplib_quotes_them(address):
    assert quoted_address(address) == smtplib.quoteaddr(address)
