"""OAuth2 senders: config, SASL XOAUTH2, token refresh and rotation, invalid_grant failover, the oauth commands.

Against a real loopback token endpoint and a real aiosmtpd server that accepts
XOAUTH2 only with a currently valid access token (tests/oauth_servers.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keyring
import pytest
import yaml

from mailops import oauth
from mailops.config import parse_config
from mailops.errors import ConfigError
from mailops.oauth import OAuth2Settings
from mailops.transport import SmtpFailure, SmtpSession
from tests.fixtures_cli import epoch, log_json, popen_mailops, run_mailops
from tests.fixtures_home import TEST_BACKEND
from tests.fixtures_smtp import _server_context, make_sender
from tests.keyring_backend import FileKeyring, ReadOnlyKeyring, read_entries, write_entry
from tests.oauth_servers import CLIENT_ID, XOAUTH2_REFUSED, OAuthSmtpServer, TokenEndpoint

PASSWORD = "s3cret-pass"


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    oauth.forget_tokens()
    yield
    oauth.forget_tokens()


@pytest.fixture
def endpoint(server_cert, ca_file, monkeypatch):
    """The token endpoint over TLS; mailops (this process and the ones it starts) trusts the test CA through
    SSL_CERT_FILE, as urllib's default context does the system's: no switch turns verification off."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = TokenEndpoint(tls_context=_server_context(server_cert))
    yield server
    server.close()


