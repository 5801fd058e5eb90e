"""Sender passwords: the only module that reads or writes them.

A sender's password comes from the first of these that is set:

1. the environment variable ``MAILOPS_PASSWORD_<KEY>`` (the sender key upper-cased,
   ``-`` and ``.`` turned into ``_``; an empty value counts as unset) — for CI,
   containers and cron on machines without a keyring;
2. the sender's ``password_command`` (like msmtp's ``passwordeval``): run through
   the shell so a line that works in msmtp/neomutt (``pass show mail/sales | head -1``)
   works here unchanged; senders.yaml is the operator's own file, as trusted as a
   crontab. The first line of its standard output is the password. Its standard
   error reaches the terminal (the tool's own diagnostics, e.g. from gpg), its
   standard input is closed, and it is killed after ``MAILOPS_PASSWORD_COMMAND_TIMEOUT``
   seconds (default 30: long enough for a pinentry prompt, short enough for cron).
   A failing command is an error: it never falls through to the keyring;
3. the system keyring (``keyring``), service ``mailops``, username the sender key.

Keyring backends that cannot keep a secret (the ``fail`` and ``null`` backends,
an empty chainer) are refused, and so are the "not recommended" ones (priority
below 1, e.g. keyrings.alt's plaintext file) unless ``MAILOPS_ALLOW_INSECURE_KEYRING=1``
(or true/yes/on).
Every keyring call runs in a daemon thread bounded by ``MAILOPS_KEYRING_TIMEOUT``
seconds (default 10), because a locked Secret Service can wait forever for an
unlock prompt nobody will see. No message built here ever contains a password
or the output of a password command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from .envnames import ENV_PREFIX, OAUTH_ENV_PREFIX, oauth_env_var, password_env_var
from .errors import SecretError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

    from .config import Sender

#: keyring service name; the keyring username is the sender key
SERVICE = "mailops"
#: what a refresh token is called in messages; its keyring username is "oauth2:<sender>"
REFRESH_TOKEN = "OAuth refresh token"
ALLOW_INSECURE_ENV = "MAILOPS_ALLOW_INSECURE_KEYRING"
KEYRING_TIMEOUT_ENV = "MAILOPS_KEYRING_TIMEOUT"
COMMAND_TIMEOUT_ENV = "MAILOPS_PASSWORD_COMMAND_TIMEOUT"
DEFAULT_KEYRING_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 30.0

PasswordSource = Literal["env", "command", "keyring", "missing", "keyring unavailable"]

_T = TypeVar("_T")
_GENERIC_ENV = f"{ENV_PREFIX}<SENDER>"


@dataclass(frozen=True)
class BackendInfo:
    """The keyring backend mailops would use, and whether it accepts it."""

    name: str  # dotted class path, e.g. "keyring.backends.SecretService.Keyring"
    priority: float  # keyring's own ranking; 1 or more means "recommended"
    usable: bool
    problem: str | None = None  # one line: why it is refused and what to do instead


# ---------------------------------------------------------------- helpers


def _env_var_for(sender_key: str, what: str) -> str:
    return oauth_env_var(sender_key) if what == REFRESH_TOKEN else password_env_var(sender_key)


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise SecretError(f"{name}={raw!r}: must be a number of seconds above 0, such as 10; fix or unset it")
    return value


def _insecure_allowed() -> bool:
    return os.environ.get(ALLOW_INSECURE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _headless(env_var: str) -> str:
    """The part of every refusal that says what works without a keyring."""
    other = "oauth2.token_command" if env_var.startswith(OAUTH_ENV_PREFIX) else "password_command"
    return f"set {env_var} or {other} in senders.yaml (headless machines, cron)"


def _one_line(exc: BaseException, secret: str | None = None) -> str:
    """An exception as short single-line text, with ``secret`` blanked should a backend echo it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret and secret in text:
        text = text.replace(secret, "***")
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}"


