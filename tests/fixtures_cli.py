"""Running the real CLI (in-process or as a process) against a workspace of config, templates and data.

``workspace``  a folder with helpers to write senders.yaml (senders may point at
               a test SMTP server), templates and data files; it sets
               MAILOPS_CONFIG so every command finds the config.
``cli``        ``cli("send", "--to", ...) -> CliResult`` runs ``mailops.cli.main``
               in this process (fast); ``run_mailops`` runs ``python -m mailops``
               as a real process (for concurrency and crash tests).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.keyring_backend import write_entry
from tests.smtp_servers import DEFAULT_PASSWORD, DEFAULT_USER, LocalSmtpServer

_SECURITY_FOR_MODE = {"starttls": "starttls", "ssl": "ssl", "plain": "none"}


@dataclass
class CliResult:
    """Exit code and output of one command."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr


class Workspace:
    """A folder holding senders.yaml, templates/, data files and the SQLite database (or a database URL)."""

    def __init__(self, root: Path, keyring_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.keyring_file = keyring_file
        self.config_path = root / "senders.yaml"
        self.db_path = root / "mailops.db"
        self.database_url: str | None = None  # set by use_database(); None: the SQLite file db_path
        self._monkeypatch = monkeypatch

    def use_database(self, url: str) -> None:
        """Point the workspace (senders.yaml's ``database:`` and query()) at ``url``, e.g. a PostgreSQL database."""
        self.database_url = url

    def sender(
        self,
        server: LocalSmtpServer | None = None,
        *,
        email: str = DEFAULT_USER,
        password: str | None = DEFAULT_PASSWORD,
        **keys: Any,
    ) -> dict[str, Any]:
        """A sender mapping for senders.yaml aimed at ``server``; ``password`` goes to the test keyring, not YAML."""
        spec: dict[str, Any] = {"email": email, "host": "127.0.0.1", "timeout": 5}
        if server is not None:
            spec["port"] = server.port
            spec["security"] = _SECURITY_FOR_MODE[server.mode]
            if server.mode != "plain":
                spec["ca_file"] = str(server.ca_file)
            if not server.auth:
                spec["auth"] = False
        spec.update(keys)
        spec["__password"] = password
        return spec

    def write_config(
        self,
        senders: dict[str, dict[str, Any]],
        routes: dict[str, Any] | None = None,
        groups: dict[str, Any] | None = None,
        **top: Any,
    ) -> Path:
        """Write senders.yaml (database and templates inside the workspace) and seed passwords."""
        clean = {}
        for key, spec in senders.items():
            spec = dict(spec)
            password = spec.pop("__password", None)
            if password is not None and spec.get("auth", True):
                write_entry(self.keyring_file, "mailops", key, password)
            clean[key] = spec
        data: dict[str, Any] = {
            "timezone": "UTC",
            "database": self.database_url or str(self.db_path),
            "templates": "templates",
        }
        data.update(top)
        data["senders"] = clean
        if routes is not None:
            data["routes"] = routes
        if groups is not None:
            data["groups"] = groups
        self.config_path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        self._monkeypatch.setenv("MAILOPS_CONFIG", str(self.config_path))
        return self.config_path

    def template(self, name: str, subject: str, body: str, html: str | None = None) -> Path:
        """Write templates/NAME/{subject.txt, body.txt[, body.html]}."""
        folder = self.root / "templates" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "subject.txt").write_text(subject, encoding="utf-8")
        (folder / "body.txt").write_text(body, encoding="utf-8")
        if html is not None:
            (folder / "body.html").write_text(html, encoding="utf-8")
        return folder

    def csv(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Write a CSV data file with a header row."""
        path = self.root / name
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the workspace database directly (what a test checks behind the CLI's back); ``?`` placeholders."""
        if self.database_url is None:
            with sqlite3.connect(self.db_path, timeout=30) as conn:
                return conn.execute(sql, params).fetchall()
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        # Any backend through SQLAlchemy: ``?`` becomes :p0, :p1... (no pooled connection outlives the call).
        parts = sql.split("?")
        named = parts[0] + "".join(f":p{i}{part}" for i, part in enumerate(parts[1:]))
        url = sa.engine.make_url(self.database_url)
        if url.drivername == "postgresql":  # mailops reads plain postgresql:// as psycopg 3; so do we
            url = url.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(named), {f"p{i}": v for i, v in enumerate(params)})]
        finally:
            engine.dispose()

    def states(self) -> dict[str, int]:
        """Messages per outbox state."""
        return dict(self.query("SELECT state, COUNT(*) FROM messages GROUP BY state"))


