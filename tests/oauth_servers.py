"""A loopback OAuth2 token endpoint and an SMTP server that accepts only its access tokens (SASL XOAUTH2).

:class:`TokenEndpoint` is a real HTTPS server (``http.server`` in a thread on
127.0.0.1, its certificate made by trustme, as the SMTP servers' are; the
client trusts the test CA through ``SSL_CERT_FILE``, which the standard
library's default context honours) speaking the parts of RFC 6749 / RFC 8628
mailops uses:

* ``POST /token`` with ``grant_type=refresh_token``: a new access token and,
  when ``rotate`` is on, a new refresh token (the old one stops working, as
  with providers that rotate); an unknown or revoked refresh token gets
  ``400 {"error": "invalid_grant"}``;
* ``POST /devicecode`` and ``POST /token`` with the device-code grant:
  ``authorization_pending`` for the first ``approve_after_polls`` polls (or
  until :meth:`TokenEndpoint.approve`), then tokens;
* ``POST /token`` with ``grant_type=authorization_code``: tokens for the code
  ``auth-code-1`` (what the test's "browser" brings back), ``invalid_grant``
  for any other.

Access tokens expire by use, not by time (tests never wait on a clock): each
one is good for ``uses_per_token`` logins, then the SMTP server refuses it as
expired. :meth:`revoke` invalidates every refresh and access token.

:class:`OAuthSmtpServer` is :class:`LocalSmtpServer` offering AUTH XOAUTH2
only; a refused token gets the 334 JSON error challenge, and after the
client's empty answer a 535, as Gmail and Exchange Online do.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from tests.smtp_servers import AuthAttempt, LocalSmtpServer

CLIENT_ID = "test-client-id"
XOAUTH2_REFUSED = "535 5.7.8 Username and Password not accepted"


class TokenEndpoint:
    """OAuth2 token (and device-code) endpoint on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        rotate: bool = True,
        uses_per_token: int = 1000,
        expires_in: int = 3600,
        approve_after_polls: int = 2,
    ) -> None:
        self.rotate = rotate
        self.approve_after_polls = approve_after_polls  # device-code polls answered "pending" before approval
        self.polls = 0
        self.uses_per_token = uses_per_token
        self.expires_in = expires_in
        self.refresh_tokens: set[str] = set()
        self.access_tokens: dict[str, tuple[str, int]] = {}  # token -> (refresh token family, uses left)
        self.requests: list[dict[str, str]] = []  # every form posted, for assertions (tokens included)
        self.refreshes = 0
        self.issued: list[str] = []  # every token handed out (access and refresh), to grep outputs for
        self.code_exchanges: list[dict[str, str]] = []
        self._device: dict[str, bool] = {}  # device_code -> approved
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode("ascii")))
                status, body = endpoint._answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test's output must show only mailops

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls_context is not None:
            self._httpd.socket = tls_context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-endpoint", daemon=True)
        self._thread.start()

    @property
    def token_url(self) -> str:
        """The URL of the token endpoint."""
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_port}/token"

    @property
    def device_url(self) -> str:
        """The URL of the device-authorization endpoint."""
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_port}/devicecode"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------ token state

    def new_refresh_token(self) -> str:
        """A valid refresh token, as if the user had just logged in elsewhere."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens.add(token)
            self.issued.append(token)
        return token

    def revoke(self) -> None:
        """Invalidate every refresh and access token (a password change, an admin revoking sessions)."""
        with self._lock:
            self.refresh_tokens.clear()
            self.access_tokens.clear()

    def approve(self) -> None:
        """The user approves every pending device-code login."""
        with self._lock:
            for code in self._device:
                self._device[code] = True

    def use(self, token: str) -> bool:
        """True (and one use spent) when ``token`` is a current access token; called by the SMTP server."""
        with self._lock:
            entry = self.access_tokens.get(token)
            if entry is None:
                return False
            family, left = entry
            if left <= 1:
                del self.access_tokens[token]  # expired after this use
            else:
                self.access_tokens[token] = (family, left - 1)
            return True

    def _issue(self) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(24)
        refresh = "rt-" + secrets.token_urlsafe(24)
        self.access_tokens[access] = (refresh, self.uses_per_token)
        self.issued.extend([access, refresh])
        self.refresh_tokens.add(refresh)
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in, "refresh_token": refresh}

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(dict(form))
            if form.get("client_id") != CLIENT_ID:
                return 400, {"error": "invalid_client", "error_description": "unknown client"}
            if path == "/devicecode":
                code = "dc-" + secrets.token_urlsafe(12)
                self._device[code] = False
                return 200, {
                    "device_code": code,
                    "user_code": "ABCD-EFGH",
                    "verification_uri": "https://microsoft.com/devicelogin",
                    "expires_in": 900,
                    "interval": 0,
                }
            grant = form.get("grant_type")
            if grant == "refresh_token":
                old = form.get("refresh_token", "")
                if old not in self.refresh_tokens:
                    return 400, {"error": "invalid_grant", "error_description": "AADSTS70008: token expired or revoked"}
                self.refreshes += 1
                answer = self._issue()
                if self.rotate:
                    self.refresh_tokens.discard(old)
                else:
                    self.refresh_tokens.discard(answer.pop("refresh_token"))
                return 200, answer
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                approved = self._device.get(form.get("device_code", ""))
                if approved is None:
                    return 400, {"error": "expired_token"}
                self.polls += 1
                if not approved and self.polls <= self.approve_after_polls:
                    return 400, {"error": "authorization_pending"}
                del self._device[form["device_code"]]
                return 200, self._issue()
            if grant == "authorization_code":
                self.code_exchanges.append(dict(form))
                if form.get("code") != "auth-code-1":
                    return 400, {"error": "invalid_grant"}
                return 200, self._issue()
            return 400, {"error": "unsupported_grant_type"}


class OAuthSmtpServer(LocalSmtpServer):
    """A LocalSmtpServer that offers AUTH XOAUTH2 only and accepts the endpoint's current access tokens."""

    def __init__(self, endpoint: TokenEndpoint, **options: Any) -> None:
        options.setdefault("exclude_mechanisms", ("PLAIN", "LOGIN"))
        super().__init__(**options)
        self.endpoint = endpoint
        self.empty_responses = 0  # clients that answered the error challenge with an empty line

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 7628-style XOAUTH2: ``user=…^Aauth=Bearer …^A^A``; a refused token gets a 334 JSON challenge."""
        if len(args) < 2:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            blob = base64.b64decode(args[1])
        fields = dict(part.split("=", 1) for part in blob.decode().split("\x01") if "=" in part)
        username = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        ok = self.endpoint.use(token)
        with self._lock:
            self.auth_attempts.append(AuthAttempt("XOAUTH2", username, ok))
        if ok:
            return AuthResult(success=True, auth_data=username)
        error = json.dumps({"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"})
        answer = await server.challenge_auth(error)
        if answer == b"":
            with self._lock:
                self.empty_responses += 1
        return AuthResult(success=False, handled=False, message=XOAUTH2_REFUSED)