def _backend_name(backend: object) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------- bounded keyring calls

_stuck_lock = threading.Lock()
_stuck: threading.Thread | None = None  # a keyring call that timed out and still has not returned


def _no_answer(timeout: float, doing: str, env_var: str) -> str:
    return (
        f"the system keyring did not answer within {timeout:g} s ({doing}); unlock it (a locked Secret "
        f"Service waits for a prompt) or raise {KEYRING_TIMEOUT_ENV}, or {_headless(env_var)}"
    )


def _bounded(func: Callable[[], _T], doing: str, env_var: str) -> _T:
    """Run one keyring call in a daemon thread; SecretError if it does not return in time.

    A thread cannot be killed, so one that timed out is remembered: while it is
    still stuck, further calls fail at once instead of piling up more threads.
    """
    global _stuck
    timeout = _seconds_from_env(KEYRING_TIMEOUT_ENV, DEFAULT_KEYRING_TIMEOUT)
    with _stuck_lock:
        if _stuck is not None and _stuck.is_alive():
            raise SecretError(_no_answer(timeout, doing, env_var))
        _stuck = None
    values: list[_T] = []
    errors: list[Exception] = []

    def target() -> None:
        try:
            values.append(func())
        except Exception as exc:  # handed to the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name="mailops-keyring", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        with _stuck_lock:
            _stuck = thread
        raise SecretError(_no_answer(timeout, doing, env_var))
    if errors:
        raise errors[0]
    return values[0]


def _judge(backend: KeyringBackend, env_var: str) -> BackendInfo:
    """Decide whether mailops may keep passwords in ``backend``."""
    from keyring.backends import fail, null

    name = _backend_name(backend)
    try:
        # priority is a class property that may probe D-Bus; it runs inside _bounded
        priority = float(type(backend).priority)
    except Exception as exc:
        return BackendInfo(
            name, 0.0, False, f"keyring backend {name} is not usable here ({_one_line(exc)}); {_headless(env_var)}"
        )
    if isinstance(backend, (fail.Keyring, null.Keyring)) or priority <= 0:
        # opting in cannot help: these backends raise or silently drop every password
        return BackendInfo(
            name,
            priority,
            False,
            f"keyring backend {name} (priority {priority:g}) cannot store passwords; {_headless(env_var)}, "
            f"or make a keyring available: unlock the Secret Service (GNOME Keyring, KWallet) or install "
            f"keyrings.alt and set {ALLOW_INSECURE_ENV}=1",
        )
    if priority < 1 and not _insecure_allowed():
        return BackendInfo(
            name,
            priority,
            False,
            f"keyring backend {name} (priority {priority:g}) is not a secure keyring (it may keep passwords "
            f"unencrypted); set {ALLOW_INSECURE_ENV}=1 to use it anyway, or {_headless(env_var)}",
        )
    return BackendInfo(name, priority, True, None)


def _backend(env_var: str) -> tuple[KeyringBackend, BackendInfo]:
    """The current keyring backend and its verdict; detection itself is bounded in time."""
    import keyring

    def detect() -> tuple[KeyringBackend, BackendInfo]:
        # get_keyring() honours keyring.set_keyring(), PYTHON_KEYRING_BACKEND and keyringrc.cfg
        backend = keyring.get_keyring()
        return backend, _judge(backend, env_var)

    try:
        return _bounded(detect, "looking for a keyring backend", env_var)
    except SecretError:
        raise
    except Exception as exc:  # e.g. PYTHON_KEYRING_BACKEND names a class that does not exist
        raise SecretError(
            f"cannot load a keyring backend ({_one_line(exc)}); check PYTHON_KEYRING_BACKEND and the keyring "
            f"configuration, or {_headless(env_var)}"
        ) from None