@pytest.fixture
def workspace(tmp_path: Path, keyring_file: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An empty workspace; call ``write_config`` to make it usable."""
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root, keyring_file, monkeypatch)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``mailops ARGS`` in-process and capture exit code, stdout and stderr."""
    from mailops.cli import main

    def run(*args: str, input: str | None = None) -> CliResult:
        capsys.readouterr()
        if input is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


#: Set by the ``lease_floor`` fixture: processes started below lower mailops' lease floor to it as well.
_lease_floor: float | None = None


def mailops_command(*args: Any) -> list[str]:
    """The command line of ``python -m mailops ARGS`` (with the test's lowered lease floor, if any)."""
    if _lease_floor is None:
        return [sys.executable, "-m", "mailops", *[str(a) for a in args]]
    code = (
        "import runpy, sys, mailops.config as c; c.MIN_LEASE = float(sys.argv.pop(1)); "
        "runpy.run_module('mailops', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code, repr(_lease_floor), *[str(a) for a in args]]


@pytest.fixture
def lease_floor(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """``lease_floor(seconds)``: lower mailops' lease floor in this process and in the processes a test starts.

    For tests that need a claim to expire (or be renewed) within seconds; the
    shipped floor keeps operators from leases a routine stall could outlast.
    """

    def lower(seconds: float) -> None:
        monkeypatch.setattr("mailops.config.MIN_LEASE", seconds)
        monkeypatch.setattr(sys.modules[__name__], "_lease_floor", seconds)

    return lower


def run_mailops(*args: str, timeout: float = 120, env: dict[str, str] | None = None, **kwargs: Any) -> CliResult:
    """Run ``python -m mailops ARGS`` as a separate process (inherits the isolated environment)."""
    proc = subprocess.run(
        mailops_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


#: Address space for run_bounded: ample for mailops (threads reserve stacks and arenas), far below a runaway.
BOUNDED_MEMORY = 2 * 1024**3


def run_bounded(
    *args: str, timeout: float = 60, memory: int = BOUNDED_MEMORY, env: dict[str, str] | None = None
) -> CliResult:
    """``run_mailops`` under a time limit and an address-space limit (RLIMIT_AS), for hostile input.

    A regression (a render that never ends, a read of /dev/zero) then fails the
    test with TimeoutExpired or a MemoryError instead of hanging the suite or
    swapping the machine.
    """
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return run_mailops(*args, timeout=timeout, env=env, preexec_fn=limit)


def popen_mailops(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``python -m mailops ARGS`` without waiting (for kill and overlap tests)."""
    return subprocess.Popen(
        mailops_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        **kwargs,
    )


def epoch(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time with offset, as every ``--json`` writes times."""
    from datetime import datetime

    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None, f"{text!r}: a time in --json names its offset"
    return parsed.timestamp()


def iso(ts: float, tz: str = "UTC") -> str:
    """``ts`` as ``--json`` writes a time: ISO 8601 to the millisecond with its offset, in zone ``tz``."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat(timespec="milliseconds")


def log_json(cli: Callable[..., CliResult], *args: str) -> list[dict[str, Any]]:
    """``mailops log --json`` parsed."""
    result = cli("log", "--json", "--limit", "100000", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def server(smtp_server: Callable[..., LocalSmtpServer]) -> Iterator[LocalSmtpServer]:
    """One STARTTLS + AUTH server accepting sales@example.com / its default password."""
    yield smtp_server()
