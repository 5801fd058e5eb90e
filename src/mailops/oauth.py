"""OAuth2 for SMTP: the ``oauth2:`` settings of a sender, and access tokens for SASL XOAUTH2.

A sender with ``oauth2:`` logs in with an access token instead of a password.
The token comes either from ``token_command`` (a command printing a current
access token, like msmtp's passwordeval: mailops then does no OAuth itself)
or from the refresh-token grant against the provider's token endpoint, with
the refresh token kept like a password (see :mod:`mailops.secrets`).

Access tokens live in memory only, for the run: one per sender, shared by
all its connections, refreshed shortly before they expire and once more
after the server refuses one. A refresh token the endpoint rotates replaces
the stored one.

HTTP is done with :mod:`urllib.request`: the refresh-token grant is one form
POST and one JSON answer, and the standard library verifies certificates
with the system's trust store (``SSL_CERT_FILE`` names another CA bundle, as
for every OpenSSL client; there is no switch to turn verification off); an
OAuth client library would add a dependency (and its start-up cost) for no
gain here.
"""

from __future__ import annotations

import difflib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, SecretError

if TYPE_CHECKING:
    from .config import Sender

#: Provider families and what their OAuth2 endpoints are ({tenant} is filled in for Microsoft).
PROVIDERS: dict[str, dict[str, str]] = {
    "microsoft": {
        "token_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "device_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
        "scope": "https://outlook.office.com/SMTP.Send offline_access",
    },
    "google": {
        "token_url": "https://oauth2.googleapis.com/token",
        "auth_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "scope": "https://mail.google.com/",
    },
}
#: ``provider:`` names (and well-known SMTP hosts, when no provider is named) → (family, default tenant).
PROVIDER_NAMES: dict[str, tuple[str, str | None]] = {
    "microsoft365": ("microsoft", "organizations"),
    "outlook": ("microsoft", "consumers"),  # outlook.com / hotmail accounts are personal Microsoft accounts
    "gmail": ("google", None),
    "google-workspace": ("google", None),
}
KNOWN_HOSTS = {
    "smtp.office365.com": "microsoft365",
    "smtp-mail.outlook.com": "outlook",
    "smtp.gmail.com": "gmail",
}
KEYS = ("client_id", "tenant", "token_url", "scope", "client_secret_command", "token_command")
#: Keys someone may try that would put a secret in the file.
_SECRET_KEYS = ("client_secret", "refresh_token", "access_token", "token")
#: Refresh an access token this long before the endpoint says it expires (clock skew, a slow login).
EXPIRY_MARGIN = 60.0
#: A token_command's token is used for at most this long before the command runs again.
COMMAND_TOKEN_MAX_AGE = 300.0
HTTP_TIMEOUT = 30.0
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class OAuth2Settings:
    """A sender's validated ``oauth2:`` mapping, provider defaults applied."""

    client_id: str | None = None
    token_url: str | None = None
    scope: str | None = None
    tenant: str | None = None
    client_secret_command: str | None = None
    token_command: str | None = None
    family: str | None = None  # "microsoft" or "google" when known: chooses the login flow
    device_url: str | None = None
    auth_url: str | None = None


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a token endpoint, or None: https, or http to a loopback host (tests, local proxies)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return None
    return f"must be an https:// URL (http:// only for 127.0.0.1, ::1 or localhost) (got {url!r})"