@pytest.fixture
def oauth_smtp(endpoint, server_cert, ca_file):
    started = []

    def start(**options: Any) -> OAuthSmtpServer:
        server = OAuthSmtpServer(endpoint, tls_context=_server_context(server_cert), ca_file=ca_file, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def _oauth2(endpoint: TokenEndpoint) -> dict[str, str]:
    return {"client_id": CLIENT_ID, "token_url": endpoint.token_url, "scope": "https://mail.google.com/"}


def _settings(endpoint: TokenEndpoint, **keys: Any) -> OAuth2Settings:
    return OAuth2Settings(**{"client_id": CLIENT_ID, "token_url": endpoint.token_url, "scope": "s", **keys})


# ---------------------------------------------------------------- config


def _parse(oauth2: Any, tmp_path: Path, **sender: Any) -> Any:
    data = {"senders": {"m365": {"email": "ops@example.com", "host": "smtp.office365.com", "oauth2": oauth2, **sender}}}
    return parse_config(data, tmp_path / "senders.yaml").senders["m365"]


def test_microsoft_and_gmail_hosts_give_the_token_url_and_scope(tmp_path):
    m365 = _parse({"client_id": "abc"}, tmp_path).oauth2
    assert m365.token_url == "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
    assert m365.scope == "https://outlook.office.com/SMTP.Send offline_access"
    assert m365.device_url == "https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode"
    tenant = _parse({"client_id": "abc", "tenant": "contoso.onmicrosoft.com"}, tmp_path).oauth2
    assert tenant.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    gmail = _parse({"client_id": "abc"}, tmp_path, host="smtp.gmail.com").oauth2
    assert (gmail.token_url, gmail.scope, gmail.family) == (
        "https://oauth2.googleapis.com/token",
        "https://mail.google.com/",
        "google",
    )
    command = _parse({"token_command": "get-token ops"}, tmp_path).oauth2
    assert command == OAuth2Settings(token_command="get-token ops")


def test_provider_preset_gives_the_oauth2_defaults(tmp_path):
    def parse(provider: str, oauth2: dict[str, str]) -> Any:
        sender = {"email": "ops@example.com", "provider": provider, "oauth2": oauth2}
        return parse_config({"senders": {"s": sender}}, tmp_path / "senders.yaml").senders["s"].oauth2

    assert parse("microsoft365", {"client_id": "a"}).token_url == (
        "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"
    )
    assert parse("outlook", {"client_id": "a"}).token_url == (
        "https://login.microsoftonline.com/consumers/oauth2/v2.0/token"
    )
    assert parse("google-workspace", {"client_id": "a"}).family == "google"
    with pytest.raises(ConfigError) as caught:
        parse("yahoo", {"client_id": "a"})
    assert str(caught.value).endswith("senders.s.oauth2.token_url: required key is missing (no provider to take it "
        "from); add it, or use a provider host such as smtp.office365.com or smtp.gmail.com")  # fmt: skip


@pytest.mark.parametrize(
    ("oauth2", "sender", "message"),
    [
        ({"client_id": "a", "client_secret": "x"}, {}, "senders.m365.oauth2.client_secret: secrets do not belong in senders.yaml; use client_secret_command: a command that prints it"),
        ({"client_id": "a", "refresh_token": "x"}, {}, "senders.m365.oauth2.refresh_token: secrets do not belong in senders.yaml; delete the key and run 'mailops oauth login SENDER' (or 'mailops oauth token SENDER --stdin')"),
        ({"client_id": "a", "scopes": "x"}, {}, "senders.m365.oauth2.scopes: unknown key; did you mean 'scope'?"),
        ({"token_command": "t", "client_id": "a"}, {}, "senders.m365.oauth2.client_id: not used with token_command (mailops does no OAuth itself then: the command prints the access token); remove client_id or token_command"),
        ({"tenant": "x"}, {}, "senders.m365.oauth2.client_id: required key is missing; add the application (client) ID registered with the provider, or use token_command"),
        ({"client_id": "a"}, {"host": "mail.example.com"}, "senders.m365.oauth2.token_url: required key is missing (no provider to take it from); add it, or use a provider host such as smtp.office365.com or smtp.gmail.com"),
        ({"client_id": "a", "tenant": "x"}, {"host": "smtp.gmail.com"}, "senders.m365.oauth2.tenant: only for Microsoft senders (provider microsoft365 or outlook); remove it"),
        ({"client_id": "a", "token_url": "http://login.example.com/token"}, {}, "senders.m365.oauth2.token_url: must be an https:// URL (http:// only for 127.0.0.1, ::1 or localhost) (got 'http://login.example.com/token')"),
        ({"client_id": ""}, {}, "senders.m365.oauth2.client_id: must be non-empty text (got '')"),
        ("abc", {}, "senders.m365.oauth2: must be a mapping with client_id (and token_url, scope when the provider is not known), or with token_command (got str)"),
        ({"client_id": "a"}, {"password_command": "pass x"}, "senders.m365.password_command: an oauth2: sender logs in with an access token; remove password_command or oauth2"),
    ],
)  # fmt: skip
def test_bad_oauth2_settings_are_one_line_naming_file_and_key(tmp_path, oauth2, sender, message):
    with pytest.raises(ConfigError) as caught:
        _parse(oauth2, tmp_path, **sender)
    assert str(caught.value) == f"{tmp_path / 'senders.yaml'}: {message}"


def test_http_token_url_is_allowed_for_loopback_only(tmp_path):
    for url in ("http://127.0.0.1:8080/token", "http://localhost/token", "http://[::1]:9/token"):
        assert (
            _parse(
                {"client_id": "a", "token_url": url, "scope": "s"}, tmp_path, host="mail.example.com"
            ).oauth2.token_url
            == url
        )


def test_bad_oauth2_in_senders_yaml_exits_2_and_sends_nothing(workspace, cli, oauth_smtp):
    srv = oauth_smtp()
    workspace.write_config(
        {"m365": workspace.sender(srv, password=None, oauth2={"client_id": "a", "access_token": "x"})}
    )

    result = cli("send", "--to", "a@example.org", "--subject", "s", "--body", "b")

    assert result.exit_code == 2
    assert result.stderr.strip().endswith("senders.m365.oauth2.access_token: secrets do not belong in senders.yaml; "
        "delete the key and run 'mailops oauth login SENDER' (or 'mailops oauth token SENDER --stdin')")  # fmt: skip
    assert srv.commands == []


# ---------------------------------------------------------------- XOAUTH2 in the session


def test_xoauth2_login_with_a_refreshed_token(monkeypatch, endpoint, oauth_smtp):
    srv = oauth_smtp()
    monkeypatch.setenv("MAILOPS_OAUTH_SALES", endpoint.new_refresh_token())
    session = SmtpSession(make_sender(srv, oauth2=_settings(endpoint)), "")
    session.open()
    session.close()

    assert (session.auth_mechanism, session.auth_ok, session.auth_reply[0]) == ("XOAUTH2", True, 235)
    assert srv.auth_attempts == [("XOAUTH2", "sales@example.com", True)]
    assert endpoint.refreshes == 1
    request = endpoint.requests[0]
    assert (request["grant_type"], request["client_id"], request["scope"]) == ("refresh_token", CLIENT_ID, "s")


def test_refused_token_gets_the_empty_response_then_one_fresh_token_then_the_server_reply(
    tmp_path, oauth_smtp, endpoint
):
    srv = oauth_smtp()
    # a token_command printing a token the server does not know: refused both times
    session = SmtpSession(make_sender(srv, oauth2=OAuth2Settings(token_command="echo at-bogus")), "")

    with pytest.raises(SmtpFailure) as caught:
        session.open()

    assert (caught.value.step, caught.value.kind, caught.value.code) == ("auth", "auth", 535)
    assert caught.value.text == (
        f"{XOAUTH2_REFUSED.removeprefix('535 ')} (token refused: status 401, scope https://mail.google.com/)"
    )
    assert caught.value.sender_problem
    assert srv.auth_attempts == [("XOAUTH2", "sales@example.com", False)] * 2  # once more with a fresh token
    assert srv.empty_responses == 2  # the failure challenge was answered, as RFC 7628 wants
    assert srv.commands.count("QUIT") == 1 and "MAIL" not in srv.commands


def test_a_token_the_server_stops_accepting_is_refreshed_once(monkeypatch, endpoint, oauth_smtp):
    srv = oauth_smtp()
    monkeypatch.setenv("MAILOPS_OAUTH_SALES", endpoint.new_refresh_token())
    sender = make_sender(srv, oauth2=_settings(endpoint))
    first = SmtpSession(sender, "")
    first.open()
    first.close()
    with endpoint._lock:
        endpoint.access_tokens.clear()  # revoked early: the client still thinks it is good for an hour

    second = SmtpSession(sender, "")
    second.open()
    second.close()

    assert second.auth_ok
    assert [a.succeeded for a in srv.auth_attempts] == [True, False, True]
    assert endpoint.refreshes == 2


def test_access_token_is_cached_and_refreshed_before_it_expires(monkeypatch, endpoint):
    endpoint.expires_in = 120
    monkeypatch.setenv("MAILOPS_OAUTH_SALES", endpoint.new_refresh_token())
    sender = make_sender(oauth2=_settings(endpoint))
    now = [1000.0]

    first = oauth.access_token(sender, clock=lambda: now[0])
    now[0] += 59  # within its lifetime less the 60 s margin
    assert oauth.access_token(sender, clock=lambda: now[0]) == first
    assert endpoint.refreshes == 1
    now[0] += 2  # 61 s: less than a minute left, refreshed before it runs out
    assert oauth.access_token(sender, clock=lambda: now[0]) != first
    assert endpoint.refreshes == 2


def test_a_refused_token_is_refreshed_once_for_all_connections(monkeypatch, endpoint):
    monkeypatch.setenv("MAILOPS_OAUTH_SALES", endpoint.new_refresh_token())
    sender = make_sender(oauth2=_settings(endpoint))
    old = oauth.access_token(sender)

    fresh = oauth.access_token(sender, refused=old)  # the first connection the server refused
    assert oauth.access_token(sender, refused=old) == fresh  # a second connection refused the same old one

    assert fresh != old and endpoint.refreshes == 2


def test_invalid_grant_is_one_line_naming_the_login_command(monkeypatch, endpoint):
    monkeypatch.setenv("MAILOPS_OAUTH_SUPPORT", "rt-revoked")
    with pytest.raises(oauth.OAuthError) as caught:
        oauth.access_token(make_sender(key="support", oauth2=_settings(endpoint)))
    assert str(caught.value) == (
        f"sender 'support': the OAuth refresh token was refused by 127.0.0.1:{endpoint.token_url.split(':')[2].split('/')[0]} "
        "(invalid_grant: revoked, expired or replaced); run 'mailops oauth login support'"
    )


def test_unreachable_token_endpoint_is_an_auth_failure_of_the_sender(monkeypatch, closed_port, oauth_smtp, endpoint):
    srv = oauth_smtp()
    monkeypatch.setenv("MAILOPS_OAUTH_SALES", "rt-x")
    settings = _settings(endpoint, token_url=f"http://127.0.0.1:{closed_port}/token")
    with pytest.raises(SmtpFailure) as caught:
        SmtpSession(make_sender(srv, oauth2=settings), "").open()
    assert caught.value.kind == "auth" and caught.value.sender_problem
    assert caught.value.text.startswith(f"sender 'sales': cannot reach the token endpoint 127.0.0.1:{closed_port} (")
    assert caught.value.text.endswith("); check token_url and the network")
    assert srv.auth_attempts == []


# ---------------------------------------------------------------- end to end


def _grep_everywhere(workspace, tokens: list[str], outputs: str, keyring_file: Path) -> list[str]:
    """Tokens found in the command output, the database or any file of the workspace (the keyring excepted)."""
    found = [t for t in tokens if t in outputs]
    for path in [*workspace.root.rglob("*"), *workspace.db_path.parent.glob("mailops.db*")]:
        if path.is_file() and path != keyring_file:
            data = path.read_bytes()
            found += [f"{t} in {path.name}" for t in tokens if t.encode() in data]
    for row in workspace.query("SELECT * FROM messages"):
        found += [t for t in tokens if t in repr(row)]
    return found


def test_a_send_outlives_three_access_tokens_and_keeps_the_rotated_refresh_token(
    workspace, cli, endpoint, oauth_smtp, keyring_file
):
    endpoint.uses_per_token = 2  # each access token is good for two logins, then the server refuses it
    srv = oauth_smtp()
    workspace.write_config(
        {
            "m365": workspace.sender(
                srv, email="ops@example.com", password=None, oauth2=_oauth2(endpoint), max_per_connection=1
            )
        }
    )
    stored = cli("oauth", "token", "m365", "--stdin", input=endpoint.new_refresh_token() + "\n")
    assert stored.exit_code == 0, stored.output
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(6)])

    result = cli("send", "--sender", "m365", "--data", data, "--subject", "Hello", "--body", "Hi")

    assert result.exit_code == 0, result.output
    assert len(srv.messages) == 6 and {m.username for m in srv.messages} == {"ops@example.com"}
    assert endpoint.refreshes == 3  # first token, then a fresh one each time the server refused the old one
    assert [a.succeeded for a in srv.auth_attempts] == [True, True, False, True, True, False, True, True]
    # every refresh rotated the refresh token; the keyring holds the current one
    keyring_token = read_entries(keyring_file)["mailops"]["oauth2:m365"]
    assert endpoint.refresh_tokens == {keyring_token}
    log = log_json(cli)
    assert Counter(r["outcome"] for r in log) == {"sent": 6}
    status = cli("password", "status", "--json")
    outputs = stored.output + result.output + json.dumps(log) + status.output
    assert _grep_everywhere(workspace, endpoint.issued, outputs, keyring_file) == []


