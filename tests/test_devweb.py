"""The dev-server's browser view: real HTTP over loopback, a real Maildir, a real headless browser.

Captured mail is hostile input: subjects, headers and HTML come from whoever
can reach the SMTP port. These tests check that everything is escaped, that
the HTML part is served sandboxed under a CSP that loads nothing remote, and
(in Debian's chromium, headless) that a message sent with ``mailops send``
shows in the list and its HTML renders while its script and remote image do not.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mailops.devserver import CaptureServer
from mailops.devweb import HTML_PART_CSP, PAGE_CSP, WebView
from mailops.errors import UsageError
from tests.fixtures_cli import Workspace, popen_mailops, run_mailops
from tests.fixtures_pg import free_port

HOSTILE_SUBJECT = '<script>alert("subject")</script> & <b>bold</b>'


def hostile_message(remote: str = "http://127.0.0.1:9/track.png") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = '"<img src=x onerror=alert(1)>" <evil@example.com>'
    msg["To"] = "customer@example.org"
    msg["Subject"] = HOSTILE_SUBJECT
    msg["X-Custom"] = "</td><script>alert(2)</script>"
    msg.set_content("Plain <text> & more\n")
    msg.add_alternative(
        "<html><body><p id='greeting' style='color: rgb(0, 128, 0)'>Hello <b>HTML</b></p>"
        "<script>document.body.setAttribute('data-script-ran', 'yes')</script>"
        f"<img id='tracker' src='{remote}'><link rel='stylesheet' href='{remote}'></body></html>",
        subtype="html",
    )
    msg.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename="invoice 42.pdf")
    return msg


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[tuple[CaptureServer, WebView]]:
    """A capture server and its web view over one Maildir, both on loopback with free ports."""
    maildir = tmp_path / "Maildir"
    with CaptureServer(port=0, maildir=maildir) as server, WebView(maildir, port=0) as web:
        yield server, web


def deliver(server: CaptureServer, msg: EmailMessage) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.send_message(msg)


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def message_ids(page: str) -> list[str]:
    return re.findall(r'<a href="/m/([^"/]+)">', page)


# ---------------------------------------------------------------- over HTTP


def test_empty_list_says_so(capture):
    _, web = capture
    status, headers, body = get(web.url)
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == PAGE_CSP
    assert "No mail captured yet." in body.decode()


def test_list_shows_messages_newest_first_with_escaped_values(capture):
    server, web = capture
    deliver(server, hostile_message())
    plain = EmailMessage()
    plain["From"] = "sales@example.com"
    plain["To"] = "anna@example.org"
    plain["Subject"] = "Second message"
    plain.set_content("hi\n")
    deliver(server, plain)

    status, _, body = get(web.url)
    page = body.decode()
    assert status == 200
    assert "<script>" not in page and "<img" not in page  # nothing from the mail becomes markup
    rows = re.findall(r"<tr><td.*?</tr>", page)
    assert len(rows) == 2
    assert ">Second message</a>" in rows[0]  # newest first (ties broken by key, which grows)
    assert "sales@example.com" in rows[0] and "anna@example.org" in rows[0]
    assert "&lt;script&gt;alert(&quot;subject&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;</a>" in rows[1]
    assert "&lt;img src=x onerror=alert(1)&gt;" in rows[1]
    assert re.search(r'<td class="num">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d</td>', rows[0])  # time with its zone
    assert re.search(r'<td class="num">[\d,]+</td></tr>$', rows[0])  # size in bytes
    assert "2 message(s) in" in page


def test_message_page_shows_parts_headers_attachments_and_source(capture):
    server, web = capture
    deliver(server, hostile_message())
    [key] = message_ids(get(web.url)[2].decode())

    status, headers, body = get(f"{web.url}m/{key}")
    page = body.decode()
    assert status == 200
    assert headers["Content-Security-Policy"] == PAGE_CSP
    assert "<script>" not in page
    assert f'<iframe sandbox="" src="/m/{key}/html" title="HTML part"></iframe>' in page
    assert "<pre>Plain &lt;text&gt; &amp; more\n</pre>" in page
    assert "<tr><th>X-Custom</th><td>&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;</td></tr>" in page
    assert f'<a href="/m/{key}/att/0" download>invoice 42.pdf</a>' in page
    assert f'<a href="/m/{key}/raw">raw source</a>' in page

    status, headers, body = get(f"{web.url}m/{key}/html")
    assert status == 200
    assert headers["Content-Security-Policy"] == HTML_PART_CSP
    assert headers["Content-Security-Policy"].startswith(
        "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'"
    )
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b"<p id='greeting' style='color: rgb(0, 128, 0)'>Hello <b>HTML</b></p>" in body

    status, headers, body = get(f"{web.url}m/{key}/att/0")
    assert (status, body) == (200, b"%PDF-1.4 invoice")
    assert headers["Content-Type"] == "application/octet-stream"
    assert (
        headers["Content-Disposition"] == "attachment; filename=\"invoice 42.pdf\"; filename*=UTF-8''invoice%2042.pdf"
    )

    status, headers, body = get(f"{web.url}m/{key}/raw")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert body.startswith(b"Return-Path: <evil@example.com>\r\nX-Original-To: customer@example.org\r\n")
    assert b"Subject: " in body


def test_attachment_name_cannot_inject_a_header(capture):
    server, web = capture
    raw = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nx\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''a%0D%0ASet-Cookie%3A%20x%3D1.txt\r\n\r\ndata\r\n--B--\r\n"
    )
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        client.sendmail("a@example.com", ["b@example.com"], raw)
    [key] = message_ids(get(web.url)[2].decode())
    status, headers, _ = get(f"{web.url}m/{key}/att/0")
    assert status == 200
    assert "Set-Cookie" not in headers
    assert headers["Content-Disposition"].startswith('attachment; filename="a')


@pytest.mark.parametrize(
    "path",
    ["m/no-such-key", "m/no-such-key/html", "nothing-here", "m/KEY/att/1", "m/KEY/html", "m/KEY/other", "m/..%2Fnew"],
)
def test_unknown_paths_are_404(capture, path):
    server, web = capture
    text_only = EmailMessage()
    text_only["From"] = "a@example.com"
    text_only["To"] = "b@example.com"
    text_only["Subject"] = "text only"
    text_only.set_content("no html, no attachment\n")
    deliver(server, text_only)
    [key] = message_ids(get(web.url)[2].decode())
    status, headers, body = get(web.url + path.replace("KEY", key))
    assert status == 404
    assert headers["Content-Security-Policy"] == PAGE_CSP
    assert b"<h1>Not found</h1>" in body


def test_message_without_html_part_says_so(capture):
    server, web = capture
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.com"
    msg["Subject"] = "text only"
    msg.set_content("just text\n")
    deliver(server, msg)
    [key] = message_ids(get(web.url)[2].decode())
    page = get(f"{web.url}m/{key}")[2].decode()
    assert "This message has no HTML part." in page
    assert "<iframe" not in page


def test_other_host_names_are_refused_on_loopback(capture):
    """A page the developer visits cannot read the captured mail by pointing its own name at 127.0.0.1."""
    server, web = capture
    deliver(server, hostile_message())
    status, _, body = get(web.url, Host=f"attacker.example:{web.port}")
    assert status == 421
    assert b"Captured mail" not in body
    assert get(web.url, Host=f"localhost:{web.port}")[0] == 200


def test_web_port_in_use_is_a_usage_error(tmp_path):
    with WebView(tmp_path, port=0) as busy:
        other = WebView(tmp_path, port=busy.port)
        with pytest.raises(UsageError) as info:
            other.start()
    assert str(info.value) == f"127.0.0.1:{busy.port} is already in use: pick another --web port"


# ---------------------------------------------------------------- the real CLI and a real browser


class _DevServer:
    """``mailops dev-server --web`` as a real process; its stderr lines arrive on a queue."""

    def __init__(self, *args: str) -> None:
        self.smtp_port = free_port()
        self.web_port = free_port()
        self.proc = popen_mailops("dev-server", "--port", str(self.smtp_port), "--web", str(self.web_port), *args)
        self.lines: queue.Queue[str] = queue.Queue()
        self.received: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.received), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, into: queue.Queue[str]) -> None:
        for line in stream:
            into.put(line)

    def line(self) -> str:
        try:
            return self.lines.get(timeout=30)
        except queue.Empty:
            raise AssertionError(f"dev-server printed nothing (exit {self.proc.poll()})") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def test_dev_server_web_prints_its_url_and_serves_mail_sent_by_mailops(workspace: Workspace, tmp_path):
    dev = _DevServer()
    try:
        assert dev.line() == (
            f"capturing mail on 127.0.0.1:{dev.smtp_port} storing in a temporary Maildir (removed when it stops); "
            "point a sender at it with security: none and auth: false\n"
        )
        url = f"http://127.0.0.1:{dev.web_port}/"
        assert dev.line() == f"web view of the captured mail: {url}\n"
        send_renewal(workspace, dev.smtp_port)
        dev.received.get(timeout=30)
        page = get(url)[2].decode()
        assert ">Your renewal, Anna</a>" in page
        assert "anna@example.org" in page
    finally:
        assert dev.stop() == 0
    assert dev.line() == "stopped after capturing 1 message(s)\n"


def test_dev_server_web_port_in_use_is_one_line_exit_2(tmp_path):
    with WebView(tmp_path, port=0) as busy:
        result = run_mailops("dev-server", "--port", str(free_port()), "--web", str(busy.port), timeout=30)
    assert result.exit_code == 2
    assert (
        result.stderr.splitlines()[-1]
        == f"mailops: error: 127.0.0.1:{busy.port} is already in use: pick another --web port"
    )
    assert "Traceback" not in result.stderr


def send_renewal(workspace: Workspace, smtp_port: int) -> None:
    """``mailops send`` of an HTML template to the dev-server, as a real process."""
    workspace.write_config(
        {
            "dev": {
                "email": "sales@example.com",
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "auth": False,
            }
        },
        routes={"default": "dev"},
    )
    workspace.template(
        "renewal",
        "Your renewal, {{ name }}",
        "Hello {{ name }}, your plan renews soon.\n",
        html="<html><body><h1 id='title' style='color: rgb(200, 0, 0)'>Renewal for {{ name }}</h1>"
        "<p id='body'>Your plan <b>renews</b> soon.</p></body></html>",
    )
    result = run_mailops(
        "send",
        "--to",
        "Anna <anna@example.org>",
        "--template",
        "renewal",
        "--var",
        "name=Anna",
        env={"MAILOPS_CONFIG": str(workspace.config_path)},
    )
    assert result.exit_code == 0, result.output


def chromium() -> str:
    """The system chromium; skipped when missing, a failure under CI (CI installs it: .ci/run)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium is not installed (apt-get install --no-install-recommends chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run under CI: {reason}; .ci/run installs it", pytrace=False)
        pytest.skip(reason)
    return found


def dump_dom(browser: str, url: str, profile: Path) -> str:
    """The DOM of ``url`` after load, in headless chromium with a throw-away profile and no background traffic."""
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-default-apps",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _RemoteContent(BaseHTTPRequestHandler):
    """Stands in for a tracking server on the internet: records every request it gets."""

    hits: list[str] = []  # noqa: RUF012 - one list per test, reset by the fixture

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def remote_server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    _RemoteContent.hits = hits
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RemoteContent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/track.png", hits
    finally:
        server.shutdown()
        server.server_close()


def test_in_a_real_browser_sent_mail_is_listed_and_its_html_renders_without_script_or_remote_content(
    workspace: Workspace, tmp_path, remote_server
):
    browser = chromium()
    remote, hits = remote_server
    profile = tmp_path / "chromium-profile"
    dev = _DevServer()
    try:
        dev.line()
        dev.line()
        send_renewal(workspace, dev.smtp_port)
        dev.received.get(timeout=30)
        with smtplib.SMTP("127.0.0.1", dev.smtp_port, timeout=5) as client:
            client.send_message(hostile_message(remote))
        dev.received.get(timeout=30)
        base = f"http://127.0.0.1:{dev.web_port}"

        listing = dump_dom(browser, base + "/", profile)
        assert ">Your renewal, Anna</a>" in listing
        assert '&lt;script&gt;alert("subject")&lt;/script&gt;' in listing  # shown as text, not run
        renewal_key, hostile_key = message_ids(listing)[1], message_ids(listing)[0]

        page = dump_dom(browser, f"{base}/m/{renewal_key}", profile)
        assert f'<iframe sandbox="" src="/m/{renewal_key}/html" title="HTML part"></iframe>' in page
        assert "Hello Anna, your plan renews soon." in page

        rendered = dump_dom(browser, f"{base}/m/{renewal_key}/html", profile)
        assert '<h1 id="title" style="color: rgb(200, 0, 0)">Renewal for Anna</h1>' in rendered
        assert '<p id="body">Your plan <b>renews</b> soon.</p>' in rendered

        dump_dom(browser, f"{base}/m/{hostile_key}", profile)  # the page with its iframe
        hostile = dump_dom(browser, f"{base}/m/{hostile_key}/html", profile)
        assert "Hello <b>HTML</b>" in hostile
        assert "<body>" in hostile and 'data-script-ran="yes"' not in hostile  # the script did not run
    finally:
        assert dev.stop() == 0
    assert hits == []  # neither the page with its iframe nor the part itself fetched the remote image or style