def _usable_backend(sender_key: str, verb: str, what: str = "password") -> tuple[KeyringBackend, str]:
    """The backend to use for ``sender_key`` and its name, or SecretError saying why it is refused."""
    backend, info = _backend(_env_var_for(sender_key, what))
    if not info.usable:
        raise SecretError(f"cannot {verb} the {what} of sender {sender_key!r}: {info.problem}")
    return backend, info.name


def _keyring_call(
    func: Callable[[], _T], name: str, verb: str, sender_key: str, secret: str | None = None, what: str = "password"
) -> _T:
    """One bounded keyring call for ``sender_key``; any backend exception becomes a one-line SecretError.

    The SecretError is raised outside the ``except`` block so it carries no
    ``__context__``: a careless backend's exception may contain the password.
    """
    env_var = _env_var_for(sender_key, what)
    doing = {"read": "reading", "store": "storing", "delete": "deleting"}[verb]
    try:
        return _bounded(func, f"{doing} the {what} of sender {sender_key!r}", env_var)
    except SecretError:
        raise
    except Exception as exc:
        failure = SecretError(
            f"the system keyring ({name}) failed to {verb} the {what} of sender {sender_key!r}: "
            f"{_one_line(exc, secret)}; unlock or repair the keyring, or {_headless(env_var)}"
        )
    raise failure


# ---------------------------------------------------------------- password command


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and whatever it started (it runs in its own process group on POSIX)."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _run_password_command(sender: Sender) -> str:
    """The first line printed by the sender's password_command; SecretError if it fails."""
    command = sender.password_command or ""
    return run_secret_command(command, f"password_command of sender {sender.key!r} ({command!r})")


def run_secret_command(command: str, what: str, noun: str = "password") -> str:
    """The first line printed by ``command`` (run through the shell); SecretError naming ``what`` if it fails.

    Used for password_command, and for an oauth2 sender's token_command and
    client_secret_command; the output is never part of a message.
    """
    timeout = _seconds_from_env(COMMAND_TIMEOUT_ENV, DEFAULT_COMMAND_TIMEOUT)
    try:
        proc = subprocess.Popen(  # shell on purpose, as msmtp's passwordeval
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,  # the tool's own diagnostics go straight to the operator
            start_new_session=os.name == "posix",
        )
    except OSError as exc:
        raise SecretError(f"{what} could not be started: {exc.strerror or exc}; fix it in senders.yaml") from None
    with proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait()
            raise SecretError(
                f"{what} did not finish within {timeout:g} s; make it work without a terminal (cron has none) "
                f"or raise {COMMAND_TIMEOUT_ENV}"
            ) from None
    code = proc.returncode
    if code != 0:
        why = " (command not found)" if code == 127 else ""
        status = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}{why}"
        raise SecretError(f"{what} {status}; run it by hand to see why, then fix it in senders.yaml")
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{what} printed something that is not UTF-8 text; make it print the {noun}") from None
    first = text.split("\n", 1)[0].removesuffix("\r")
    if not first:
        raise SecretError(f"{what} printed nothing on its first line; it must print the {noun} there")
    return first


# ---------------------------------------------------------------- public API


def backend_info() -> BackendInfo:
    """The keyring backend in use and whether mailops accepts it (never raises; problems go in ``problem``)."""
    try:
        return _backend(_GENERIC_ENV)[1]
    except SecretError as exc:
        return BackendInfo("(unknown)", 0.0, False, str(exc))


def get_password(sender: Sender) -> str:
    """The sender's password from the environment, its password_command, or the keyring; SecretError if none.

    An oauth2 sender has no password: this checks that its refresh token is
    available (or that it uses token_command) and returns ``""``; the access
    token is fetched when the session logs in (:func:`mailops.oauth.access_token`).
    """
    if sender.oauth2 is not None:
        if sender.oauth2.token_command is None:
            get_refresh_token(sender)
        return ""
    env_var = password_env_var(sender.key)
    value = os.environ.get(env_var)
    if value:
        return value
    if sender.password_command:
        return _run_password_command(sender)
    backend, name = _usable_backend(sender.key, "read")
    value = _keyring_call(lambda: backend.get_password(SERVICE, sender.key), name, "read", sender.key)
    if not value:
        raise SecretError(_missing(sender.key, env_var))
    return value