def test_invalid_grant_skips_the_sender_and_fails_over(workspace, cli, endpoint, oauth_smtp, smtp_server, keyring_file):
    srv = oauth_smtp()
    relay = smtp_server(users={"finance@example.com": PASSWORD})
    workspace.write_config(
        {
            "m365": workspace.sender(srv, email="ops@example.com", password=None, oauth2=_oauth2(endpoint), priority=1),
            "finance": workspace.sender(relay, email="finance@example.com", password=PASSWORD, priority=2),
        },
        routes={"default": ["m365", "finance"]},
    )
    write_entry(keyring_file, "mailops", "oauth2:m365", endpoint.new_refresh_token())
    endpoint.revoke()
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(3)])

    result = cli("send", "--data", data, "--subject", "Hello", "--body", "Hi")

    assert result.exit_code == 0, result.output
    assert len(relay.messages) == 3 and srv.messages == [] and srv.auth_attempts == []
    log = log_json(cli)
    assert Counter((r["sender"], r["outcome"]) for r in log)[("finance", "sent")] == 3
    port = endpoint.token_url.split(":")[2].split("/")[0]
    line = (
        f"sender 'm365': the OAuth refresh token was refused by 127.0.0.1:{port} (invalid_grant: revoked, expired or "
        "replaced); run 'mailops oauth login m365'"
    )
    assert f"  m365: auth: {line}" in result.output.splitlines()
    failed = [r for r in log if r["sender"] == "m365"]
    assert failed and all(r["outcome"] == "failed" and r["smtp_text"] == line for r in failed)


