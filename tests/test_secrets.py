"""mailops.secrets: environment, password_command and keyring, each failure one line without the password.

The keyring is the file-backed test backend installed by tests/fixtures_home.py;
headless and broken machines are imitated by the other classes of
tests/keyring_backend.py. password_command runs real shell commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keyring
import keyring.core
import pytest
from keyring.backends import fail, null

from mailops import envnames, secrets
from mailops.config import Sender
from mailops.errors import MailopsError, SecretError
from tests.keyring_backend import (
    BrokenKeyring,
    FailingKeyring,
    FileKeyring,
    HangingKeyring,
    LowPriorityKeyring,
    read_entries,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="password_command tests use a POSIX shell")

HEADLESS_SALES = "set MAILOPS_PASSWORD_SALES or password_command in senders.yaml (headless machines, cron)"
MISSING_SALES = (
    "no password for sender 'sales': run 'mailops password set sales' "
    "(or set MAILOPS_PASSWORD_SALES / password_command on a headless machine)"
)


def make_sender(key: str = "sales", password_command: str | None = None) -> Sender:
    """A resolved sender as config.py would build it."""
    return Sender(
        key=key,
        email=f"{key}@example.com",
        host="smtp.example.com",
        port=587,
        security="starttls",
        username=f"{key}@example.com",
        password_command=password_command,
    )


def secret_error(func, *args) -> SecretError:
    """Call ``func`` and return the SecretError it must raise."""
    with pytest.raises(SecretError) as info:
        func(*args)
    return info.value


# ---------------------------------------------------------------- keyring round trip


def test_set_get_delete_round_trip(keyring_file: Path) -> None:
    sender = make_sender()
    secrets.set_password("sales", "app pw with spaces ü")

    # service "mailops", username = the sender key: the contract other tools rely on
    assert read_entries(keyring_file) == {"mailops": {"sales": "app pw with spaces ü"}}
    assert secrets.get_password(sender) == "app pw with spaces ü"
    assert secrets.password_source(sender) == "keyring"

    assert secrets.delete_password("sales") is True
    assert read_entries(keyring_file) == {"mailops": {}}
    assert secrets.delete_password("sales") is False
    assert secrets.password_source(sender) == "missing"


def test_set_password_replaces_the_previous_one() -> None:
    secrets.set_password("sales", "old")
    secrets.set_password("sales", "new")
    assert secrets.get_password(make_sender()) == "new"


def test_missing_password_says_how_to_set_it() -> None:
    error = secret_error(secrets.get_password, make_sender())
    assert str(error) == MISSING_SALES
    assert error.exit_code == 2


def test_missing_password_names_the_env_var_of_a_dotted_sender() -> None:
    error = secret_error(secrets.get_password, make_sender("sales-eu.de"))
    assert str(error) == (
        "no password for sender 'sales-eu.de': run 'mailops password set sales-eu.de' "
        "(or set MAILOPS_PASSWORD_SALES_EU_DE / password_command on a headless machine)"
    )


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("sales", "MAILOPS_PASSWORD_SALES"),
        ("sales-eu", "MAILOPS_PASSWORD_SALES_EU"),
        ("ops.de_2", "MAILOPS_PASSWORD_OPS_DE_2"),
    ],
)
def test_password_env_var_name(key: str, name: str) -> None:
    assert envnames.password_env_var(key) == name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "refusing to store an empty password for sender 'sales'; give the password"),
        (
            "pw\nsecond",
            "the password for sender 'sales' contains a line break; give the password alone, on one line",
        ),
    ],
)
def test_set_password_rejects_unusable_values(value: str, message: str, keyring_file: Path) -> None:
    error = secret_error(secrets.set_password, "sales", value)
    assert str(error) == message
    assert not keyring_file.exists()


def test_backend_info_of_the_test_keyring() -> None:
    assert secrets.backend_info() == secrets.BackendInfo(
        name="tests.keyring_backend.FileKeyring", priority=1.0, usable=True, problem=None
    )


def test_keyring_backend_named_by_python_keyring_backend_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)  # make keyring detect again
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.keyring_backend.LowPriorityKeyring")
    info = secrets.backend_info()
    assert (info.name, info.priority, info.usable) == ("tests.keyring_backend.LowPriorityKeyring", 0.5, False)


def test_unloadable_keyring_backend_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "nosuchmodule.Keyring")
    error = secret_error(secrets.get_password, make_sender())
    assert str(error) == (
        "cannot load a keyring backend (ModuleNotFoundError: No module named 'nosuchmodule'); check "
        f"PYTHON_KEYRING_BACKEND and the keyring configuration, or {HEADLESS_SALES}"
    )
    assert secrets.backend_info().usable is False


# ---------------------------------------------------------------- environment variable


def test_env_var_wins_over_keyring_and_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seed_password) -> None:
    seed_password("sales", "from-keyring")
    marker = tmp_path / "ran"
    sender = make_sender(password_command=f"touch '{marker}'; echo from-command")
    monkeypatch.setenv("MAILOPS_PASSWORD_SALES", "from-env")

    assert secrets.get_password(sender) == "from-env"
    assert secrets.password_source(sender) == "env"
    assert not marker.exists()


def test_empty_env_var_counts_as_unset(monkeypatch: pytest.MonkeyPatch, seed_password) -> None:
    seed_password("sales", "from-keyring")
    monkeypatch.setenv("MAILOPS_PASSWORD_SALES", "")
    assert secrets.get_password(make_sender()) == "from-keyring"
    assert secrets.password_source(make_sender()) == "keyring"


def test_env_var_works_on_a_headless_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    keyring.set_keyring(FailingKeyring())
    monkeypatch.setenv("MAILOPS_PASSWORD_SALES", "from-env")
    assert secrets.get_password(make_sender()) == "from-env"


# ---------------------------------------------------------------- password_command


@posix_only
def test_password_command_first_line_is_the_password(seed_password) -> None:
    seed_password("sales", "from-keyring")  # a sender with a command never reads the keyring
    sender = make_sender(password_command="printf 'cmd pw\\r\\nsecond line\\n'")
    assert secrets.get_password(sender) == "cmd pw"
    assert secrets.password_source(sender) == "command"


@posix_only
def test_password_command_runs_through_the_shell() -> None:
    # a pipeline, as msmtp's passwordeval allows
    sender = make_sender(password_command="echo 'piped-pw extra' | cut -d' ' -f1")
    assert secrets.get_password(sender) == "piped-pw"


@posix_only
def test_password_command_works_without_a_keyring() -> None:
    keyring.set_keyring(FailingKeyring())
    assert secrets.get_password(make_sender(password_command="echo cmd-pw")) == "cmd-pw"


@posix_only
def test_password_command_failure_is_one_line_without_its_output(seed_password) -> None:
    seed_password("sales", "from-keyring")  # a failing command must not fall back to the keyring
    command = "echo leaked-output; exit 3"
    error = secret_error(secrets.get_password, make_sender(password_command=command))
    assert str(error) == (
        "password_command of sender 'sales' ('echo leaked-output; exit 3') exited with status 3; "
        "run it by hand to see why, then fix it in senders.yaml"
    )
    assert "\n" not in str(error)


@posix_only
def test_password_command_not_found() -> None:
    error = secret_error(secrets.get_password, make_sender(password_command="mailops-no-such-tool-3141"))
    assert str(error) == (
        "password_command of sender 'sales' ('mailops-no-such-tool-3141') exited with status 127 "
        "(command not found); run it by hand to see why, then fix it in senders.yaml"
    )


@posix_only
@pytest.mark.parametrize("command", ["true", "printf '\\nsecond-line'"])
def test_password_command_with_empty_first_line(command: str) -> None:
    error = secret_error(secrets.get_password, make_sender(password_command=command))
    assert str(error) == (
        f"password_command of sender 'sales' ({command!r}) printed nothing on its first line; "
        "it must print the password there"
    )


@posix_only
def test_password_command_not_utf8() -> None:
    command = "printf '\\377\\376'"
    error = secret_error(secrets.get_password, make_sender(password_command=command))
    assert str(error) == (
        f"password_command of sender 'sales' ({command!r}) printed something that is not UTF-8 text; "
        "make it print the password"
    )


def _process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@posix_only
def test_password_command_timeout_kills_it_and_its_children(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAILOPS_PASSWORD_COMMAND_TIMEOUT", "0.5")
    pidfile = tmp_path / "child.pid"
    # prints the "password" first, then a child process keeps the command from finishing
    command = f"echo leaked-output; sleep 30 & echo $! > '{pidfile}'; wait"
    started = time.monotonic()
    error = secret_error(secrets.get_password, make_sender(password_command=command))
    assert time.monotonic() - started < 5
    assert str(error) == (
        f"password_command of sender 'sales' ({command!r}) did not finish within 0.5 s; make it work "
        "without a terminal (cron has none) or raise MAILOPS_PASSWORD_COMMAND_TIMEOUT"
    )
    assert "leaked-output" not in str(error).replace("echo leaked-output", "")
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while not _process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _process_gone(child), "the command's child process outlived the timeout"


@posix_only
def test_password_source_never_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    sender = make_sender(password_command=f"touch '{marker}'; echo pw")
    assert secrets.password_source(sender) == "command"
    assert not marker.exists()


def test_invalid_command_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOPS_PASSWORD_COMMAND_TIMEOUT", "soon")
    error = secret_error(secrets.get_password, make_sender(password_command="echo pw"))
    assert str(error) == (
        "MAILOPS_PASSWORD_COMMAND_TIMEOUT='soon': must be a number of seconds above 0, such as 10; fix or unset it"
    )


# ---------------------------------------------------------------- headless: refused backends


FAILING_PROBLEM = (
    "keyring backend tests.keyring_backend.FailingKeyring (priority 0) cannot store passwords; "
    f"{HEADLESS_SALES}, or make a keyring available: unlock the Secret Service (GNOME Keyring, KWallet) "
    "or install keyrings.alt and set MAILOPS_ALLOW_INSECURE_KEYRING=1"
)


def test_failing_keyring_is_refused_with_one_message() -> None:
    keyring.set_keyring(FailingKeyring())
    sender = make_sender()

    assert str(secret_error(secrets.get_password, sender)) == (
        f"cannot read the password of sender 'sales': {FAILING_PROBLEM}"
    )
    assert str(secret_error(secrets.set_password, "sales", "pw")) == (
        f"cannot store the password of sender 'sales': {FAILING_PROBLEM}"
    )
    assert str(secret_error(secrets.delete_password, "sales")) == (
        f"cannot delete the password of sender 'sales': {FAILING_PROBLEM}"
    )
    assert secrets.password_source(sender) == "keyring unavailable"
    assert secrets.backend_info() == secrets.BackendInfo(
        name="tests.keyring_backend.FailingKeyring",
        priority=0.0,
        usable=False,
        problem=FAILING_PROBLEM.replace("MAILOPS_PASSWORD_SALES", "MAILOPS_PASSWORD_<SENDER>"),
    )


def test_opting_in_does_not_make_the_fail_backend_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOPS_ALLOW_INSECURE_KEYRING", "1")
    keyring.set_keyring(FailingKeyring())
    assert str(secret_error(secrets.get_password, make_sender())) == (
        f"cannot read the password of sender 'sales': {FAILING_PROBLEM}"
    )


@pytest.mark.parametrize(
    ("backend", "name", "priority"),
    [(fail.Keyring, "keyring.backends.fail.Keyring", 0.0), (null.Keyring, "keyring.backends.null.Keyring", -1.0)],
)
def test_keyrings_own_fail_and_null_backends_are_refused(backend, name: str, priority: float, monkeypatch) -> None:
    monkeypatch.setenv("MAILOPS_ALLOW_INSECURE_KEYRING", "1")
    keyring.set_keyring(backend())
    info = secrets.backend_info()
    assert (info.name, info.priority, info.usable) == (name, priority, False)
    assert info.problem.startswith(f"keyring backend {name} (priority {priority:g}) cannot store passwords; ")
    # the null backend would silently drop the password: set must fail loudly instead
    assert str(secret_error(secrets.set_password, "sales", "pw")).startswith(
        f"cannot store the password of sender 'sales': keyring backend {name} "
    )


LOW_PRIORITY_PROBLEM = (
    "keyring backend tests.keyring_backend.LowPriorityKeyring (priority 0.5) is not a secure keyring (it may "
    "keep passwords unencrypted); set MAILOPS_ALLOW_INSECURE_KEYRING=1 to use it anyway, or "
    f"{HEADLESS_SALES}"
)


def test_low_priority_backend_is_refused_without_opt_in(keyring_file: Path) -> None:
    keyring.set_keyring(LowPriorityKeyring())
    assert str(secret_error(secrets.set_password, "sales", "pw")) == (
        f"cannot store the password of sender 'sales': {LOW_PRIORITY_PROBLEM}"
    )
    assert not keyring_file.exists()
    assert secrets.password_source(make_sender()) == "keyring unavailable"


def test_low_priority_backend_is_allowed_with_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOPS_ALLOW_INSECURE_KEYRING", "1")
    keyring.set_keyring(LowPriorityKeyring())
    assert secrets.backend_info() == secrets.BackendInfo("tests.keyring_backend.LowPriorityKeyring", 0.5, True, None)
    secrets.set_password("sales", "pw")
    assert secrets.get_password(make_sender()) == "pw"


# ---------------------------------------------------------------- hanging and broken keyrings


def test_hanging_keyring_times_out_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOPS_KEYRING_TIMEOUT", "1")
    backend = HangingKeyring(hang_seconds=10)
    keyring.set_keyring(backend)
    sender = make_sender()

    started = time.monotonic()
    error = secret_error(secrets.get_password, sender)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3
    assert str(error) == (
        "the system keyring did not answer within 1 s (reading the password of sender 'sales'); unlock it "
        "(a locked Secret Service waits for a prompt) or raise MAILOPS_KEYRING_TIMEOUT, or "
        f"{HEADLESS_SALES}"
    )

    # while that call is still stuck, later calls fail at once instead of stacking threads
    started = time.monotonic()
    error = secret_error(secrets.set_password, "sales", "pw")
    assert time.monotonic() - started < 0.5
    assert str(error).startswith("the system keyring did not answer within 1 s (looking for a keyring backend)")
    assert secrets.password_source(sender) == "keyring unavailable"
    assert backend.calls == 1

    # once the keyring answers, mailops uses it again
    backend.release()
    deadline = time.monotonic() + 3
    while secrets.password_source(sender) == "keyring unavailable" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert str(secret_error(secrets.get_password, sender)) == MISSING_SALES


def test_invalid_keyring_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILOPS_KEYRING_TIMEOUT", "0")
    assert str(secret_error(secrets.get_password, make_sender())) == (
        "MAILOPS_KEYRING_TIMEOUT='0': must be a number of seconds above 0, such as 10; fix or unset it"
    )
    assert secrets.backend_info().usable is False


def test_keyring_errors_become_one_line() -> None:
    keyring.set_keyring(BrokenKeyring())
    error = secret_error(secrets.get_password, make_sender())
    assert str(error) == (
        "the system keyring (tests.keyring_backend.BrokenKeyring) failed to read the password of sender "
        f"'sales': KeyringLocked: Failed to unlock the collection!; unlock or repair the keyring, or {HEADLESS_SALES}"
    )
    assert secrets.password_source(make_sender()) == "keyring unavailable"
    assert str(secret_error(secrets.delete_password, "sales")).startswith(
        "the system keyring (tests.keyring_backend.BrokenKeyring) failed to read the password of sender 'sales': "
    )


def test_password_never_appears_in_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password = "Pa55-w0rd-that-must-not-leak"
    errors: list[SecretError] = []

    # a backend that echoes the password in its own exception
    keyring.set_keyring(BrokenKeyring())
    errors.append(secret_error(secrets.set_password, "sales", password))
    assert str(errors[-1]) == (
        "the system keyring (tests.keyring_backend.BrokenKeyring) failed to store the password of sender "
        "'sales': PasswordSetError: cannot store '***' for sales; unlock or repair the keyring, or "
        f"{HEADLESS_SALES}"
    )
    # refused backends, line breaks
    keyring.set_keyring(LowPriorityKeyring())
    errors.append(secret_error(secrets.set_password, "sales", password))
    keyring.set_keyring(FailingKeyring())
    errors.append(secret_error(secrets.set_password, "sales", password))
    errors.append(secret_error(secrets.set_password, "sales", password + "\n"))
    if os.name == "posix":
        # a command that prints the password and then fails, or hangs
        secret_file = tmp_path / "pw.txt"
        secret_file.write_text(password + "\n")
        errors.append(secret_error(secrets.get_password, make_sender(password_command=f"cat '{secret_file}'; exit 1")))
        monkeypatch.setenv("MAILOPS_PASSWORD_COMMAND_TIMEOUT", "0.3")
        errors.append(secret_error(secrets.get_password, make_sender(password_command=f"cat '{secret_file}'; sleep 5")))

    for error in errors:
        assert isinstance(error, MailopsError)
        for text in (str(error), repr(error)):
            assert password not in text
        # no chained exception carries it either (a debug traceback would print it)
        assert error.__cause__ is None
        assert error.__context__ is None or password not in str(error.__context__)


def test_backend_info_never_raises_and_reveals_nothing(seed_password) -> None:
    seed_password("sales", "Pa55-secret")
    assert "Pa55-secret" not in repr(secrets.backend_info())


# ---------------------------------------------------------------- isolation (tests/fixtures_home.py)


def test_every_test_runs_in_an_isolated_home(isolated_home) -> None:
    from mailops import paths

    assert isinstance(keyring.get_keyring(), FileKeyring)
    assert os.environ["PYTHON_KEYRING_BACKEND"] == "tests.keyring_backend.FileKeyring"
    assert Path(os.environ["MAILOPS_TEST_KEYRING_FILE"]) == isolated_home.keyring_file
    assert paths.user_config_dir() == isolated_home.config_dir
    assert paths.user_data_dir() == isolated_home.data_dir
    assert Path.cwd() == isolated_home.cwd
    assert list(isolated_home.cwd.iterdir()) == []
    assert not [name for name in os.environ if name.startswith("MAILOPS_PASSWORD_")]
    assert "MAILOPS_CONFIG" not in os.environ and "MAILOPS_DATABASE_URL" not in os.environ
    assert (os.environ["NO_COLOR"], os.environ["COLUMNS"]) == ("1", "200")
    assert "DBUS_SESSION_BUS_ADDRESS" not in os.environ


def test_subprocesses_share_the_test_keyring(isolated_home) -> None:
    secrets.set_password("sales", "set-in-test")
    script = textwrap.dedent(
        """
        from mailops import envnames, secrets
        from mailops.config import Sender
        sender = Sender("sales", "s@example.com", "h", 587, "starttls", "s@example.com")
        print(secrets.backend_info().name, secrets.get_password(sender) == "set-in-test")
        secrets.set_password("finance", "set-in-child")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=isolated_home.cwd
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tests.keyring_backend.FileKeyring", "True"]
    assert isolated_home.passwords() == {"sales": "set-in-test", "finance": "set-in-child"}