def _missing(sender_key: str, env_var: str) -> str:
    return (
        f"no password for sender {sender_key!r}: run 'mailops password set {sender_key}' "
        f"(or set {env_var} / password_command on a headless machine)"
    )


def credentials_problem(sender: Sender) -> str | None:
    """Why the sender cannot log in for lack of credentials (one line with the fix), or None when it can.

    Nothing is revealed and password_command is not run (its own failure is
    reported when it runs); a bad MAILOPS_PASSWORD_COMMAND_TIMEOUT is a problem.
    """
    if not sender.auth:
        return None
    if sender.oauth2 is not None:
        if sender.oauth2.token_command:
            return None
        try:
            get_refresh_token(sender)
        except SecretError as exc:
            return str(exc)
        return None
    env_var = password_env_var(sender.key)
    if os.environ.get(env_var):
        return None
    if sender.password_command:
        try:
            _seconds_from_env(COMMAND_TIMEOUT_ENV, DEFAULT_COMMAND_TIMEOUT)
        except SecretError as exc:
            return f"sender {sender.key!r}: {exc}"
        return None
    try:
        backend, name = _usable_backend(sender.key, "read")
        value = _keyring_call(lambda: backend.get_password(SERVICE, sender.key), name, "read", sender.key)
    except SecretError as exc:
        return str(exc)
    return None if value else _missing(sender.key, env_var)


def password_source(sender: Sender) -> PasswordSource:
    """Where the sender's password would come from, without revealing it or running password_command.

    For an oauth2 sender: where its refresh token comes from (``command`` for token_command).
    """
    if sender.oauth2 is not None:
        return refresh_token_source(sender)
    if os.environ.get(password_env_var(sender.key)):
        return "env"
    if sender.password_command:
        return "command"
    try:
        backend, name = _usable_backend(sender.key, "read")
        value = _keyring_call(lambda: backend.get_password(SERVICE, sender.key), name, "read", sender.key)
    except SecretError:  # refused backend, timeout or keyring error: backend_info() or get_password() tells which
        return "keyring unavailable"
    return "keyring" if value else "missing"


def describe_source(sender: Sender, source: PasswordSource) -> str:
    """``source`` (from :func:`password_source`) in words for people: ``stored (keyring)``,
    ``from MAILOPS_PASSWORD_SALES``, ``from password_command``, ``missing``, ``missing (no usable keyring)``;
    for an oauth2 sender the same about its refresh token (``OAuth token: ...``)."""
    oauth = sender.oauth2 is not None
    words = {
        "env": f"from {oauth_env_var(sender.key) if oauth else password_env_var(sender.key)}",
        "command": "from token_command" if oauth else "from password_command",
        "keyring": "stored (keyring)",
        "missing": "missing",
        "keyring unavailable": "missing (no usable keyring)",
    }[source]
    return f"OAuth token: {words}" if oauth else words


def set_password(sender_key: str, value: str) -> None:
    """Store the password of ``sender_key`` in the keyring, and check that it reads back."""
    if not sender_key:
        raise SecretError("cannot store a password without a sender name; name one of the senders in senders.yaml")
    if not value:
        raise SecretError(f"refusing to store an empty password for sender {sender_key!r}; give the password")
    if "\n" in value or "\r" in value:
        raise SecretError(
            f"the password for sender {sender_key!r} contains a line break; give the password alone, on one line"
        )
    backend, name = _usable_backend(sender_key, "store")
    _keyring_call(lambda: backend.set_password(SERVICE, sender_key, value), name, "store", sender_key, value)
    stored = _keyring_call(lambda: backend.get_password(SERVICE, sender_key), name, "read", sender_key, value)
    if stored != value:
        # a backend that accepts and drops passwords would otherwise fail much later, at send time
        raise SecretError(
            f"the system keyring ({name}) accepted the password of sender {sender_key!r} but does not return "
            f"it; use another keyring backend, or {_headless(password_env_var(sender_key))}"
        )


