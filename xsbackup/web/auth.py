"""Sign-in throttling and CSRF tokens for the web UI (and the JSON session login).

Throttling: each failed sign-in is remembered under two keys, the source address and the
user name. Once either key has ``ui.max_login_failures`` failures within the last
``ui.login_lockout_minutes``, sign-ins under that key are refused, without checking the
password (so a refused guess teaches nothing), until the oldest counted failure leaves
the window. Refused attempts are not counted, so a refusal does not extend itself. A
successful sign-in clears its user name's failures. Everything is in memory, bounded,
and per process, like the sessions.

Note the trade-off of the per-name key: someone who knows a user name can keep that user
out for a while by failing on purpose. The per-address key alone would let a
distributed guesser through, and a school server has few admin names to protect.

CSRF: every state-changing form carries a token, the HMAC-SHA256 of the session token
under a per-process key. The sign-in form, before there is a session, carries one bound
the same way to a random pre-session cookie. Tokens are compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from typing import Any

MAX_KEYS = 50_000
LOGIN_COOKIE = "xsbackup_login"


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
