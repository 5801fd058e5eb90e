"""Keyring backends for tests: real ``KeyringBackend`` subclasses, never the machine's own keyring.

``FileKeyring`` keeps entries in the JSON file named by ``MAILOPS_TEST_KEYRING_FILE``,
so a ``mailops`` subprocess started with
``PYTHON_KEYRING_BACKEND=tests.keyring_backend.FileKeyring`` (and the repo root on
PYTHONPATH) sees what the test stored in-process, and the reverse.

The other classes provoke what a headless or broken machine does:
``FailingKeyring`` (keyring's own fail backend, priority 0), ``LowPriorityKeyring``
(a "not recommended" backend such as keyrings.alt's plaintext file, priority 0.5),
``ReadOnlyKeyring`` (reads work, storing fails),
``HangingKeyring`` (a locked Secret Service waiting for a prompt) and
``BrokenKeyring`` (a backend raising keyring errors).

keyring registers every subclass for auto-detection; each ``priority`` raises
(making the class "not viable") unless ``MAILOPS_TEST_KEYRING_FILE`` is set, so
importing this module can never change which backend a normal run picks.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import ClassVar

from keyring.backend import KeyringBackend
from keyring.backends import fail
from keyring.compat import properties
from keyring.errors import KeyringLocked, PasswordDeleteError, PasswordSetError

FILE_ENV = "MAILOPS_TEST_KEYRING_FILE"


def _require_test_env() -> Path:
    path = os.environ.get(FILE_ENV)
    if not path:
        raise RuntimeError(f"test keyring backends work only when {FILE_ENV} is set (inside the mailops tests)")
    return Path(path)


def read_entries(path: Path) -> dict[str, dict[str, str]]:
    """All entries of a FileKeyring file: ``{service: {username: password}}`` (empty if no file yet)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def write_entry(path: Path, service: str, username: str, password: str | None) -> None:
    """Set (or with ``None`` remove) one entry; the file is replaced atomically so a reader never sees half of it."""
    path = Path(path)
    entries = read_entries(path)
    if password is None:
        entries.get(service, {}).pop(username, None)
    else:
        entries.setdefault(service, {})[username] = password
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(entries, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


class FileKeyring(KeyringBackend):
    """A recommended-priority backend storing entries in the JSON file named by MAILOPS_TEST_KEYRING_FILE."""

    @properties.classproperty
    def priority(cls) -> float:
        """1: a recommended backend, as the real Secret Service or macOS Keychain are."""
        _require_test_env()
        return 1

    def get_password(self, service: str, username: str) -> str | None:
        """The stored password, or None."""
        return read_entries(_require_test_env()).get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        """Store or replace an entry."""
        write_entry(_require_test_env(), service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        """Remove an entry; PasswordDeleteError when there is none (as real backends do)."""
        path = _require_test_env()
        if read_entries(path).get(service, {}).get(username) is None:
            raise PasswordDeleteError("Password not found")
        write_entry(path, service, username, None)


class ReadOnlyKeyring(FileKeyring):
    """Same storage, but storing fails, as a Secret Service collection locked while a run goes on."""

    def set_password(self, service: str, username: str, password: str) -> None:
        """Refuses (without echoing the value)."""
        raise PasswordSetError("the collection is locked")


class LowPriorityKeyring(FileKeyring):
    """Same storage with priority 0.5, like keyrings.alt's PlaintextKeyring ("not recommended")."""

    @properties.classproperty
    def priority(cls) -> float:
        """Below 1: keyring's own threshold for "recommended"."""
        _require_test_env()
        return 0.5


class FailingKeyring(fail.Keyring):
    """keyring's fail backend (priority 0, raises NoKeyringError), as picked on a headless machine."""

    @properties.classproperty
    def priority(cls) -> float:
        """0, like keyring.backends.fail.Keyring."""
        _require_test_env()
        return 0


class HangingKeyring(KeyringBackend):
    """Every call blocks, like a locked Secret Service waiting for an unlock prompt nobody answers.

    A call blocks until ``release()`` or at most ``hang_seconds``, so no test thread
    outlives the test for long; the isolated-home fixture releases every instance.
    """

    instances: ClassVar[list[HangingKeyring]] = []

    def __init__(self, hang_seconds: float = 10.0) -> None:
        super().__init__()
        self.hang_seconds = hang_seconds
        self.released = threading.Event()
        self.calls = 0
        HangingKeyring.instances.append(self)

    @properties.classproperty
    def priority(cls) -> float:
        """A recommended priority: the backend looks fine until it is used."""
        _require_test_env()
        return 5

    def _hang(self) -> None:
        self.calls += 1
        self.released.wait(self.hang_seconds)

    def release(self) -> None:
        """Let blocked calls return."""
        self.released.set()

    @classmethod
    def release_all(cls) -> None:
        """Release every instance created so far (test teardown)."""
        for instance in cls.instances:
            instance.release()
        cls.instances.clear()

    def get_password(self, service: str, username: str) -> str | None:
        """Blocks, then finds nothing."""
        self._hang()
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        """Blocks, then stores nothing."""
        self._hang()

    def delete_password(self, service: str, username: str) -> None:
        """Blocks, then deletes nothing."""
        self._hang()


class BrokenKeyring(KeyringBackend):
    """A recommended backend whose calls fail: reading says the keyring is locked, storing echoes the password.

    The echo imitates a careless backend; mailops must still never show the password.
    """

    @properties.classproperty
    def priority(cls) -> float:
        """A recommended priority: the failure shows only on use."""
        _require_test_env()
        return 5

    def get_password(self, service: str, username: str) -> str | None:
        """Fails as a Secret Service whose unlock prompt was dismissed."""
        raise KeyringLocked("Failed to unlock the collection!")

    def set_password(self, service: str, username: str, password: str) -> None:
        """Fails with a message that (carelessly) contains the password."""
        raise PasswordSetError(f"cannot store {password!r} for {username}")

    def delete_password(self, service: str, username: str) -> None:
        """Fails as when locked."""
        raise KeyringLocked("Failed to unlock the collection!")