def test_test_smtp_checks_refresh_then_auth(workspace, cli, endpoint, oauth_smtp, keyring_file):
    srv = oauth_smtp()
    workspace.write_config(
        {"m365": workspace.sender(srv, email="ops@example.com", password=None, oauth2=_oauth2(endpoint))}
    )
    write_entry(keyring_file, "mailops", "oauth2:m365", endpoint.new_refresh_token())

    ok = cli("test-smtp", "m365")
    assert ok.exit_code == 0, ok.output
    assert "  auth: XOAUTH2 235 accepted" in ok.stdout.splitlines()

    doctor = cli("doctor", "--connect")
    assert "m365: connected to" in doctor.output and "and logged in" in doctor.output

    endpoint.revoke()
    oauth.forget_tokens()  # a new run
    failed = cli("test-smtp", "m365")
    assert failed.exit_code == 1
    assert (
        f"  error: sender 'm365': the OAuth refresh token was refused by 127.0.0.1:{endpoint.token_url.split(':')[2].split('/')[0]} "
        "(invalid_grant: revoked, expired or replaced); run 'mailops oauth login m365'"
    ) in failed.stdout.splitlines()
    assert _grep_everywhere(workspace, endpoint.issued, ok.output + failed.output, keyring_file) == []


def test_password_status_and_doctor_show_where_oauth_tokens_come_from(
    workspace, cli, endpoint, oauth_smtp, keyring_file, monkeypatch
):
    srv = oauth_smtp()
    workspace.write_config(
        {
            "kr": workspace.sender(srv, password=None, oauth2=_oauth2(endpoint)),
            "envtok": workspace.sender(srv, password=None, oauth2=_oauth2(endpoint)),
            "cmd": workspace.sender(srv, password=None, oauth2={"token_command": "echo x"}),
            "none": workspace.sender(srv, password=None, oauth2=_oauth2(endpoint)),
        }
    )
    write_entry(keyring_file, "mailops", "oauth2:kr", "rt-kr")
    monkeypatch.setenv("MAILOPS_OAUTH_ENVTOK", "rt-env")

    status = json.loads(cli("password", "status", "--json").stdout)
    assert {r["sender"]: r["source"] for r in status["senders"]} == {
        "kr": "oauth2 refresh token: keyring",
        "envtok": "oauth2 refresh token: env",
        "cmd": "oauth2: token_command",
        "none": "oauth2 refresh token: missing",
    }
    doctor = cli("doctor")
    assert doctor.exit_code == 1
    assert (
        "no OAuth refresh token for sender 'none': run 'mailops oauth login none' "
        "(or set MAILOPS_OAUTH_NONE on a headless machine)"
    ) in doctor.output
    assert "rt-kr" not in doctor.output and "rt-env" not in doctor.output


