"""Who may change the cache: operator sessions, CSRF tokens, login throttling,
and the API's bearer tokens.

A session is a signed cookie (`<expires>.<nonce>.<mac>`), so no session table
is needed and sessions survive a restart; the store keeps only the nonces of
sessions logged out before they expire (Cache.end_session), so a logout
holds on every host sharing the store and across restarts. The signing key
is derived from the session secret and the admin password: changing either
ends every session.
Each session has one CSRF token (a MAC of its nonce); every state-changing UI
request must carry it, so a page on another site can't act for the operator.

With no WITHCACHE_ADMIN_PASSWORD the UI is open: each browser is handed a
session without logging in, and CSRF tokens are still required.

The API takes no cookies, so it needs no CSRF token: each request carries
`Authorization: Bearer <token>`, and a token's scope (read or admin) says what
it may do. Managing tokens also accepts the admin password (HTTP Basic), so an
operator can make the first token; failed tries are throttled like logins.

Login throttling: after FREE_LOGIN_TRIES wrong passwords from one address,
each further try from it waits 1, 2, 4 ... MAX_LOGIN_WAIT s. The addresses
are kept in a bounded table that forgets the longest-quiet first, and when
failures pour in from more addresses than that (FLOOD_FAILURES within
FLOOD_SECONDS), every address waits FLOOD_WAIT after each wrong password: a
guesser can't get more tries by spreading them out. Sessions and API tokens
already issued are not affected.

Passwords, cookies and tokens are never logged, stored or shown.
The read path does not come through here: it stays open and fast.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from withcache.server import events, log
from withcache.server.records import TokenScope
from withcache.server.web import params
from withcache.server.web.read import CACHE_KEY

COOKIE = "withcache_session"
CSRF_FIELD = "csrf"  # form field; htmx and API clients may send the header instead
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
FREE_LOGIN_TRIES = 3  # failed logins from one address before each try costs a wait
MAX_LOGIN_WAIT = 60.0  # seconds; the wait doubles per failure up to this
_MAX_TRACKED = 10_000  # addresses (failed logins) kept in memory
# The last resort against guesses from more addresses than can be tracked:
# after FLOOD_FAILURES failed logins from anywhere within FLOOD_SECONDS, a
# wrong password costs every address FLOOD_WAIT before the next is checked.
FLOOD_FAILURES = 100
FLOOD_SECONDS = 120.0
FLOOD_WAIT = 1.0


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    csrf: str


class Auth:
    """Issues and checks sessions, CSRF tokens and passwords."""

    def __init__(self, password: str | None, secret: bytes) -> None:
        self._password = hashlib.sha256(password.encode()).digest() if password else None
        material = b"session\0" + (self._password or b"")
        self._key = hmac.new(secret, material, hashlib.sha256).digest()
        # address -> (count, last), the longest quiet first: when the table is
        # full, the address that failed longest ago is forgotten, never the newest.
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._recent_failures: deque[float] = deque(maxlen=FLOOD_FAILURES)  # from anywhere

    @property
    def open(self) -> bool:
        """No password is set: anyone who can reach the UI may use it."""
        return self._password is None

    # -- sessions

    def issue(self, now: float | None = None) -> tuple[Session, str]:
        """A new session and the cookie value that carries it."""
        expires = int((now or time.time()) + SESSION_SECONDS)
        nonce = secrets.token_urlsafe(18)
        cookie = f"{expires}.{nonce}.{self._mac('cookie', nonce, expires)}"
        return self._session(nonce, expires), cookie

    def verify(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, if it is genuine and current (whether
        it was logged out is the store's: session_of asks)."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not (cookie.isascii() and parts[0].isdecimal()):
            return None  # (compare_digest refuses non-ASCII text)
        expires, nonce, mac = int(parts[0]), parts[1], parts[2]
        if not hmac.compare_digest(mac, self._mac("cookie", nonce, expires)):
            return None
        if expires <= (now or time.time()):
            return None
        return self._session(nonce, expires)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        if not (isinstance(token, str) and token and token.isascii()):
            return False
        return hmac.compare_digest(token, session.csrf)

    def _session(self, nonce: str, expires: int) -> Session:
        return Session(nonce, expires, self._mac("csrf", nonce, expires))

    def _mac(self, purpose: str, nonce: str, expires: int) -> str:
        message = f"{purpose}\0{nonce}\0{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    # -- passwords

    def password_ok(self, given: str) -> bool:
        """Constant-time: compares fixed-length digests, so the length leaks nothing."""
        if self._password is None:
            return True
        digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, self._password)

    def login_wait(self, address: str, now: float | None = None) -> float:
        """Seconds before `address` may try another password (0: now)."""
        now = now or time.time()
        count, last = self._failures.get(address, (0, 0.0))
        wait = 0.0
        if count >= FREE_LOGIN_TRIES:
            wait = last + min(2.0 ** (count - FREE_LOGIN_TRIES), MAX_LOGIN_WAIT) - now
        if self.flooded(now):
            wait = max(wait, self._recent_failures[-1] + FLOOD_WAIT - now)
        return max(0.0, wait)

    def flooded(self, now: float | None = None) -> bool:
        """So many logins failed lately that every address waits its turn."""
        recent = self._recent_failures
        return len(recent) == FLOOD_FAILURES and recent[0] > (now or time.time()) - FLOOD_SECONDS

    def login_failed(self, address: str, now: float | None = None) -> None:
        now = now or time.time()
        self._recent_failures.append(now)
        count, _ = self._failures.pop(address, (0, 0.0))
        self._failures[address] = (count + 1, now)
        if len(self._failures) > _MAX_TRACKED:
            self._failures.popitem(last=False)

    def login_succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def whole_seconds(wait: float) -> int:
    """A wait as Retry-After says it: whole seconds, at least one."""
    return max(1, math.ceil(wait))


# -- aiohttp glue, shared by the UI and anything else that sits beside it

AUTH_KEY = web.AppKey("auth", Auth)
SESSION_KEY = "withcache.session"  # request-scoped: the checked Session

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(
    app: web.Application, password: str | None, secret: Callable[[], Awaitable[bytes]]
) -> None:
    """Build the app's Auth at start-up (the secret may need the metadata store)."""

    async def start(app: web.Application) -> None:
        app[AUTH_KEY] = Auth(password, await secret())

    app.on_startup.append(start)


