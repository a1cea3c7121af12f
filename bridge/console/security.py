"""Who may use the console, and what every answer carries.

* Sign-in with the console's own username and password (constant-time comparison), never the
  webhook's: :class:`bridge.config.Config` refuses a console password equal to one of those.
* A session is a random token in a cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` when
  ``console.secure_cookie``), kept in memory: a restart signs everybody out, which is the safe
  direction. Each session has its own CSRF token, which every POST must carry.
* Failed sign-ins are counted per client address; past ``console.login_attempts`` within
  ``console.login_window_secs`` the address is answered 429 until the window has passed, and
  each failure is logged with the address. The table is bounded (:data:`MAX_TRACKED`), so a
  flood of addresses costs memory once, not without end.
* Headers on every answer: a Content-Security-Policy that allows only the bridge's own script,
  style and images (no inline script), ``X-Frame-Options: DENY``, ``nosniff``, referrers to
  itself only (``no-referrer`` would make browsers send ``Origin: null`` with every form), and
  ``Cache-Control: no-store`` (every page but the static files shows personal data).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bridge.config import ConsoleConfig
from bridge.errors import StorageUnavailableError

COOKIE = "bridge_console"
#: Sessions and client addresses kept at most; the oldest go first.
MAX_SESSIONS = 1000
MAX_TRACKED = 4096

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC_PREFIX = "/static/"


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    csrf: str
    expires: float  # monotonic


class Sessions:
    """Signed-in sessions by token, in memory, bounded and expiring."""

    def __init__(self, lifetime_secs: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime = lifetime_secs
        self._clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def start(self, user: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), self._clock() + self._lifetime)
        self._by_token[token] = session
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._by_token[token]
            return None
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)


class LoginThrottle:
    """Failed sign-ins per client address in a sliding window."""

    def __init__(
        self, attempts: int, window_secs: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._attempts = attempts
        self._window = window_secs
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address)
        if failures is None:
            return deque()
        horizon = self._clock() - self._window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
        return failures

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        failures = self._recent(address)
        if len(failures) < self._attempts:
            return 0.0
        return max(0.0, failures[0] + self._window - self._clock())

    def failed(self, address: str) -> int:
        """Count a failure; returns the failures in the window, this one included."""
        failures = self._failures.pop(address, None) or deque()
        failures.append(self._clock())
        self._failures[address] = failures  # most recent last: the oldest are evicted first
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        return len(failures)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def credentials_match(settings: ConsoleConfig, username: str, password: str) -> bool:
    """Both compared in constant time, both always compared (no early answer on the name)."""
    if settings.username is None or settings.password is None:
        return False
    user_ok = hmac.compare_digest(username.encode(), settings.username.encode())
    secret = settings.password.get_secret_value().encode()
    password_ok = hmac.compare_digest(password.encode(), secret)
    return user_ok and password_ok


def csrf_ok(session: Session, sent: object) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())


def set_session_cookie(response: web.StreamResponse, token: str, settings: ConsoleConfig) -> None:
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=settings.secure_cookie,
        path="/",
        max_age=int(settings.session_secs),
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The security headers on every answer, errors included."""
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    except StorageUnavailableError as exc:
        # A page, not a traceback: the operator sees why, with the headers every page has.
        response = web.Response(status=503, text=f"The bridge's storage is unavailable: {exc}")
    response.headers.update(HEADERS)
    if request.path.startswith(STATIC_PREFIX):
        response.headers["Cache-Control"] = "private, max-age=300"
    else:
        response.headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException):
        raise response
    return response