def test_oauth_token_refuses_a_sender_without_oauth2(workspace, cli, smtp_server, keyring_file):
    srv = smtp_server()
    workspace.write_config({"sales": workspace.sender(srv)})
    result = cli("oauth", "token", "sales", "--stdin", input="rt-x\n")
    assert result.exit_code == 2
    assert result.stderr.strip().endswith(
        f"sender 'sales' has no oauth2: in {workspace.config_path}; add it (see senders.yaml.example) first"
    )
    assert "oauth2:sales" not in read_entries(keyring_file).get("mailops", {})


# ---------------------------------------------------------------- oauth login


def test_oauth_login_device_code_prints_url_and_code_polls_and_stores(
    workspace, cli, endpoint, oauth_smtp, keyring_file
):
    srv = oauth_smtp()
    workspace.write_config(
        {"m365": workspace.sender(srv, email="ops@example.com", password=None, oauth2=_oauth2(endpoint))}
    )

    result = cli("oauth", "login", "m365")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "To sign in as ops@example.com, open https://microsoft.com/devicelogin and enter the code ABCD-EFGH (valid 15 minutes)",
        f"stored the OAuth refresh token of m365 in the keyring ({TEST_BACKEND})",
    ]
    assert endpoint.polls == 3  # twice "authorization_pending", then approved
    stored = read_entries(keyring_file)["mailops"]["oauth2:m365"]
    assert stored in endpoint.refresh_tokens
    check = cli("test-smtp", "m365")
    assert check.exit_code == 0, check.output
    assert _grep_everywhere(workspace, endpoint.issued, result.output + check.output, keyring_file) == []


def _google_sender(endpoint: TokenEndpoint) -> Any:
    settings = _settings(
        endpoint,
        family="google",
        auth_url="https://accounts.example.com/o/oauth2/v2/auth",
        scope="https://mail.google.com/",
    )
    return make_sender(key="gmail", email="ops@example.com", oauth2=settings)


