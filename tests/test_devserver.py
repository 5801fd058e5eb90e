"""The dev capture server: real smtplib clients, a real Maildir on disk."""

from __future__ import annotations

import mailbox
import smtplib
import socket
import threading
from email.message import EmailMessage

import pytest

from mailops.devserver import CapturedMessage, CaptureServer, serve_forever
from mailops.errors import UsageError
from mailops.transport import SmtpSession
from tests.fixtures_smtp import make_sender


def message(subject: str = "Renewal reminder") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sales@example.com"
    msg["To"] = "customer@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = "<abc123@example.com>"
    msg.set_content("Your licence renews soon.\n")
    return msg


def test_message_lands_in_the_maildir_and_the_callback(tmp_path):
    seen: list[CapturedMessage] = []
    maildir = tmp_path / "Maildir"
    with CaptureServer(port=0, maildir=maildir, on_message=seen.append) as server:
        assert server.host == "127.0.0.1" and server.port != 0
        with smtplib.SMTP(server.host, server.port, timeout=5) as client:
            client.send_message(message(), to_addrs=["customer@example.org", "hidden-bcc@example.org"])
        assert server.count == 1
    [captured] = seen
    assert captured.mail_from == "sales@example.com"
    assert captured.rcpt_tos == ["customer@example.org", "hidden-bcc@example.org"]
    assert captured.subject == "Renewal reminder"
    assert captured.message_id == "<abc123@example.com>"
    assert captured.size > 0
    box = mailbox.Maildir(maildir, create=False)
    assert list(box.keys()) == [captured.maildir_key]
    stored = box[captured.maildir_key]
    assert stored["Subject"] == "Renewal reminder"
    assert stored["Return-Path"] == "<sales@example.com>"
    assert stored["X-Original-To"] == "customer@example.org, hidden-bcc@example.org"
    assert stored.get_payload() == "Your licence renews soon.\n"


def test_without_maildir_messages_are_only_reported(tmp_path):
    seen: list[CapturedMessage] = []
    with (
        CaptureServer(port=0, on_message=seen.append) as server,
        smtplib.SMTP(server.host, server.port, timeout=5) as client,
    ):
        client.send_message(message("one"))
        client.send_message(message("two"))
    assert [c.subject for c in seen] == ["one", "two"]
    assert all(c.maildir_key is None for c in seen)
    assert list(tmp_path.iterdir()) == []


def test_demo_sender_config_delivers_through_smtp_session(tmp_path):
    maildir = tmp_path / "mail"
    with CaptureServer(port=0, maildir=maildir) as server:
        sender = make_sender(server, security="none", auth=False, ca_file=None)
        with SmtpSession(sender, None) as session:
            result = session.send(message().as_bytes(), sender.email, ["customer@example.org"])
    assert result.code == 250
    assert result.text == "2.0.0 Message captured"
    assert len(mailbox.Maildir(maildir)) == 1


def test_callback_failure_does_not_lose_the_message(tmp_path):
    def broken(captured: CapturedMessage) -> None:
        raise RuntimeError("display broke")

    with (
        CaptureServer(port=0, maildir=tmp_path / "m", on_message=broken) as server,
        smtplib.SMTP(server.host, server.port, timeout=5) as client,
    ):
        client.send_message(message())
    assert len(mailbox.Maildir(tmp_path / "m")) == 1


def test_port_in_use_is_a_usage_error():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        server = CaptureServer(port=port)
        with pytest.raises(UsageError) as info:
            server.start()
    assert str(info.value) == f"127.0.0.1:{port} is already in use: pick another --port"
    assert info.value.exit_code == 2
    assert not server.running


def test_maildir_that_cannot_be_created_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    server = CaptureServer(port=0, maildir=blocker / "Maildir")
    with pytest.raises(UsageError) as info:
        server.start()
    assert str(info.value).startswith(f"{blocker / 'Maildir'}: cannot create the Maildir (")
    assert str(info.value).endswith("); pick another --maildir")


def test_serve_forever_returns_when_told_and_releases_the_port():
    server = CaptureServer(port=0)
    stop = threading.Event()
    received: list[CapturedMessage] = []
    server.on_message = lambda captured: (received.append(captured), stop.set())
    worker = threading.Thread(target=serve_forever, args=(server, stop.is_set), daemon=True)
    worker.start()
    deadline = 50
    while not server.running and deadline:  # bounded wait for the background start
        threading.Event().wait(0.05)
        deadline -= 1
    assert server.running
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.send_message(message())
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert not server.running
    assert len(received) == 1
    with socket.create_server(("127.0.0.1", server.port)):
        pass  # the port is free again


def test_stop_is_idempotent_and_repr_is_plain():
    server = CaptureServer(port=0)
    server.start()
    assert repr(server) == f"CaptureServer('127.0.0.1:{server.port}', running=True)"
    server.stop()
    server.stop()
    assert not server.running