def parse_oauth2(raw: Any, *, provider: str | None, host: str | None, path: Path, where: str) -> OAuth2Settings:
    """Validate a sender's ``oauth2:`` mapping; ConfigError naming file and key on anything wrong.

    ``provider`` is the sender's provider name when it has one; otherwise a
    well-known SMTP host (smtp.office365.com, smtp.gmail.com) selects the
    defaults for ``token_url`` and ``scope``.
    """
    where = f"{where}.oauth2"
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: {where}: must be a mapping with client_id (and token_url, scope when the provider is not known), "
            f"or with token_command (got {type(raw).__name__})"
        )
    for key, value in raw.items():
        if key in _SECRET_KEYS:
            fix = (
                "use client_secret_command: a command that prints it"
                if key == "client_secret"
                else "delete the key and run 'mailops oauth login SENDER' (or 'mailops oauth token SENDER --stdin')"
            )
            raise ConfigError(f"{path}: {where}.{key}: secrets do not belong in senders.yaml; {fix}")
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys are: {', '.join(KEYS)}"
            raise ConfigError(f"{path}: {where}.{key}: unknown key; {hint}")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {where}.{key}: must be non-empty text (got {value!r})")
    values = {key: raw[key].strip() for key in raw}
    if "token_command" in values:
        others = [key for key in values if key != "token_command"]
        if others:
            raise ConfigError(
                f"{path}: {where}.{others[0]}: not used with token_command (mailops does no OAuth itself then: the "
                f"command prints the access token); remove {', '.join(others)} or token_command"
            )
        return OAuth2Settings(token_command=values["token_command"])
    if "client_id" not in values:
        raise ConfigError(
            f"{path}: {where}.client_id: required key is missing; add the application (client) ID registered with "
            "the provider, or use token_command"
        )
    name = provider or (KNOWN_HOSTS.get(host.lower().rstrip(".")) if host else None)
    family, default_tenant = PROVIDER_NAMES.get(name or "", (None, None))
    if "tenant" in values and family != "microsoft":
        raise ConfigError(
            f"{path}: {where}.tenant: only for Microsoft senders (provider microsoft365 or outlook); remove it"
        )
    tenant = values.get("tenant", default_tenant)
    defaults = {k: v.replace("{tenant}", tenant or "") for k, v in PROVIDERS.get(family or "", {}).items()}
    token_url = values.get("token_url", defaults.get("token_url"))
    scope = values.get("scope", defaults.get("scope"))
    for key, value in (("token_url", token_url), ("scope", scope)):
        if value is None:
            raise ConfigError(
                f"{path}: {where}.{key}: required key is missing (no provider to take it from); add it, or use a "
                "provider host such as smtp.office365.com or smtp.gmail.com"
            )
    assert token_url is not None
    problem = _url_problem(token_url)
    if problem is not None:
        raise ConfigError(f"{path}: {where}.token_url: {problem}")
    return OAuth2Settings(
        client_id=values["client_id"],
        token_url=token_url,
        scope=scope,
        tenant=tenant,
        client_secret_command=values.get("client_secret_command"),
        family=family,
        device_url=defaults.get("device_url"),
        auth_url=defaults.get("auth_url"),
    )


# ---------------------------------------------------------------- access tokens


class OAuthError(SecretError):
    """No access token could be had (refused refresh token, unreachable endpoint, failing command)."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error  # the endpoint's OAuth error code (invalid_grant, authorization_pending, ...)


@dataclass
class _State:
    lock: threading.Lock
    access_token: str | None = None
    expires_at: float = 0.0
    refresh_token: str | None = None  # the newest one seen in this run (rotation)


_states: dict[tuple[str, str | None, str | None], _State] = {}
_states_lock = threading.Lock()


@dataclass
class TokenNews:
    """What this process learnt about its senders' tokens, for the caller to record (see :func:`take_news`)."""

    #: sender key -> when (epoch seconds) its newest access token from the refresh grant expires
    expires_at: dict[str, float] = field(default_factory=dict)
    #: sender key -> why its rotated refresh token could not be stored, or None: the stored one is current
    problems: dict[str, str | None] = field(default_factory=dict)


_news = TokenNews()


def _state(sender: Sender) -> _State:
    settings = sender.oauth2
    assert settings is not None
    key = (sender.key, settings.token_url, settings.client_id or settings.token_command)
    with _states_lock:
        return _states.setdefault(key, _State(threading.Lock()))


def forget_tokens() -> None:
    """Drop every access token cached in this process (tests; a long-lived caller that reloads its config)."""
    with _states_lock:
        _states.clear()
        _news.expires_at.clear()
        _news.problems.clear()