def _browser(code: str = "auth-code-1", state: str | None = None) -> tuple[Any, list[str], list[threading.Thread]]:
    """A 'browser' that signs in and is sent back to the redirect URI (in a thread, as a real one is)."""
    opened: list[str] = []
    threads: list[threading.Thread] = []

    def open_browser(url: str) -> None:
        opened.append(url)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        back = f"{query['redirect_uri']}?" + urllib.parse.urlencode({"code": code, "state": state or query["state"]})
        thread = threading.Thread(target=lambda: urllib.request.urlopen(back, timeout=10).read())
        thread.start()
        threads.append(thread)

    return open_browser, opened, threads


def test_google_loopback_login_with_pkce_stores_the_refresh_token(endpoint, keyring_file):
    open_browser, opened, threads = _browser()
    shown: list[str] = []

    oauth.login_loopback(_google_sender(endpoint), shown.append, open_browser, timeout=30)
    for thread in threads:
        thread.join(10)

    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(opened[0]).query))
    assert opened[0].startswith("https://accounts.example.com/o/oauth2/v2/auth?")
    assert shown == [f"Open this URL in a browser on this machine and sign in as ops@example.com:\n{opened[0]}"]
    assert (query["response_type"], query["code_challenge_method"], query["access_type"], query["scope"]) == (
        "code", "S256", "offline", "https://mail.google.com/"
    )  # fmt: skip
    assert query["redirect_uri"].startswith("http://127.0.0.1:")
    (exchange,) = endpoint.code_exchanges
    verifier = exchange["code_verifier"]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert challenge == query["code_challenge"]
    assert (exchange["redirect_uri"], exchange["code"]) == (query["redirect_uri"], "auth-code-1")
    assert read_entries(keyring_file)["mailops"]["oauth2:gmail"] in endpoint.refresh_tokens


def test_google_loopback_login_refuses_an_answer_for_another_login(endpoint, keyring_file):
    open_browser, _, threads = _browser(state="forged")

    with pytest.raises(oauth.OAuthError) as caught:
        oauth.login_loopback(_google_sender(endpoint), lambda text: None, open_browser, timeout=30)
    for thread in threads:
        thread.join(10)

    assert str(caught.value) == (
        "sender 'gmail': the browser's answer does not match this login (state); nothing stored"
    )
    assert endpoint.code_exchanges == []
    assert "oauth2:gmail" not in read_entries(keyring_file).get("mailops", {})


# ---------------------------------------------------------------- TLS to the token endpoint; Google through the CLI


def test_the_token_endpoints_certificate_is_verified(monkeypatch, endpoint, keyring_file):
    write_entry(keyring_file, "mailops", "oauth2:m365", endpoint.new_refresh_token())
    monkeypatch.delenv("SSL_CERT_FILE")  # the test CA is no longer trusted: the system store does not hold it
    sender = make_sender(key="m365", email="ops@example.com", oauth2=_settings(endpoint))
    with pytest.raises(oauth.OAuthError) as caught:
        oauth.access_token(sender)
    port = endpoint.token_url.split(":")[2].split("/")[0]
    message = str(caught.value)
    assert message.startswith(f"sender 'm365': the certificate of the token endpoint 127.0.0.1:{port} was refused (")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert message.endswith("); trust a private CA with SSL_CERT_FILE=/path/to/ca.pem, or check token_url")
    assert endpoint.requests == []  # no form (no refresh token) went to a server that was not verified


def _google_config(workspace, srv, endpoint) -> None:
    oauth2 = {"client_id": CLIENT_ID, "token_url": endpoint.token_url}
    # provider gmail: the loopback flow and Google's scope; host and port point at the local test server
    sender = workspace.sender(srv, email="ops@example.com", password=None, provider="gmail", oauth2=oauth2)
    workspace.write_config({"gmail": sender})


_BROWSER_SCRIPT = """#!{python}
# A stand-in for the user's browser: mailops runs it with the sign-in URL ($BROWSER), the user signs in, and
# the provider sends the browser back to mailops' loopback redirect with a code. It answers from a child
# process and returns at once, as a browser does (mailops serves the redirect only once the browser started).
import subprocess, sys
url = sys.argv[1]
open({log!r}, "a").write(url + "\\n")
code = '''
import sys, urllib.parse, urllib.request
query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(sys.argv[1]).query))
back = query["redirect_uri"] + "?" + urllib.parse.urlencode({{"code": "auth-code-1", "state": query["state"]}})
urllib.request.urlopen(back, timeout=30).read()
'''
subprocess.Popen([sys.executable, "-c", code, url], start_new_session=True)
"""