def delete_password(sender_key: str) -> bool:
    """Remove the keyring entry of ``sender_key``; False when there was none."""
    backend, name = _usable_backend(sender_key, "delete")
    # most backends raise PasswordDeleteError for a missing entry, but also for real failures;
    # looking first tells "nothing to delete" apart from "could not delete"
    if _keyring_call(lambda: backend.get_password(SERVICE, sender_key), name, "read", sender_key) is None:
        return False
    _keyring_call(lambda: backend.delete_password(SERVICE, sender_key), name, "delete", sender_key)
    return True


# ---------------------------------------------------------------- OAuth2 refresh tokens


def _oauth_user(sender_key: str) -> str:
    # sender names hold no ':', so this never meets a password entry
    return f"oauth2:{sender_key}"


def _missing_refresh_token(sender_key: str) -> str:
    return (
        f"no OAuth refresh token for sender {sender_key!r}: run 'mailops oauth login {sender_key}' "
        f"(or set {oauth_env_var(sender_key)} on a headless machine)"
    )


def get_refresh_token(sender: Sender) -> tuple[str, PasswordSource]:
    """The sender's OAuth2 refresh token and where it came from (``env`` or ``keyring``); SecretError if none."""
    value = os.environ.get(oauth_env_var(sender.key))
    if value:
        return value, "env"
    backend, name = _usable_backend(sender.key, "read", REFRESH_TOKEN)
    user = _oauth_user(sender.key)
    value = _keyring_call(lambda: backend.get_password(SERVICE, user), name, "read", sender.key, what=REFRESH_TOKEN)
    if not value:
        raise SecretError(_missing_refresh_token(sender.key))
    return value, "keyring"


def refresh_token_source(sender: Sender) -> PasswordSource:
    """Where an oauth2 sender's token comes from.

    One of: env, command (token_command), keyring, missing, keyring unavailable.
    """
    if sender.oauth2 is not None and sender.oauth2.token_command:
        return "command"
    if os.environ.get(oauth_env_var(sender.key)):
        return "env"
    try:
        backend, name = _usable_backend(sender.key, "read", REFRESH_TOKEN)
        user = _oauth_user(sender.key)
        value = _keyring_call(lambda: backend.get_password(SERVICE, user), name, "read", sender.key, what=REFRESH_TOKEN)
    except SecretError:
        return "keyring unavailable"
    return "keyring" if value else "missing"


def set_refresh_token(sender_key: str, value: str) -> None:
    """Store (or replace) the OAuth2 refresh token of ``sender_key`` in the keyring, and check it reads back."""
    if not value or any(ch.isspace() for ch in value):
        raise SecretError(
            f"refusing to store the {REFRESH_TOKEN} of sender {sender_key!r}: it is empty or holds spaces or line "
            "breaks; give the token alone, on one line"
        )
    backend, name = _usable_backend(sender_key, "store", REFRESH_TOKEN)
    user = _oauth_user(sender_key)
    _keyring_call(
        lambda: backend.set_password(SERVICE, user, value), name, "store", sender_key, value, what=REFRESH_TOKEN
    )
    stored = _keyring_call(lambda: backend.get_password(SERVICE, user), name, "read", sender_key, value, REFRESH_TOKEN)
    if stored != value:
        raise SecretError(
            f"the system keyring ({name}) accepted the {REFRESH_TOKEN} of sender {sender_key!r} but does not return "
            f"it; use another keyring backend, or {_headless(oauth_env_var(sender_key))}"
        )