def take_news() -> TokenNews:
    """What was learnt since the last call (access token expiries, refresh tokens that could not be stored).

    The caller records it (``health.record_tokens``: ``password status`` shows the expiry, ``doctor`` the
    problem) and prints the problems as warnings: the run itself went on with the new token.
    """
    global _news
    with _states_lock:
        news, _news = _news, TokenNews()
    return news


def access_token(sender: Sender, *, refused: str | None = None, clock: Callable[[], float] = time.monotonic) -> str:
    """A current access token for ``sender``; never ``refused`` (the one the server just turned down).

    When another connection of the sender already replaced the refused
    token, its replacement is returned: one refresh serves them all.
    Raises OAuthError (a SecretError) with one line naming the fix.
    """
    settings = sender.oauth2
    assert settings is not None, "access_token() is only for senders with oauth2:"
    state = _state(sender)
    with state.lock:  # one refresh per sender even with several connections
        now = clock()
        if state.access_token is not None and state.access_token != refused and now < state.expires_at:
            return state.access_token
        if settings.token_command:
            from . import secrets

            token = secrets.run_secret_command(
                settings.token_command, f"token_command of sender {sender.key!r}", "access token"
            )
            state.access_token, state.expires_at = token, now + COMMAND_TOKEN_MAX_AGE
            return token
        token, expires_in = _refresh(sender, settings, state)
        state.access_token = token
        state.expires_at = now + max(0.0, expires_in - EXPIRY_MARGIN)
        with _states_lock:
            _news.expires_at[sender.key] = time.time() + expires_in
        return token


def _refresh(sender: Sender, settings: OAuth2Settings, state: _State) -> tuple[str, float]:
    """The refresh-token grant: a new access token and its lifetime; stores a rotated refresh token."""
    from . import secrets

    if state.refresh_token is None:
        state.refresh_token, state_source = secrets.get_refresh_token(sender)
    else:
        state_source = secrets.refresh_token_source(sender)
    form = {
        "grant_type": "refresh_token",
        "refresh_token": state.refresh_token,
        "client_id": settings.client_id or "",
        "scope": settings.scope or "",
    }
    if settings.client_secret_command:
        form["client_secret"] = secrets.run_secret_command(
            settings.client_secret_command, f"client_secret_command of sender {sender.key!r}", "client secret"
        )
    answer = post_form(settings.token_url or "", form, sender.key)
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise OAuthError(f"sender {sender.key!r}: the token endpoint answered without an access_token; check token_url")
    expires_in = answer.get("expires_in", 3600)
    try:
        lifetime = float(expires_in)
    except (TypeError, ValueError):
        lifetime = 3600.0
    rotated = answer.get("refresh_token")
    if isinstance(rotated, str) and rotated and rotated != state.refresh_token:
        state.refresh_token = rotated
        if state_source == "keyring":
            # The old one may stop working at any time now. This run goes on with the new one (kept in
            # memory); a failure to store it is a warning now and a problem for doctor until it is fixed.
            problem: str | None = None
            try:
                secrets.set_refresh_token(sender.key, rotated)
            except SecretError as exc:
                problem = (
                    f"sender {sender.key!r}: the token endpoint replaced the OAuth refresh token, but the new one "
                    f"could not be stored ({exc}); this run used it, a later run may be refused: fix the keyring, "
                    f"then run 'mailops oauth login {sender.key}'"
                )
            with _states_lock:
                _news.problems[sender.key] = problem  # the last rotation decides what the keyring holds
    elif state_source == "keyring":
        with _states_lock:
            _news.problems.setdefault(sender.key, None)  # the stored token works (unless this run failed to store)
    return token, lifetime