def warn_if_open(password: str | None) -> None:
    """Said once the cache-host listens, so an operator sees it beside the address."""
    if password is None:
        log.warning(
            "ui.open",
            reason="WITHCACHE_ADMIN_PASSWORD is unset: anyone who can reach the "
            "cache-host can use the operator UI",
        )


def actor(request: web.Request) -> str:
    """Who did it, for the audit log: the UI, and the address it came from."""
    return f"ui:{request.remote or 'unknown'}"


async def session_of(request: web.Request) -> Session | None:
    """The request's session: a genuine, current cookie not logged out on any host."""
    found = request.get(SESSION_KEY)
    if found is None:
        found = request.app[AUTH_KEY].verify(request.cookies.get(COOKIE))
        if found is not None and await request.config_dict[CACHE_KEY].session_ended(found.nonce):
            return None
    return found


def start_session(request: web.Request, response: web.StreamResponse) -> Session:
    """Give the browser a new session cookie (after a login, or in open mode)."""
    session, value = request.app[AUTH_KEY].issue()
    _set_cookie(request, response, value)
    request[SESSION_KEY] = session
    return session


def _set_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        COOKIE, value, max_age=SESSION_SECONDS, path="/", httponly=True, samesite="Strict",
        secure=request.secure,
    )  # fmt: skip


async def end_session(request: web.Request, response: web.StreamResponse) -> None:
    session = await session_of(request)
    # Without a password anyone gets a session anyway: there is nothing to end.
    if session and not request.app[AUTH_KEY].open:
        await request.config_dict[CACHE_KEY].end_session(session.nonce, session.expires)
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")


def login_redirect(request: web.Request) -> web.Response:
    """Send a visitor without a session to the login form, then back here."""
    target = "/login?next=" + quote(request.path_qs, safe="/")
    if request.headers.get("HX-Request"):
        # A background htmx request: make the whole page go to the login form.
        return web.Response(status=401, text="log in first\n", headers={"HX-Redirect": target})
    raise web.HTTPSeeOther(target)


