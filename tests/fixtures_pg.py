"""A throw-away PostgreSQL server for the tests that run against both backends.

``pg_cluster``   (session) initdb + ``pg_ctl start`` in a temporary folder, on a
                 free 127.0.0.1 port with trust authentication, fsync off;
                 stopped and deleted at the end of the session. When the server
                 binaries are missing the PostgreSQL tests are skipped, except
                 under CI (env ``CI`` set), where that is a failure: CI must not
                 pass by skipping them (``.ci/run`` installs the server).
``pg_url``       a fresh, empty database (``CREATE DATABASE t_<random>``) per test.
``database_url`` parametrized over ``sqlite`` and ``postgresql``: the URL a
                 test (or ``Workspace.use_database``) points mailops at.

initdb and postgres refuse to run as root: when the tests run as root (CI
does) the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_USER = "postgres"  # the system account the server runs as when the tests run as root
DB_SUPERUSER = "postgres"  # the database role initdb creates
START_TIMEOUT = 60  # seconds for pg_ctl start/stop -w and initdb


def find_pg_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres (``PG_BIN``, then Debian's layout, then PATH), or None."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    # Debian/Ubuntu keep the server binaries out of PATH, one folder per major version: take the newest.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [
        Path(p)
        for p in sorted(
            versions, key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0, reverse=True
        )
    ]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgCluster:
    """One running PostgreSQL server in a temporary folder."""

    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log(self) -> Path:
        """The server log (shown when start-up fails)."""
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` as the superuser (trust authentication: no password)."""
        return f"postgresql+psycopg://{DB_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # As root, run the server tools as the postgres system user (they refuse to run as root).
        as_user = (
            {"user": SERVER_USER, "group": pwd.getpwnam(SERVER_USER).pw_gid, "extra_groups": []}
            if os.geteuid() == 0
            else {}
        )
        return subprocess.run(  # the caller checks the return code and shows the server log
            [str(self.bin / args[0]), *args[1:]],
            check=False,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 30,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            **as_user,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}\n{log}")

    def start(self) -> None:
        """initdb (trust auth, UTF-8) and start the server on 127.0.0.1:port; waits until it accepts connections."""
        self._check(
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "--auth=trust",
                f"--username={DB_SUPERUSER}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            "initdb",
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                # a throw-away cluster: durability buys nothing and costs seconds per test
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                # six deliver processes, each with a pool per process, plus the test's own connections
                "-c max_connections=300",
                "-c shared_buffers=32MB",
            ]
        )
        self._check(
            self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
            ),
            "pg_ctl start",
        )

    def stop(self) -> None:
        """Stop the server at once (the data is thrown away)."""
        self._run("pg_ctl", "stop", "-w", "-t", str(START_TIMEOUT), "-m", "immediate", "-D", str(self.data))

    def admin(self, sql: str) -> None:
        """Run one statement on the maintenance database in autocommit (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=DB_SUPERUSER, dbname="postgres", autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"t_{secrets.token_hex(6)}"
        self.admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test's database, ending connections the test's processes left open."""
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(
            f"PostgreSQL tests cannot run under CI: {reason}; .ci/run installs the server (apt-get install postgresql)",
            pytrace=False,
        )
    pytest.skip(f"PostgreSQL not available: {reason} (install the postgresql server package, or set PG_BIN)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server for the whole session (started on first use, stopped at the end)."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        _unavailable("initdb/pg_ctl/postgres not found under /usr/lib/postgresql/*/bin, PG_BIN or PATH")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install -e .[test])")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            _unavailable(f"running as root and there is no {SERVER_USER!r} system user to run the server as")
    # Not under pytest's tmp folder: that one is private to root (0700) and the server may run as postgres,
    # which must be able to reach the folder (so /tmp itself as root, whatever TMPDIR says); a short path
    # also keeps the Unix socket's path under its length limit.
    root = Path(tempfile.mkdtemp(prefix="mailops-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    assert pg_bin is not None
    cluster = PgCluster(bin=pg_bin, root=root, port=free_port())
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start the test PostgreSQL server: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    name = pg_cluster.create_database()
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database on each backend: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared' / 'mailops.db'}"
    return request.getfixturevalue("pg_url")
