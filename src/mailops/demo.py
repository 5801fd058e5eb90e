"""``mailops demo``: a real mail merge through a route to the local capture server, then the log.

Runs the same commands an operator would type (as subprocesses), against a
throw-away config whose senders point at mailops' own capture server on
127.0.0.1, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .devserver import CapturedMessage, CaptureServer
from .scaffold import SAMPLE_DATA, write_template


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(port: int) -> str:
    return f"""\
# Demo config: both senders deliver to mailops' capture server on 127.0.0.1:{port}.
timezone: UTC
database: demo.db
templates: templates
defaults:
  host: 127.0.0.1
  port: {port}
  security: none      # loopback capture server: no TLS
  auth: false         # and no login, so no password is needed
senders:
  sales:
    email: sales@example.com
    name: Example Sales
    reply_to: renewals@example.com
    daily_limit: 100
    priority: 1
  sales-backup:
    email: sales-backup@example.com
    name: Example Sales
    daily_limit: 100
    priority: 2
routes:
  renewal: [sales, sales-backup]
  default: sales
"""


def run_demo(directory: Path, echo: Callable[[str], None] = print) -> int:
    """Write the demo files, start the capture server, send the merge, show mail and log; returns an exit code."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = directory / "senders.yaml"
    config.write_text(_config(port), encoding="utf-8")
    write_template(directory / "templates", "renewal")
    data = directory / "customers.csv"
    data.write_text(SAMPLE_DATA, encoding="utf-8")
    received: list[str] = []

    def on_message(msg: CapturedMessage) -> None:
        received.append(f"  captured: {msg.mail_from} -> {', '.join(msg.rcpt_tos)}: {msg.subject}")

    base = [sys.executable, "-m", "mailops", "--config", str(config)]
    # the subprocesses' output is captured, so tell Rich how wide the real terminal is
    env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS") or str(shutil.get_terminal_size((140, 40)).columns)}
    steps = [
        ["send", "--route", "renewal", "--template", "renewal", "--data", str(data)],
        ["log", "--limit", "10"],
        ["stats"],
    ]
    echo(f"demo files in {directory}; capture server on 127.0.0.1:{port} (Maildir {directory / 'maildir'})")
    code = 0
    with CaptureServer(host="127.0.0.1", port=port, maildir=directory / "maildir", on_message=on_message):
        for index, args in enumerate(steps):
            echo(f"\n$ mailops --config {config.name} {' '.join(Path(a).name if '/' in a else a for a in args)}")
            proc = subprocess.run(base + args, capture_output=True, text=True, timeout=120, cwd=directory, env=env)
            echo((proc.stdout + proc.stderr).rstrip())
            if index == 0:
                echo("\nthe capture server received:")
                for line in received:
                    echo(line)
            if proc.returncode != 0:
                code = proc.returncode
    return code
