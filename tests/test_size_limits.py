"""Message size: the SIZE a server announced is a limit at `send` time, like max_message_size (issue 11)."""

from __future__ import annotations

import os

import pytest

PASSWORD = "s3cret-pass"
LIMIT = 100_000


@pytest.fixture
def shared(workspace, database_url):
    workspace.use_database(database_url)
    return workspace


def _setup(workspace, smtp_server, **sender_keys):
    srv = smtp_server(users={"sales@example.com": PASSWORD}, data_size_limit=LIMIT)
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, **sender_keys)},
        routes={"default": "sales"},
    )
    big = workspace.root / "big.pdf"
    big.write_bytes(os.urandom(150_000))
    return srv, big


def test_the_size_the_server_announced_refuses_a_larger_message_at_send(shared, smtp_server, cli):
    srv, big = _setup(shared, smtp_server)
    first = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "small")
    assert first.exit_code == 0, first.output
    assert shared.query("SELECT max_size FROM sender_state WHERE sender = 'sales'") == [(LIMIT,)]

    data = shared.csv("c.csv", [{"email": "b@example.org"}, {"email": "c@example.org"}])
    refused = cli("send", "--data", data, "--subject", "S", "--body", "B", "--attach", big)
    assert refused.exit_code == 2
    lines = [line for line in refused.stderr.splitlines() if "row 2" in line]
    assert len(lines) == 1, refused.stderr
    size = int(lines[0].split("the message is ")[1].split(" bytes")[0].replace(",", ""))
    assert size > LIMIT
    assert lines[0].endswith(
        f"c.csv row 2: the message is {size:,} bytes; sender sales's server 127.0.0.1:{srv.port} takes at most "
        f"{LIMIT:,} (the SIZE it announced when last reached); send smaller attachments or links to them"
    )
    assert "Traceback" not in refused.stderr
    assert shared.states() == {"sent": 1}  # nothing queued
    assert [m.rcpt_tos for m in srv.messages] == [["a@example.org"]]  # nothing sent
    assert big.exists()


def test_an_announced_size_measured_with_other_settings_does_not_count(shared, smtp_server, cli):
    srv, big = _setup(shared, smtp_server)
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "small").exit_code == 0
    other = smtp_server(users={"sales@example.com": PASSWORD})  # aiosmtpd's default limit, 32 MiB
    shared.write_config(
        {"sales": shared.sender(other, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    sent = cli("send", "--to", "b@example.org", "--subject", "S", "--body", "B", "--attach", big)
    assert sent.exit_code == 0, sent.output
    assert [m.rcpt_tos for m in other.messages] == [["b@example.org"]]
    assert len(srv.messages) == 1


def test_a_552_at_delivery_fails_the_message_for_good_with_the_reason(shared, smtp_server, cli):
    """Before any EHLO is known the limit cannot be checked at send: the server's 552 (SIZE at MAIL FROM)
    is a permanent failure naming the reply, not a retry for days."""
    srv, big = _setup(shared, smtp_server)
    result = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--attach", big)
    assert result.exit_code == 1
    assert "every sender refused it for good: sales: permanent 552" in result.output, result.output
    [(state, reason)] = shared.query("SELECT state, reason FROM messages")
    assert state == "failed" and reason.startswith("every sender refused it for good: sales: permanent 552")
    assert srv.messages == []


def test_test_smtp_records_the_size_the_server_announced(shared, smtp_server, cli):
    _setup(shared, smtp_server)
    checked = cli("test-smtp", "sales", "--json")
    assert checked.exit_code == 0, checked.output
    assert '"server_max_size": 100000' in checked.stdout
    assert shared.query("SELECT healthy, max_size FROM sender_state") in ([(True, LIMIT)], [(1, LIMIT)])