def post_form(url: str, form: dict[str, str], sender_key: str) -> dict[str, Any]:
    """POST ``form`` to an OAuth endpoint and return its JSON answer; OAuthError with one line on any failure.

    ``invalid_grant`` (a revoked, expired or rotated-away refresh token) says to log in again.
    """
    data = urllib.parse.urlencode(form).encode("ascii")
    request = urllib.request.Request(
        url, data=data, headers={"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    )
    host = urllib.parse.urlsplit(url).netloc
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # https, or http to loopback only
            body = response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        error, description = _error_of(exc)
        if error == "invalid_grant":
            raise OAuthError(
                f"sender {sender_key!r}: the OAuth refresh token was refused by {host} (invalid_grant: revoked, "
                f"expired or replaced); run 'mailops oauth login {sender_key}'",
                error,
            ) from None
        detail = f"{error}: {description}" if description else (error or f"HTTP {exc.code}")
        raise OAuthError(
            f"sender {sender_key!r}: the token endpoint {host} refused the request ({detail})", error
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        import ssl

        if isinstance(reason, ssl.SSLCertVerificationError):
            raise OAuthError(
                f"sender {sender_key!r}: the certificate of the token endpoint {host} was refused ({reason}); trust "
                "a private CA with SSL_CERT_FILE=/path/to/ca.pem, or check token_url"
            ) from None
        raise OAuthError(
            f"sender {sender_key!r}: cannot reach the token endpoint {host} ({reason}); check token_url and the network"
        ) from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise OAuthError(f"sender {sender_key!r}: the token endpoint {host} did not answer with JSON; check token_url")
    return answer


def _error_of(exc: urllib.error.HTTPError) -> tuple[str | None, str | None]:
    """The OAuth ``error`` and a short ``error_description`` of a refused request, when its body is JSON."""
    try:
        payload = json.loads(exc.read(100_000))
    except (ValueError, OSError):
        return None, None
    if not isinstance(payload, dict):
        return None, None
    error = payload.get("error")
    description = payload.get("error_description")
    short = " ".join(str(description).split())[:160] if description else None
    return (str(error) if error else None), short


def xoauth2_initial_response(username: str, token: str) -> str:
    """The SASL XOAUTH2 client response (before base64): ``user=…^Aauth=Bearer …^A^A``."""
    return f"user={username}\x01auth=Bearer {token}\x01\x01"


# ---------------------------------------------------------------- logging in (oauth login)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: How long the loopback flow waits for the browser to come back.
LOOPBACK_TIMEOUT = 300.0
_MAX_POLLS = 2000


def _client_form(sender: Sender, settings: OAuth2Settings) -> dict[str, str]:
    form = {"client_id": settings.client_id or ""}
    if settings.client_secret_command:
        from . import secrets

        form["client_secret"] = secrets.run_secret_command(
            settings.client_secret_command, f"client_secret_command of sender {sender.key!r}", "client secret"
        )
    return form


def _store_login(sender: Sender, answer: dict[str, Any]) -> None:
    from . import secrets

    refresh = answer.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise OAuthError(
            f"sender {sender.key!r}: the login succeeded but the provider returned no refresh token; add "
            "offline_access to oauth2.scope (Microsoft) or revoke the app's access and log in again (Google)"
        )
    secrets.set_refresh_token(sender.key, refresh)
    forget_tokens()  # an access token of the previous login must not outlive it


def device_url_for(settings: OAuth2Settings) -> str | None:
    """The device-authorization endpoint: the provider's, else next to a token_url ending in ``/token``."""
    if settings.device_url:
        return settings.device_url
    url = settings.token_url or ""
    if settings.family != "google" and url.endswith("/token"):
        return url[: -len("token")] + "devicecode"
    return None


def login_device_code(
    sender: Sender,
    show: Callable[[str], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """RFC 8628 device-code login (Microsoft): ``show`` the URL and code, poll until approved, store the token.

    Works over SSH on a headless server: the browser can be on any device.
    """
    settings = sender.oauth2
    assert settings is not None and settings.client_id
    device_url = device_url_for(settings)
    if device_url is None:
        raise OAuthError(f"sender {sender.key!r}: no device-code endpoint is known for {settings.token_url}")
    form = _client_form(sender, settings)
    start = post_form(device_url, {**form, "scope": settings.scope or ""}, sender.key)
    device_code, user_code = start.get("device_code"), start.get("user_code")
    uri = start.get("verification_uri") or start.get("verification_url")
    if not (isinstance(device_code, str) and isinstance(user_code, str) and isinstance(uri, str)):
        raise OAuthError(f"sender {sender.key!r}: the device-code endpoint answered without a code; check token_url")
    interval = float(start.get("interval", 5) or 0)
    expires_in = float(start.get("expires_in", 900) or 900)
    show(
        f"To sign in as {sender.email}, open {uri} and enter the code {user_code} (valid {expires_in / 60:.0f} minutes)"
    )
    deadline = clock() + expires_in
    for _ in range(_MAX_POLLS):
        if clock() > deadline:
            break
        sleep(interval)
        try:
            answer = post_form(
                settings.token_url or "", {**form, "grant_type": DEVICE_GRANT, "device_code": device_code}, sender.key
            )
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += 5  # RFC 8628 3.5
                continue
            if exc.error == "access_denied":
                raise OAuthError(f"sender {sender.key!r}: the sign-in was declined; nothing stored") from None
            if exc.error == "expired_token":
                break
            raise
        _store_login(sender, answer)
        return
    raise OAuthError(f"sender {sender.key!r}: the code expired before the sign-in finished; run the login again")


def login_loopback(
    sender: Sender,
    show: Callable[[str], None],
    open_browser: Callable[[str], object] | None,
    *,
    timeout: float = LOOPBACK_TIMEOUT,
) -> None:
    """Installed-app login with a loopback redirect and PKCE (Google; its device flow refuses the mail scope).

    Listens on 127.0.0.1 (an ephemeral port), ``show``s the authorization
    URL (and opens it with ``open_browser`` unless None), takes the code the
    browser brings back, checks ``state``, exchanges it with the PKCE
    verifier and stores the refresh token.
    """
    import base64
    import hashlib
    import secrets as random
    from http.server import BaseHTTPRequestHandler, HTTPServer

    settings = sender.oauth2
    assert settings is not None and settings.client_id
    if not settings.auth_url:
        raise OAuthError(f"sender {sender.key!r}: no authorization endpoint is known for {settings.token_url}")
    verifier = random.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    state = random.token_urlsafe(16)
    received: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if "code" in query or "error" in query:
                received.update(query)
            ok = "code" in query and query.get("state") == state
            body = ("Signed in: you can close this window." if ok else "Sign-in failed: see the terminal.").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the URL carries the code: never printed

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    try:
        redirect_uri = f"http://127.0.0.1:{httpd.server_port}/"
        params = {
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": settings.scope or "",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": state,
            "access_type": "offline",  # Google: return a refresh token
            "prompt": "consent",  # ... also when the account consented before
            "login_hint": sender.username,
        }
        url = f"{settings.auth_url}?{urllib.parse.urlencode(params)}"
        show(f"Open this URL in a browser on this machine and sign in as {sender.email}:\n{url}")
        if open_browser is not None:
            open_browser(url)
        httpd.timeout = 1.0
        deadline = time.monotonic() + timeout
        while not received and time.monotonic() < deadline:
            httpd.handle_request()  # returns after one request or the 1 s timeout
    finally:
        httpd.server_close()
    if not received:
        raise OAuthError(f"sender {sender.key!r}: no answer from the browser within {timeout:g} s; run the login again")
    if received.get("state") != state:
        raise OAuthError(
            f"sender {sender.key!r}: the browser's answer does not match this login (state); nothing stored"
        )
    if "code" not in received:
        raise OAuthError(
            f"sender {sender.key!r}: the sign-in failed ({received.get('error', 'no code')}); nothing stored"
        )
    form = {
        **_client_form(sender, settings),
        "grant_type": "authorization_code",
        "code": received["code"],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    _store_login(sender, post_form(settings.token_url or "", form, sender.key))
