"""The browser view of ``mailops dev-server --web PORT``: captured mail read from the Maildir.

A page lists the captured messages (newest first); a message page shows its
headers, text part, attachments (downloadable), raw source and its HTML part
in an iframe. Captured mail is hostile input (anyone who can reach the SMTP
port may send anything), so every value is escaped with ``html.escape``, the
HTML part is served from its own URL with a Content-Security-Policy that
loads nothing remote and runs no script, and the iframe is sandboxed.

It reads the Maildir on every request, so it also shows mail captured by an
earlier run into the same ``--maildir``. Only the standard library's
http.server is used: this is a developer tool, not a web application.
"""

from __future__ import annotations

import errno
import html
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

from .errors import UsageError

log = logging.getLogger(__name__)

#: The HTML part of a message: no script, no remote content (images only inline as data: or cid:).
HTML_PART_CSP = "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; sandbox"
#: The viewer's own pages: their inline style, frames from this server, nothing else.
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; form-action 'none'; base-uri 'none'"
#: Raw source and attachments: never rendered as a page of this origin.
DOWNLOAD_CSP = "default-src 'none'; sandbox"

#: The list page shows at most this many messages; it says how many older ones it leaves out.
LIST_LIMIT = 200

_PARSER = BytesParser(policy=policy.default)
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
pre { background: #f6f6f6; padding: .8em; white-space: pre-wrap; overflow-wrap: anywhere; }
iframe { width: 100%; height: 32em; border: 1px solid #ccc; background: #fff; }
.muted { color: #777; }
"""


@dataclass(frozen=True)
class StoredMail:
    """One file of the Maildir: its id (the Maildir key), path, delivery time and size."""

    id: str
    path: Path
    received: float  # epoch seconds (the file's modification time: when it was delivered)
    size: int


class MaildirView:
    """Read-only access to a Maildir's messages by key (never moves or flags them)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def messages(self) -> list[StoredMail]:
        """Every message in new/ and cur/, newest first."""
        found: list[StoredMail] = []
        for sub in ("new", "cur"):
            try:
                entries = list(os.scandir(self.root / sub))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # removed by someone else between listing and stat
                    continue
                # In cur/, flags follow ":2,"; the key is the part before the colon.
                key = entry.name.split(":", 1)[0]
                found.append(StoredMail(key, Path(entry.path), stat.st_mtime, stat.st_size))
        found.sort(key=lambda m: (m.received, m.id), reverse=True)
        return found

    def find(self, key: str) -> StoredMail | None:
        """The message with this key, or None (the key is compared, never used to build a path)."""
        return next((m for m in self.messages() if m.id == key), None)


def parse(raw: bytes) -> EmailMessage:
    """The message as an EmailMessage (modern policy); a broken message still parses as far as it can."""
    return _PARSER.parsebytes(raw)


def header(msg: EmailMessage, name: str) -> str:
    """A header's decoded value, '' when absent; a header that cannot be decoded is shown as raw text."""
    try:
        value = msg[name]
        return "" if value is None else str(value)
    except Exception:  # noqa: BLE001 - a malformed header from the network must not break the page
        return next((str(v) for n, v in msg.raw_items() if n.lower() == name.lower()), "")


def part_text(part: EmailMessage) -> str:
    """The decoded text of a text part; an unknown charset or bad bytes become replacement characters."""
    try:
        text = str(part.get_content())
    except (LookupError, UnicodeError, KeyError, AssertionError):
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return text.replace("\r\n", "\n")  # the wire's CRLF, as the browser would show a stray CR


def body_part(msg: EmailMessage, kind: str) -> EmailMessage | None:
    """The message's ``html`` or ``plain`` body part, if it has one."""
    try:
        return cast(EmailMessage | None, msg.get_body(preferencelist=(kind,)))
    except Exception:  # noqa: BLE001 - a malformed MIME tree shows as "no such part", not an error page
        return None


def attachments(msg: EmailMessage) -> list[EmailMessage]:
    """The message's attachments in order (their position is their number in URLs)."""
    try:
        return list(msg.iter_attachments())
    except Exception:  # noqa: BLE001 - as body_part
        return []


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(sep=" ", timespec="seconds")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    ).encode()


def render_list(view: MaildirView) -> bytes:
    """The list page: time, from, to, subject and size of each message, newest first."""
    stored = view.messages()
    rows = []
    for mail in stored[:LIST_LIMIT]:
        try:
            msg = parse(mail.path.read_bytes())
        except OSError:  # removed since the listing
            continue
        to = header(msg, "x-original-to") or header(msg, "to")
        rows.append(
            f'<tr><td class="num">{_e(_when(mail.received))}</td><td>{_e(header(msg, "from"))}</td>'
            f"<td>{_e(to)}</td>"
            f'<td><a href="/m/{quote(mail.id, safe="")}">{_e(header(msg, "subject") or "(no subject)")}</a></td>'
            f'<td class="num">{mail.size:,}</td></tr>'
        )
    more = len(stored) - LIST_LIMIT
    note = f'<p class="muted">{more} older message(s) not shown.</p>' if more > 0 else ""
    if not stored:
        table = '<p class="muted">No mail captured yet. Send some to the dev-server and reload.</p>'
    else:
        table = (
            "<table><thead><tr><th>Received</th><th>From</th><th>To</th><th>Subject</th><th>Bytes</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    heading = f'<h1>Captured mail</h1><p class="muted">{len(stored)} message(s) in {_e(view.root)}</p>'
    return _page("Captured mail", heading + table + note)


def render_message(mail: StoredMail, msg: EmailMessage) -> bytes:
    """One message: summary, HTML part (sandboxed iframe), text part, attachments, headers, raw link."""
    base = f"/m/{quote(mail.id, safe='')}"
    subject = header(msg, "subject") or "(no subject)"
    summary = "".join(
        f"<tr><th>{label}</th><td>{_e(value)}</td></tr>"
        for label, value in (
            ("From", header(msg, "from")),
            ("To", header(msg, "to")),
            ("Envelope recipients", header(msg, "x-original-to")),
            ("Subject", subject),
            ("Received", _when(mail.received)),
            ("Size", f"{mail.size:,} bytes"),
        )
    )
    sections = [f'<p><a href="/">&larr; all messages</a></p><h1>{_e(subject)}</h1><table>{summary}</table>']
    if body_part(msg, "html") is not None:
        # sandbox="" (no allow-scripts, no allow-same-origin) plus the part's own CSP header.
        sections.append(f'<h2>HTML</h2><iframe sandbox="" src="{base}/html" title="HTML part"></iframe>')
    else:
        sections.append('<h2>HTML</h2><p class="muted">This message has no HTML part.</p>')
    text = body_part(msg, "plain")
    sections.append(
        f"<h2>Text</h2><pre>{_e(part_text(text))}</pre>"
        if text is not None
        else '<h2>Text</h2><p class="muted">This message has no text part.</p>'
    )
    items = []
    for number, part in enumerate(attachments(msg)):
        name = part.get_filename() or f"attachment-{number + 1}"
        size = len(part.get_payload(decode=True) or b"")
        items.append(
            f'<li><a href="{base}/att/{number}" download>{_e(name)}</a> '
            f'<span class="muted">{_e(part.get_content_type())}, {size:,} bytes</span></li>'
        )
    sections.append(f"<h2>Attachments</h2><ul>{''.join(items)}</ul>" if items else "")
    headers = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in msg.raw_items())
    sections.append(f"<h2>Headers</h2><table>{headers}</table>")
    sections.append(f'<h2>Source</h2><p><a href="{base}/raw">raw source</a></p>')
    return _page(subject, "\n".join(s for s in sections if s))


def _download_name(name: str) -> str:
    """A Content-Disposition value that keeps the name (RFC 6266) and cannot inject a header."""
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", name)[:200] or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name[:200], safe='')}"


class _Handler(BaseHTTPRequestHandler):
    """GET only: /, /m/ID, /m/ID/html, /m/ID/raw, /m/ID/att/N; anything else is 404."""

    server: _WebServer

    def version_string(self) -> str:
        return "mailops-dev-server"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web view: " + format, *args)

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown Host\n", "text/plain; charset=utf-8", DOWNLOAD_CSP)
            return
        path = urlsplit(self.path).path
        view = self.server.view
        if path == "/":
            self._send(HTTPStatus.OK, render_list(view), "text/html; charset=utf-8", PAGE_CSP)
            return
        match = re.fullmatch(r"/m/([^/]+)(?:/(html|raw|att/(\d{1,4})))?", path)
        mail = view.find(unquote(match.group(1))) if match else None
        if match is None or mail is None:
            self._not_found()
            return
        try:
            raw = mail.path.read_bytes()
        except OSError:
            self._not_found()
            return
        what = match.group(2)
        if what == "raw":
            self._send(HTTPStatus.OK, raw, "text/plain; charset=utf-8", DOWNLOAD_CSP)
            return
        msg = parse(raw)
        if what is None:
            self._send(HTTPStatus.OK, render_message(mail, msg), "text/html; charset=utf-8", PAGE_CSP)
        elif what == "html":
            part = body_part(msg, "html")
            if part is None:
                self._not_found()
            else:
                self._send(HTTPStatus.OK, part_text(part).encode(), "text/html; charset=utf-8", HTML_PART_CSP)
        else:
            found = attachments(msg)
            number = int(match.group(3))
            if number >= len(found):
                self._not_found()
                return
            part = found[number]
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            disposition = _download_name(part.get_filename() or f"attachment-{number + 1}")
            self._send(HTTPStatus.OK, data, "application/octet-stream", DOWNLOAD_CSP, disposition)

    def _host_allowed(self) -> bool:
        # On loopback, refuse other Host names: a web page the developer visits could otherwise
        # point its own name at 127.0.0.1 (DNS rebinding) and read the captured mail.
        if not self.server.loopback:
            return True
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in {f"{name}:{port}" for name in _LOOPBACK_NAMES}

    def _not_found(self) -> None:
        self._send(
            HTTPStatus.NOT_FOUND,
            _page("Not found", '<h1>Not found</h1><p><a href="/">all messages</a></p>'),
            "text/html; charset=utf-8",
            PAGE_CSP,
        )

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str, csp: str, disposition: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        if disposition is not None:
            self.send_header("Content-Disposition", disposition)
        self.end_headers()
        self.wfile.write(body)


class _WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], view: MaildirView, loopback: bool) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.view = view
        self.loopback = loopback
        super().__init__(address, _Handler)


class WebView:
    """The HTTP server in a background thread; use as a context manager. Port 0 picks a free port."""

    def __init__(self, maildir: Path, host: str = "127.0.0.1", port: int = 8026) -> None:
        self.view = MaildirView(maildir)
        self.host = host
        self.port = port
        self._server: _WebServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address of the list page."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind and serve in a background thread; UsageError if the address cannot be used."""
        if self._server is not None:
            return
        loopback = self.host in ("127.0.0.1", "::1", "localhost")
        try:
            server = _WebServer((self.host, self.port), self.view, loopback)
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"{where} is already in use: pick another --web port") from None
            raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}; pick another --host or --web") from None
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebView:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