def page(handler: Handler) -> Handler:
    """A page: needs a session (open mode hands one out)."""

    @functools.wraps(handler)
    async def gated(request: web.Request) -> web.StreamResponse:
        auth = request.app[AUTH_KEY]
        session = await session_of(request)
        if session is None and not auth.open:
            return login_redirect(request)
        if session is not None:
            request[SESSION_KEY] = session
            return await handler(request)
        # Open mode: a session is handed out so that forms can carry a CSRF token.
        session, value = auth.issue()
        request[SESSION_KEY] = session
        response = await handler(request)
        _set_cookie(request, response, value)
        return response

    return gated


def action(handler: Handler) -> Handler:
    """A state change: needs a session and its CSRF token, or gets 403 and does nothing."""

    @functools.wraps(handler)
    async def gated(request: web.Request) -> web.StreamResponse:
        auth = request.app[AUTH_KEY]
        session = await session_of(request)
        if session is None:
            return forbidden(request, "no valid session: log in (or reload the page) first")
        token = request.headers.get(CSRF_HEADER)
        if token is None:
            form = await params.read_form(request)
            value = form.get(CSRF_FIELD)
            token = value if isinstance(value, str) else None
        if not auth.csrf_ok(session, token):
            return forbidden(request, "missing or invalid CSRF token: reload the page and retry")
        request[SESSION_KEY] = session
        return await handler(request)

    return gated


def forbidden(request: web.Request, reason: str) -> web.Response:
    log.info("request.refused", status=403, reason=reason, path=request.path, peer=request.remote)
    return web.Response(status=403, text=f"403 forbidden: {reason}\n")


# -- the API's gate: bearer tokens (and the admin password for managing tokens)

ACTOR_KEY = "withcache.actor"  # request-scoped: who is calling, for the audit log
CHALLENGE = 'Bearer realm="withcache"'


def api_gate(scope: TokenScope, password: bool = False) -> Callable[[Handler], Handler]:
    """Let a request through if its token has `scope` (an admin token has
    every scope); with `password`, the admin password over Basic also does."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def gated(request: web.Request) -> web.StreamResponse:
            request[ACTOR_KEY] = await _api_caller(request, scope, password)
            return await handler(request)

        return gated

    return wrap


async def _api_caller(request: web.Request, scope: TokenScope, password: bool) -> str:
    kind, _, credentials = request.headers.get("Authorization", "").partition(" ")
    kind, credentials = kind.lower(), credentials.strip()
    if kind == "bearer" and credentials:
        record = await request.config_dict[CACHE_KEY].authenticate(credentials)
        if record is None:
            raise _unauthorized(request, "unknown or revoked API token")
        if scope is TokenScope.ADMIN and record.scope is not TokenScope.ADMIN:
            raise _refused(
                request, web.HTTPForbidden, f"token {record.name!r} is read-only; this needs an "
                "admin token",
            )  # fmt: skip
        return f"api:{record.name}"
    if kind == "basic" and password:
        return await _password_caller(request, credentials)
    raise _unauthorized(request, "send an API token: Authorization: Bearer <token>")


async def _password_caller(request: web.Request, credentials: str) -> str:
    gate = request.config_dict[AUTH_KEY]
    address = request.remote or "unknown"
    wait = gate.login_wait(address)
    if wait > 0:
        seconds = whole_seconds(wait)
        raise _refused(
            request, web.HTTPTooManyRequests, f"too many wrong passwords: try again in "
            f"{seconds} s", headers={"Retry-After": str(seconds)},
        )  # fmt: skip
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except ValueError:  # not base64 (or not ASCII at all), or not UTF-8 inside
        raise _unauthorized(request, "unreadable Basic credentials") from None
    if not gate.password_ok(decoded.partition(":")[2]):
        gate.login_failed(address)
        actor = f"api:{address}"
        await request.config_dict[CACHE_KEY].record(events.LoginFailed(actor=actor))
        raise _unauthorized(request, "wrong admin password")
    gate.login_succeeded(address)
    return f"api:password@{address}"


def _unauthorized(request: web.Request, reason: str) -> web.HTTPException:
    return _refused(request, web.HTTPUnauthorized, reason, {"WWW-Authenticate": CHALLENGE})


def _refused(
    request: web.Request,
    status: type[web.HTTPException],
    reason: str,
    headers: dict[str, str] | None = None,
) -> web.HTTPException:
    log.info("request.refused", status=status.status_code, reason=reason, path=request.path,
             peer=request.remote)  # fmt: skip
    return status(text=reason, headers=headers)