def _fake_browser(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "browser.log"
    script = tmp_path / "fake-browser"
    script.write_text(_BROWSER_SCRIPT.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    return script, log


def test_google_login_through_the_cli_opens_the_browser_and_stores_the_token(
    workspace, endpoint, oauth_smtp, keyring_file, tmp_path
):
    srv = oauth_smtp()
    _google_config(workspace, srv, endpoint)
    browser, opened = _fake_browser(tmp_path)

    result = run_mailops("oauth", "login", "gmail", env={"BROWSER": str(browser)})

    assert result.exit_code == 0, result.stderr
    [url] = opened.read_text().splitlines()
    assert result.stdout.splitlines() == [
        "Open this URL in a browser on this machine and sign in as ops@example.com:",
        url,
        f"stored the OAuth refresh token of gmail in the keyring ({TEST_BACKEND})",
    ]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    assert (query["client_id"], query["scope"], query["code_challenge_method"]) == (
        CLIENT_ID, "https://mail.google.com/", "S256"
    )  # fmt: skip
    (exchange,) = endpoint.code_exchanges  # over TLS, verified against the test CA
    assert (exchange["code"], exchange["redirect_uri"]) == ("auth-code-1", query["redirect_uri"])
    assert read_entries(keyring_file)["mailops"]["oauth2:gmail"] in endpoint.refresh_tokens
    check = run_mailops("test-smtp", "gmail")
    assert check.exit_code == 0, check.stdout + check.stderr
    assert "  auth: XOAUTH2 235 accepted" in check.stdout.splitlines()
    assert srv.auth_attempts[-1].username == "ops@example.com"
    assert (
        _grep_everywhere(workspace, endpoint.issued, result.stdout + result.stderr + check.stdout, keyring_file) == []
    )


def test_google_login_with_no_browser_only_prints_the_url(workspace, endpoint, oauth_smtp, keyring_file, tmp_path):
    srv = oauth_smtp()
    _google_config(workspace, srv, endpoint)
    browser, opened = _fake_browser(tmp_path)
    proc = popen_mailops("oauth", "login", "gmail", "--no-browser", env={**os.environ, "BROWSER": str(browser)})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed (and flushed) before mailops waits for the browser
        url = proc.stdout.readline().strip()
        # the user opens the URL on this machine (or through an SSH tunnel) and signs in
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        back = f"{query['redirect_uri']}?" + urllib.parse.urlencode({"code": "auth-code-1", "state": query["state"]})
        with urllib.request.urlopen(back, timeout=30) as answer:
            page = answer.read().decode()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err) == (0, "")
    assert first == "Open this URL in a browser on this machine and sign in as ops@example.com:\n"
    assert out.splitlines() == [f"stored the OAuth refresh token of gmail in the keyring ({TEST_BACKEND})"]
    assert page == "Signed in: you can close this window."
    assert not opened.exists()  # --no-browser: no browser was started
    assert read_entries(keyring_file)["mailops"]["oauth2:gmail"] in endpoint.refresh_tokens


# ---------------------------------------------------------------- password status: the access token; a rotation not stored


def test_password_status_shows_when_the_access_token_expires(workspace, cli, endpoint, oauth_smtp, keyring_file):
    srv = oauth_smtp()
    workspace.write_config(
        {
            "m365": workspace.sender(srv, email="ops@example.com", password=None, oauth2=_oauth2(endpoint)),
            "cmd": workspace.sender(srv, password=None, oauth2={"token_command": "echo x"}),
        }
    )
    write_entry(keyring_file, "mailops", "oauth2:m365", endpoint.new_refresh_token())

    def status() -> dict[str, Any]:
        result = cli("password", "status", "--json")
        assert result.exit_code == 0, result.output
        return {r["sender"]: r for r in json.loads(result.stdout)["senders"]}

    before = status()
    assert (before["m365"]["access_token"], before["m365"]["access_token_expires_at"]) == ("none", None)
    assert before["m365"]["source"] == "oauth2 refresh token: keyring"
    assert "OAuth token: stored (keyring); no access token yet (one is fetched at the first send or test-smtp)" in (
        cli("password", "status").stdout
    )
    assert "access_token" not in before["cmd"]  # token_command: mailops knows nothing of that token's life

    started = time.time()
    assert cli("test-smtp", "m365").exit_code == 0
    after = status()["m365"]
    assert after["access_token"] == "valid"
    expires = epoch(after["access_token_expires_at"])  # ISO 8601 to the millisecond, as every --json time
    assert started + 3600 - 0.001 <= expires <= time.time() + 3600
    table = cli("password", "status")
    until = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert f"OAuth token: stored (keyring); access token valid until {until}" in table.stdout
    assert " UTC" in table.stdout

    endpoint.expires_in = 0  # the next token is already expired when password status looks
    oauth.forget_tokens()
    assert cli("test-smtp", "m365").exit_code == 0
    expired = status()["m365"]
    assert expired["access_token"] == "expired"
    table = cli("password", "status")
    assert "OAuth token: stored (keyring); access token expired " in table.stdout
    assert "(a new one is fetched when needed)" in table.stdout
    outputs = json.dumps([before, after, expired]) + table.output
    assert _grep_everywhere(workspace, endpoint.issued, outputs, keyring_file) == []


def test_a_rotated_refresh_token_the_keyring_refuses_is_a_warning_and_a_doctor_problem(
    workspace, cli, endpoint, oauth_smtp, keyring_file
):
    srv = oauth_smtp()
    workspace.write_config(
        {"m365": workspace.sender(srv, email="ops@example.com", password=None, oauth2=_oauth2(endpoint))}
    )
    old = endpoint.new_refresh_token()
    write_entry(keyring_file, "mailops", "oauth2:m365", old)
    keyring.set_keyring(ReadOnlyKeyring())  # reads work, storing fails (a locked collection)
    try:
        result = cli("send", "--sender", "m365", "--to", "a@example.org", "--subject", "S", "--body", "B", "-q")
    finally:
        keyring.set_keyring(FileKeyring())

    assert (result.exit_code, result.stdout) == (0, "")  # the message went, with the new token
    assert len(srv.messages) == 1 and endpoint.refreshes == 1
    [line] = result.stderr.splitlines()  # also with -q: the operator must act before a later run
    assert line.startswith(
        "mailops: warning: sender 'm365': the token endpoint replaced the OAuth refresh token, but the new one could "
        "not be stored ("
    )
    assert line.endswith(
        "); this run used it, a later run may be refused: fix the keyring, then run 'mailops oauth login m365'"
    )
    assert read_entries(keyring_file)["mailops"]["oauth2:m365"] == old  # unchanged: the store failed
    problem = line.removeprefix("mailops: warning: ")
    doctor = cli("doctor")
    assert doctor.exit_code == 1
    assert f"PROBLEM  {problem}" in doctor.stdout.splitlines()

    # logging in again stores a new token: the problem is over
    stored = cli("oauth", "token", "m365", "--stdin", input=endpoint.new_refresh_token() + "\n")
    assert stored.exit_code == 0, stored.output
    assert problem not in cli("doctor").stdout
    outputs = result.output + doctor.output + stored.output
    assert _grep_everywhere(workspace, endpoint.issued, outputs, keyring_file) == []


def test_init_has_a_commented_oauth2_sender_that_works_once_uncommented(workspace, cli, tmp_path):
    target = tmp_path / "new"
    assert cli("init", str(target)).exit_code == 0
    text = (target / "senders.yaml").read_text()
    assert "  # support:\n" in text and "#   oauth2:\n" in text
    # uncomment the example block: its keys are valid as written
    lines = text.splitlines()
    start = lines.index("  # support:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line)
    uncommented = ["  " + line[4:] for line in block if not line.lstrip("# ").startswith("client_secret_command")]
    (target / "senders.yaml").write_text("\n".join(lines[:start] + uncommented + lines[start + len(block) :]) + "\n")
    config = parse_config(yaml.safe_load((target / "senders.yaml").read_text()), target / "senders.yaml")
    support = config.senders["support"]
    assert support.oauth2 is not None and support.oauth2.family == "microsoft"
    assert support.oauth2.token_url == "https://login.microsoftonline.com/example.com/oauth2/v2.0/token"
