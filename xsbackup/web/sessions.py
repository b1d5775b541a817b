"""Web sessions that survive a restart: a signed cookie, a secret kept in the state root,
and a revocation list for signed-out sessions.

The ``xsbackup_session`` cookie holds Flask's session (user name, session epoch, a
random session id, the absolute expiry, pending flash messages), serialised and signed
with itsdangerous (HMAC-SHA256) under a key that is generated once and kept in
``<root>/admin/web-secret`` (mode 0600, in the 0700 ``admin`` directory); the cookie is
readable by its holder but cannot be forged or altered. Nothing about a session lives in
memory, so ``serve`` can restart without signing anyone out.

Ending sessions on the server side:

* every session of a user ends when its epoch in ``users.json`` is raised (a password
  change, disabling the user; ``users.py``);
* signing out ends one session: its id goes into ``<root>/admin/revoked-sessions.json``
  (with its expiry, after which it is dropped from the list), checked on every request.

The cookie is set as before the move to Flask: ``Path=/``, ``Max-Age`` of what is left of
the 12 hours, ``HttpOnly``, ``SameSite=Strict``, and ``Secure`` under https.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Request, Response, current_app, g
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, URLSafeTimedSerializer

from xsbackup.errors import StateRootError
from xsbackup.locking import FileLock
from xsbackup.logs import LOG
from xsbackup.store import Store, atomic_write
from xsbackup.web.base import cookie, current_ctx

SESSION_COOKIE = "xsbackup_session"
SESSION_SECONDS = 12 * 3600
KEY_FILE = "web-secret"
REVOKED_FILE = "revoked-sessions.json"
MAX_REVOKED = 100_000

KEYS_KEY = "xsbackup.session-keys"
Stamp = tuple[int, int, int]


def _admin_dir(store: Store) -> Path:
    directory = store.root / "admin"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def _revoked_path(store: Store) -> Path:
    return store.root / "admin" / REVOKED_FILE


def _read_revoked(path: Path) -> dict[str, float]:
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as e:
        LOG.error("web: cannot read %s (%s); treating it as empty", path, e)
        return {}
    return {str(k): float(v) for k, v in raw.items()
            if isinstance(v, int | float)} if isinstance(raw, dict) else {}


def revoke(store: Store, sid: str, expires: float) -> None:
    """End the session ``sid`` for good (it would have expired at ``expires``)."""
    path = _revoked_path(store)
    _admin_dir(store)
    with FileLock(store.locks_dir / "sessions.lock").acquire(wait=True):
        now = time.time()
        current = {k: v for k, v in _read_revoked(path).items() if v > now}
        if len(current) >= MAX_REVOKED:  # bounded: the soonest to expire go first
            for k in sorted(current, key=current.__getitem__)[:len(current) // 10 + 1]:
                del current[k]
        current[sid] = expires
        atomic_write(path, orjson.dumps(current), mode=0o600)


class SessionKeys:
    """One application's reading of the state root's web secret and revocation list:
    read from disk on first use, never made up in memory, so a new application (a
    restarted ``serve``) signs and checks exactly as the old one did."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[Path, bytes] = {}
        self._serializers: dict[Path, URLSafeTimedSerializer] = {}
        self._revoked: dict[Path, tuple[Stamp, frozenset[str]]] = {}

    def secret_key(self, store: Store) -> bytes:
        """The state root's web secret, made on first use (two processes racing agree:
        the second one's ``link`` fails and it reads the first one's)."""
        path = store.root / "admin" / KEY_FILE
        with self._lock:
            key = self._secrets.get(path)
        if key is not None:
            return key
        if not path.exists():
            tmp = _admin_dir(store) / f".{KEY_FILE}.{secrets.token_hex(4)}.tmp"
            atomic_write(tmp, secrets.token_hex(32).encode() + b"\n", mode=0o600)
            try:
                # Another process made it first: theirs is the one read below.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
                    LOG.info("web: made the session secret %s", path)
            finally:
                os.unlink(tmp)
        try:
            key = bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError):
            key = b""
        if len(key) < 16:
            raise StateRootError(f"{path} holds no usable key; delete it to make a new one")
        with self._lock:
            self._secrets[path] = key
        return key

    def derived_key(self, store: Store, label: str) -> bytes:
        """A key for ``label`` (CSRF tokens), derived from the web secret."""
        return hmac.new(self.secret_key(store), label.encode(), hashlib.sha256).digest()

    def serializer(self, store: Store) -> URLSafeTimedSerializer:
        with self._lock:
            found = self._serializers.get(store.root)
        if found is None:
            found = URLSafeTimedSerializer(
                self.secret_key(store), salt="xsbackup-session",
                serializer=SecureCookieSessionInterface.serializer,
                signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256})
            with self._lock:
                self._serializers[store.root] = found
        return found

    def is_revoked(self, store: Store, sid: str) -> bool:
        path = _revoked_path(store)
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return False
        with self._lock:
            hit = self._revoked.get(path)
        if hit is None or hit[0] != stamp:
            hit = (stamp, frozenset(_read_revoked(path)))
            with self._lock:
                self._revoked[path] = hit
        return sid in hit[1]


def keys() -> SessionKeys:
    found: SessionKeys = current_app.extensions[KEYS_KEY]
    return found


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, keyed by the state root's secret, with the cookie
    attributes above. A request without the cookie never touches the secret."""

    def __init__(self, keys: SessionKeys) -> None:
        self.keys = keys

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession:
        value = request.cookies.get(SESSION_COOKIE)
        if not value:
            return self.session_class()
        try:
            data: Any = self.keys.serializer(current_ctx().store).loads(
                value, max_age=SESSION_SECONDS)
        except BadSignature:
            return self.session_class()
        if not isinstance(data, dict):
            return self.session_class()
        return self.session_class(data)

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not session.modified:
            return
        if not session:
            response.headers.add("Set-Cookie", cookie(SESSION_COOKIE, "", 0))
            return
        value = self.keys.serializer(current_ctx().store).dumps(dict(session))
        max_age: int = g.get("xs_new_session_seconds", 0)  # a session begun just now
        if not max_age:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                max_age = max(0, math.ceil(float(session["exp"]) - time.time()))
        response.headers.add("Set-Cookie", cookie(SESSION_COOKIE, value, max_age))
