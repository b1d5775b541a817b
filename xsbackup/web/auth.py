"""Who is asking, for the JSON API, /metrics and the web UI: sessions and HTTP Basic;
sign-in throttling; CSRF tokens.

Authentication: the ``xsbackup_session`` cookie (``sessions.py``) or, except in the web
UI, HTTP Basic. A session is trusted while it has not expired, its user exists and is
enabled, its epoch is the user's current one and its id was not signed out. So that
scrypt does not run on every request, a Basic credential's outcome is cached for 60
seconds under an HMAC of the credential with a per-process key; the cache is only
trusted while ``admin/users.json`` is unchanged (same inode, mtime and size), so
disabling a user or changing a password takes effect on the next request.

Throttling: one throttle for every way of presenting a password (the web UI's sign-in
form, the JSON API's ``POST /api/v1/session``, and HTTP Basic on the API and /metrics),
all through ``check_password``. Each failed sign-in is remembered under two keys, the
source address and the user name. Once either key has ``ui.max_login_failures`` failures
within the last ``ui.login_lockout_minutes``, sign-ins under that key are refused (429
with ``Retry-After``), without checking the password (so a refused guess teaches
nothing), until the oldest counted failure leaves the window. Refused attempts are not
counted, so a refusal does not extend itself. A successful sign-in clears its user
name's failures. The same wrong Basic credential sent again (a scraper left with an old
password) is answered from the cache and counted once per window, not once per request.
The failures are in memory, bounded, and per process.

Note the trade-off of the per-name key: someone who knows a user name can keep that user
out for a while by failing on purpose. The per-address key alone would let a
distributed guesser through, and a school server has few admin names to protect.

CSRF: every state-changing form carries a token, the HMAC-SHA256 of the session's id
under a key derived from the state root's web secret (so a page's token outlives a
restart, like its session). The sign-in form, before there is a session, carries one
bound the same way to a random pre-session cookie. Tokens are compared in constant time.
This is kept rather than Flask-WTF's CSRFProtect: only the UI's forms take a token (the
JSON API is Basic or a SameSite=Strict cookie, XML-RPC and availability have no session),
and CSRFProtect keeps its token in the session cookie, so the sign-in page would set
``xsbackup_session`` before anyone signed in, tokens would expire after an hour, and
https POSTs would need a matching Referer: all visible changes to the web UI's contract.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, session

from xsbackup.config import Settings
from xsbackup.logs import LOG
from xsbackup.store import Store
from xsbackup.web import sessions, users
from xsbackup.web.base import HttpError, client_address

MAX_KEYS = 50_000
LOGIN_COOKIE = "xsbackup_login"
BASIC_CACHE_SECONDS = 60.0
MAX_CACHED_CREDENTIALS = 10_000
REALM = 'Basic realm="xsbackup"'
AUTH_KEY = "xsbackup.auth"
Stamp = tuple[int, int, int]


class LoginThrottled(HttpError):
    """Too many failed sign-ins from this address or for this user name, just now."""

    def __init__(self, wait: int) -> None:
        super().__init__(429, f"too many failed logins; try again in {wait} seconds",
                         [("Retry-After", str(wait))])
        self.wait = wait


class LoginThrottle:
    """Failed sign-ins per address and per user name, in a sliding window."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    @staticmethod
    def keys(address: str, name: str) -> list[str]:
        return [f"addr:{address}", f"user:{name.strip().casefold()[:64]}"]

    def _trim(self, key: str, window: float, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, address: str, name: str, limit: int, window: float) -> int:
        """0 when a sign-in may be tried now; else the seconds until it may."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key in self.keys(address, name):
                times = self._trim(key, window, now)
                if len(times) >= limit:
                    wait = max(wait, times[len(times) - limit] + window - now)
        return max(1, int(wait + 0.999)) if wait > 0 else 0

    def failed(self, address: str, name: str, limit: int, window: float) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= MAX_KEYS:
                for key in list(self._failures):
                    self._trim(key, window, now)
                if len(self._failures) >= MAX_KEYS:
                    self._failures.clear()
            for key in self.keys(address, name):
                times = self._failures.setdefault(key, deque())
                times.append(now)
                while len(times) > limit:
                    times.popleft()

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(self.keys("", name)[1], None)


def _mac(key: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_token(key: bytes, session_token: str) -> str:
    """The CSRF token of a signed-in session."""
    return _mac(key, "csrf", session_token)


def login_token(key: bytes, presession: str) -> str:
    """The CSRF token of the sign-in form, bound to the pre-session cookie."""
    return _mac(key, "login", presession)


def token_ok(expected: str, given: str | None) -> bool:
    if not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def new_presession() -> str:
    return secrets.token_urlsafe(24)


# ---- authentication ----------------------------------------------------------------------


@dataclass
class _CachedCredential:
    users_stamp: Stamp
    expires: float
    user: users.User | None


class Authenticator:
    """One per application: the users file as last read, the Basic credential cache and
    the sign-in throttle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)  # keys the credential cache only
        self._users: dict[str, tuple[Stamp, dict[str, users.User]]] = {}
        self._credentials: dict[str, _CachedCredential] = {}
        self.throttle = LoginThrottle()

    def load_users(self, store: Store) -> tuple[Stamp, dict[str, users.User]]:
        path = users.users_path(store)
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._lock:
            hit = self._users.get(path)
        if hit is not None and hit[0] == stamp:
            return hit
        loaded = (stamp, users.load(store) if stamp != (0, 0, 0) else {})
        with self._lock:
            self._users[path] = loaded
        return loaded

    def from_basic(self, settings: Settings, store: Store, header: str) -> users.User | None:
        """The user of an HTTP Basic credential (None: not one, or wrong), throttled
        like every sign-in; a verdict is cached (``BASIC_CACHE_SECONDS`` when right, the
        lockout window when wrong) while ``users.json`` is unchanged."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        name, sep, password = raw.decode("utf-8", "replace").partition(":")
        if not sep:
            return None
        wait = self.login_throttled(settings, name)
        if wait:
            raise LoginThrottled(wait)
        stamp, _ = self.load_users(store)
        key = hmac.new(self._key, str(store.root).encode() + b"\0" + raw,
                       hashlib.sha256).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._credentials.get(key)
        if hit is not None and hit.users_stamp == stamp and hit.expires > now:
            return hit.user
        user = self.check_password(settings, store, name, password, "http basic")
        keep = BASIC_CACHE_SECONDS if user is not None else \
            60.0 * settings.ui.login_lockout_minutes
        with self._lock:
            if len(self._credentials) >= MAX_CACHED_CREDENTIALS:
                self._credentials.clear()
            self._credentials[key] = _CachedCredential(stamp, now + keep, user)
        return user

    def from_session(self, store: Store) -> tuple[users.User, str] | None:
        """(user, session id) of a valid session cookie; never HTTP Basic."""
        name, sid, epoch, exp = (session.get(k) for k in ("user", "sid", "epoch", "exp"))
        if not (isinstance(name, str) and isinstance(sid, str) and isinstance(epoch, int)
                and isinstance(exp, int | float)) or exp <= time.time():
            return None
        user = self.load_users(store)[1].get(name)
        if user is None or user.disabled or user.session_epoch != epoch \
                or sessions.keys().is_revoked(store, sid):
            return None
        return user, sid

    def authenticate(self, settings: Settings, store: Store, header: str) -> users.User | None:
        found = self.from_session(store)
        if found is not None:
            return found[0]
        return self.from_basic(settings, store, header) if header else None

    def require_user(self, settings: Settings, store: Store, header: str) -> users.User:
        user = self.authenticate(settings, store, header)
        if user is None:
            raise HttpError(401, "authentication required", [("WWW-Authenticate", REALM)])
        return user

    def check_password(self, settings: Settings, store: Store, name: str, password: str,
                       how: str) -> users.User | None:
        """Every sign-in with a password: refused while throttled (``LoginThrottled``),
        else the user, or None for a wrong name or password (counted)."""
        wait = self.login_throttled(settings, name)
        if wait:
            raise LoginThrottled(wait)
        user = users.verify_in(self.load_users(store)[1], name, password)
        if user is None:
            LOG.warning("%s: sign-in failed for user %r from %s", how, name[:64],
                        client_address())
            self.login_failed(settings, name)
            return None
        self.throttle.succeeded(user.name)
        return user

    # -- sessions --

    @staticmethod
    def start_session(user: users.User) -> int:
        """A new session for ``user`` in this response's cookie; returns its expiry."""
        expires = int(time.time()) + sessions.SESSION_SECONDS
        session.clear()
        session.update(user=user.name, epoch=user.session_epoch,
                       sid=secrets.token_urlsafe(16), exp=expires)
        g.xs_new_session_seconds = sessions.SESSION_SECONDS
        LOG.info("http login: user %s (%s)", user.name, user.role)
        return expires

    @staticmethod
    def end_session(store: Store) -> None:
        """Sign this request's session out for good, and clear its cookie."""
        sid, exp = session.get("sid"), session.get("exp")
        if isinstance(sid, str) and isinstance(exp, int | float) and exp > time.time():
            sessions.revoke(store, sid, float(exp))
        session.clear()
        session.modified = True

    # -- throttling --

    def login_throttled(self, settings: Settings, name: str) -> int:
        """Seconds until ``name`` may try to sign in from this address (0: now)."""
        return self.throttle.retry_after(client_address(), name,
                                         settings.ui.max_login_failures,
                                         60.0 * settings.ui.login_lockout_minutes)

    def login_failed(self, settings: Settings, name: str) -> None:
        self.throttle.failed(client_address(), name, settings.ui.max_login_failures,
                             60.0 * settings.ui.login_lockout_minutes)


def authenticator() -> Authenticator:
    found: Authenticator = current_app.extensions[AUTH_KEY]
    return found
