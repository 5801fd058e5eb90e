"""What SpamAssassin's local rules say about mailops messages as a real server received them.

Needs ``spamassassin`` on PATH (Debian/Ubuntu: ``apt-get install spamassassin``, rules included); skipped
with that reason otherwise. ``-L`` keeps it to local tests (no DNS or network lookups), ``-t`` prints the
report. Each message is what aiosmtpd received from ``mailops send`` or ``deliver``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from mailops.cli import runtime

SPAMASSASSIN = shutil.which("spamassassin")
pytestmark = pytest.mark.skipif(
    SPAMASSASSIN is None, reason="spamassassin is not installed (apt-get install spamassassin)"
)

#: a line of the report's "Content analysis details" table: points, rule name
_RULE_RE = re.compile(r"^\s*(-?\d+\.\d+)\s+([A-Z0-9_]+)\s", re.M)

_HTML = (
    "<html><body><p>Dear {{ name }},</p><p>Your subscription <b>{{ plan }}</b> renews on {{ due }}. "
    'You can review or change it on <a href="https://example.com/account">your account page</a>.</p>'
    "<p>Kind regards,<br>Example Sales</p></body></html>"
)
_TEXT = (
    "Dear {{ name }},\n\nYour subscription {{ plan }} renews on {{ due }}. You can review or change it on\n"
    "your account page: https://example.com/account\n\nKind regards,\nExample Sales\n"
)


def _score(data: bytes) -> list[str]:
    """The rules that add points to ``data`` (as "RULE (+pts)"); [] for a message that scores 0 or less.

    A Received header stamped now is put in front, as the receiving server would: SpamAssassin judges
    the Date header against it (DATE_IN_PAST_*), and without one it skips those rules.
    """
    assert SPAMASSASSIN is not None
    received = f"Received: from localhost (localhost [127.0.0.1])\r\n\tby mx.example.org with ESMTPS id 4AbC;\r\n\t{format_datetime(datetime.now(UTC))}\r\n"
    done = subprocess.run(
        [SPAMASSASSIN, "-L", "-t"], input=received.encode("ascii") + data, capture_output=True, timeout=120, check=False
    )
    report = done.stdout.decode("utf-8", "replace")
    assert "Content analysis details" in report, report[-2000:] + done.stderr.decode("utf-8", "replace")[-2000:]
    details = report.split("Content analysis details", 1)[1]
    return [f"{rule} (+{points})" for points, rule in _RULE_RE.findall(details) if float(points) > 0]


@pytest.fixture
def srv(smtp_server):
    return smtp_server()


def _templates(workspace):
    workspace.template("text", "Your renewal on {{ due }}", _TEXT)
    workspace.template("both", "Your renewal on {{ due }}", _TEXT, html=_HTML)
    html_only = workspace.root / "templates" / "html"
    html_only.mkdir()
    (html_only / "subject.txt").write_text("Your renewal on {{ due }}", encoding="utf-8")
    (html_only / "body.html").write_text(_HTML, encoding="utf-8")
    workspace.template(
        "umlaut",
        "Ihre Verlängerung am {{ due }}",
        "Sehr geehrte Frau {{ name }},\n\nIhr Abonnement {{ plan }} verlängert sich am {{ due }}.\n"
        "Änderungen jederzeit unter https://example.com/konto\n\nMit freundlichen Grüßen\nExample Sales\n",
    )


@pytest.mark.parametrize(
    ("template", "extra"),
    [("text", []), ("both", []), ("html", []), ("text", ["--attach", "invoice.pdf"]), ("umlaut", [])],
    ids=["text", "text+html", "html-only", "attachment", "non-ascii"],
)
def test_messages_score_zero(workspace, srv, cli, template, extra):
    workspace.write_config({"sales": workspace.sender(srv, name="Example Sales")}, routes={"default": "sales"})
    _templates(workspace)
    (workspace.root / "invoice.pdf").write_bytes(b"%PDF-1.4\n% mailops test invoice\n%%EOF\n")
    args = ["--var", "plan=Business", "--var", "due=2026-12-31"]
    result = cli(
        "send",
        "--to",
        "Jane Roe <jane@example.org>",
        "--template",
        template,
        *args,
        *[str(workspace.root / a) if a.endswith(".pdf") else a for a in extra],
    )
    assert result.exit_code == 0, result.output
    [received] = srv.messages
    assert _score(received.data) == []


def test_a_message_delivered_a_day_after_queueing_scores_zero(workspace, srv, cli, monkeypatch):
    workspace.write_config({"sales": workspace.sender(srv, name="Example Sales")}, routes={"default": "sales"})
    _templates(workspace)
    with monkeypatch.context() as patch:
        patch.setattr(runtime, "now", lambda: time.time() - 86400)
        queued = cli(
            "send",
            "--to",
            "Jane Roe <jane@example.org>",
            "--template",
            "both",
            "--var",
            "plan=Business",
            "--var",
            "due=2026-12-31",
            "--queue-only",
        )
    assert queued.exit_code == 0, queued.output
    assert cli("deliver").exit_code == 0
    [received] = srv.messages
    assert _score(received.data) == []  # before Date was stamped at hand-over: DATE_IN_PAST_24_48 (+1.1)
