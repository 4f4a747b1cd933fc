"""Access to the dashboard: a bearer token or HTTP basic auth, and CSRF checks for actions.

Both secrets are compared in constant time. The token also works from a browser: open
``/?token=...`` once and an HttpOnly, SameSite=Strict cookie carries it afterwards.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Names of environment variables and cookies, not secrets (hence the noqa for S105).
TOKEN_ENV = "PGFLOW_DASHBOARD_TOKEN"  # noqa: S105
USERNAME_ENV = "PGFLOW_DASHBOARD_USERNAME"
PASSWORD_ENV = "PGFLOW_DASHBOARD_PASSWORD"  # noqa: S105
TOKEN_COOKIE = "pgflow_dashboard_token"  # noqa: S105
CSRF_COOKIE = "pgflow_dashboard_csrf"
CSRF_FIELD = "csrf_token"

SECURITY_HEADERS = {
    # Only our own script and stylesheet run: even a value that slipped past escaping could
    # not execute inline script.
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


@dataclass(frozen=True, repr=False)
class TokenAuth:
    """Requests carry ``Authorization: Bearer <token>`` (or the cookie set by ``?token=``)."""

    token: str

    def __post_init__(self) -> None:
        if len(self.token) < 16:
            raise ValueError("the dashboard token must be at least 16 characters long")


@dataclass(frozen=True, repr=False)
class BasicAuth:
    """HTTP basic auth with one user name and password."""

    username: str
    password: str

    def __post_init__(self) -> None:
        if not self.username or not self.password:
            raise ValueError("basic auth needs a user name and a password")


Auth = TokenAuth | BasicAuth


def auth_from_environment(environ: Mapping[str, str] | None = None) -> Auth | None:
    """``PGFLOW_DASHBOARD_TOKEN``, else ``PGFLOW_DASHBOARD_USERNAME`` and ``..._PASSWORD``."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return TokenAuth(env[TOKEN_ENV])
    username, password = env.get(USERNAME_ENV), env.get(PASSWORD_ENV)
    if username or password:
        if not (username and password):
            raise ValueError(f"set both {USERNAME_ENV} and {PASSWORD_ENV} for basic auth")
        return BasicAuth(username, password)
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _cookies(headers: Headers) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


class AuthMiddleware:
    """Refuses every request that does not carry the configured credentials."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if isinstance(self.auth, BasicAuth):
            if _basic_ok(self.auth, headers):
                await self.app(scope, receive, send)
                return
            response: Response = PlainTextResponse(
                "authentication required",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="pgflow dashboard", charset="UTF-8"'},
            )
            await response(scope, receive, send)
            return
        if _token_ok(self.auth, headers):
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = query.pop("token", None)
        if given is not None and _same(given, self.auth.token):
            # Trade the token in the address for a cookie, then drop it from the address so it
            # stays out of history and Referer headers.
            root = scope.get("root_path", "")
            target = scope["path"] + ("?" + urlencode(query) if query else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                TOKEN_COOKIE,
                self.auth.token,
                httponly=True,
                samesite="strict",
                path=root or "/",
            )
            await response(scope, receive, send)
            return
        response = PlainTextResponse(
            "authentication required: send 'Authorization: Bearer <token>' or open ?token=<token>",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="pgflow dashboard"'},
        )
        await response(scope, receive, send)


def _basic_ok(auth: BasicAuth, headers: Headers) -> bool:
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, _, password = decoded.partition(":")
    # Both compared, always, so the time taken says nothing about which one was wrong.
    user_ok = _same(username, auth.username)
    password_ok = _same(password, auth.password)
    return user_ok and password_ok


def _token_ok(auth: TokenAuth, headers: Headers) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(given.strip(), auth.token):
        return True
    cookie = _cookies(headers).get(TOKEN_COOKIE)
    return cookie is not None and _same(cookie, auth.token)


def csrf_token(headers: Headers) -> tuple[str, bool]:
    """The browser's CSRF token and whether it is new (then the response must set the cookie)."""
    existing = _cookies(headers).get(CSRF_COOKIE)
    if existing and len(existing) >= 32:
        return existing, False
    return secrets.token_urlsafe(32), True


def set_csrf_cookie(response: Response, token: str, root_path: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path=root_path or "/")


def csrf_ok(headers: Headers, submitted: str | None) -> bool:
    """Double-submit check: the form's token equals the cookie's (SameSite=Strict, so another
    site can neither read nor send it), and the Origin, when the browser sends one, is ours."""
    cookie = _cookies(headers).get(CSRF_COOKIE)
    if not cookie or not submitted or not _same(cookie, submitted):
        return False
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = headers.get("host", "")
    return origin.split("://", 1)[-1] == host


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RefuseNulMiddleware:
    """Answers 400 to a NUL character in the path or the query string: PostgreSQL's text cannot
    hold one, so no page could find anything with it, and passing it on would be a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"")
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in query or b"\x00" in query
        ):
            response = PlainTextResponse("a NUL character is not allowed in a URL", status_code=400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
