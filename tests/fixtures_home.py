"""Isolated home: no test touches the real config, data or keyring.

The autouse fixture ``isolated_home`` gives every test its own MAILOPS_HOME,
current directory and keyring file, clears the operator's MAILOPS_* variables,
and installs ``tests.keyring_backend.FileKeyring`` both in-process
(``keyring.set_keyring``) and for subprocesses (``PYTHON_KEYRING_BACKEND`` with
the repo root on PYTHONPATH), so a ``mailops`` process started by a test shares
the test's keyring. monkeypatch restores everything afterwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keyring
import keyring.core
import pytest

from tests.keyring_backend import FILE_ENV, FileKeyring, HangingKeyring, read_entries, write_entry

REPO_ROOT = Path(__file__).resolve().parent.parent
KEYRING_SERVICE = "mailops"  # mailops.secrets.SERVICE; repeated so the fixture does not import the code under test
TEST_BACKEND = "tests.keyring_backend.FileKeyring"


@dataclass(frozen=True)
class IsolatedHome:
    """The folders and files one test runs in."""

    home: Path  # MAILOPS_HOME
    cwd: Path  # the current directory during the test (empty, separate from tmp_path)
    keyring_file: Path  # the FileKeyring JSON file (MAILOPS_TEST_KEYRING_FILE)

    @property
    def config_dir(self) -> Path:
        """Where mailops looks last for senders.yaml (``MAILOPS_HOME/config``)."""
        return self.home / "config"

    @property
    def data_dir(self) -> Path:
        """Where the default SQLite database goes (``MAILOPS_HOME/data``)."""
        return self.home / "data"

    def passwords(self) -> dict[str, str]:
        """Every mailops password in the test keyring, by sender key."""
        return dict(read_entries(self.keyring_file).get(KEYRING_SERVICE, {}))


@pytest.fixture(autouse=True)
def isolated_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedHome]:
    """Run the test in a private home, folder and keyring (autouse: every test gets it)."""
    root = tmp_path_factory.mktemp("isolated")
    env = IsolatedHome(home=root / "home", cwd=root / "cwd", keyring_file=root / "keyring.json")
    env.home.mkdir()
    env.cwd.mkdir()

    # The operator's own settings must not leak in (MAILOPS_CONFIG, MAILOPS_DATABASE_URL,
    # MAILOPS_PASSWORD_*, MAILOPS_ALLOW_INSECURE_KEYRING, timeouts...). MAILOPS_TEST_*
    # variables configure the test run itself (e.g. a PostgreSQL URL), so they stay.
    for name in list(os.environ):
        if name.startswith("MAILOPS_") and not name.startswith("MAILOPS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAILOPS_HOME", str(env.home))

    # Keyring: the test backend for this process and for every subprocess.
    monkeypatch.setenv(FILE_ENV, str(env.keyring_file))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", TEST_BACKEND)
    pythonpath = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), *([pythonpath] if pythonpath else [])]))
    # Belt and braces: without a session bus no code path can reach the real Secret Service,
    # and keyring's own config file (keyringrc.cfg) is looked up in an empty folder.
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    for xdg in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(xdg, str(root / "xdg" / xdg.lower()))
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)  # remembered and restored by monkeypatch
    keyring.set_keyring(FileKeyring())

    # Stable, plain output for assertions on CLI text.
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    monkeypatch.chdir(env.cwd)
    yield env

    # A test that used HangingKeyring leaves a blocked thread in mailops.secrets: free it now.
    HangingKeyring.release_all()
    for thread in threading.enumerate():
        if thread.name == "mailops-keyring":
            thread.join(timeout=2)


@pytest.fixture
def keyring_file(isolated_home: IsolatedHome) -> Path:
    """The JSON file behind this test's keyring (shared with subprocesses)."""
    return isolated_home.keyring_file


@pytest.fixture
def seed_password(isolated_home: IsolatedHome) -> Callable[[str, str], None]:
    """A function ``seed(sender_key, password)`` that stores a password in the test keyring."""

    def seed(sender_key: str, password: str) -> None:
        write_entry(isolated_home.keyring_file, KEYRING_SERVICE, sender_key, password)

    return seed
