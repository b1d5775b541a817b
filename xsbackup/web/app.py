"""The HTTP side of ``xsbackup serve``: one plain WSGI application (DESIGN.md section 5).

Routes:

* ``GET /backup/1/available/<SN>``: ds-backup's availability check, with its exact
  semantics: an empty body and 200, 503 with ``Retry-After``, or 403 for a malformed,
  unknown or disabled serial. The decision (window, reservation, load, disk) is
  ``admission.availability``; this handler only looks up the one serial (no registry
  walk) and counts the outcome in ``admissions{path="http",...}`` (batched in memory and
  flushed to the durable counters at most once a second, before every scrape and on
  ``close``; a crash loses at most that second of counts, as ``counters.py`` allows).
* ``POST /`` and ``POST /RPC2``: the OLPC registration call, XML-RPC
  ``register(serial, nickname, uuid, pubkey)`` (``registration.register``). Bodies over
  64 KiB are refused with 413.
* ``GET /metrics``: Prometheus text format (``metrics.render``).
* ``/api/v1/...``: a read-only JSON API for status, snapshots and restore plans, plus
  ``POST``/``GET``/``DELETE /api/v1/session`` to log in and out.
* ``/ui/...``: the web UI for admins and teachers (``webui``), on the same sessions;
  ``GET /`` from a browser (``Accept: text/html``) redirects there.

Availability and registration take no authentication, because the deployed devices send
none. Everything else does: HTTP Basic, or the ``xsbackup_session`` cookie from
``POST /api/v1/session`` (HttpOnly, SameSite=Strict, Secure under https, 12 hours).
Sessions live in this process's memory, so a restart logs everyone out. Failed logins
(here and in the web UI) are throttled per address and per user name (``webui_auth``).
So that scrypt does not run on every request, a Basic credential's outcome is cached for 60 seconds
under an HMAC of the credential with a per-process key; the cache, like every session,
is only trusted while ``admin/users.json`` is unchanged (same inode, mtime and size), so
disabling a user or changing a password takes effect on the next request. Both roles
may use every route here, since all of them only read.

Every path segment a client supplies goes through ``store.check_client`` /
``check_volume`` / ``check_snapshot_id`` before it names anything on disk; a malformed
one is a 400, a well-formed one that does not exist a 404. Errors are JSON
``{"error": "..."}``; an unexpected exception is logged and answered with a bare 500.

The server is waitress (``make_server``). It is pure Python with no C build, maintained
by the Pylons project, production-grade (HTTP/1.1 keep-alive, a bounded worker pool,
request-size limits, untrusted proxy headers cleared), and it runs in-process on a
thread, so ``xsbackup serve`` stays one process that SIGHUP can reload. Use::

    server = make_server(make_app(settings_provider), host, port, threads)
    threading.Thread(target=server.run_forever, daemon=True).start()   # or server.run
    ...                                                 # server.effective_port is bound
    server.close()    # from any thread: stops the loop, then the worker threads
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import http
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from xmlrpc.server import SimpleXMLRPCDispatcher

import orjson

from xsbackup import __version__, counters
from xsbackup.clients import registration
from xsbackup.clients.registry import Client, Registry
from xsbackup.config import Settings
from xsbackup.context import Context
from xsbackup.errors import (
    ClientDisabled,
    ClientNotFound,
    InvalidName,
    NotReadable,
    PathNotFound,
    PathRefused,
    SnapshotNotFound,
    UnknownClient,
    XsbackupError,
)
from xsbackup.ingest import admission
from xsbackup.logs import LOG
from xsbackup.monitor import metrics
from xsbackup.restore import archive as restore
from xsbackup.restore import downloads as webrestore
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.store import (
    CLIENT_RE,
    Store,
    check_client,
    check_snapshot_id,
    check_volume,
    disk_use,
    get_xattrs,
)
from xsbackup.web import users
from xsbackup.web.auth import LoginThrottle

if TYPE_CHECKING:
    from xsbackup.web.ui import UI

SettingsProvider = Callable[[], Settings]
MAX_BODY = 64 * 1024
SESSION_COOKIE = "xsbackup_session"
SESSION_SECONDS = 12 * 3600
BASIC_CACHE_SECONDS = 60.0
MAX_SESSIONS = 10_000
MAX_CACHED_CREDENTIALS = 10_000
COUNTER_FLUSH_SECONDS = 1.0
REALM = 'Basic realm="xsbackup"'
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]")
_JSON = "application/json"
Headers = list[tuple[str, str]]


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = ""
    headers: Headers = field(default_factory=list)
    stream: Iterable[bytes] | None = None  # streamed instead of body (no Content-Length)


def json_response(value: Any, status: int = 200, headers: Headers | None = None) -> Response:
    return Response(status, orjson.dumps(value), _JSON, headers or [])


def _empty(status: int, headers: Headers | None = None) -> Response:
    return Response(status, b"", "", [("Cache-Control", "no-store"), *(headers or [])])


@dataclass
class _Session:
    user: str
    fingerprint: str
    expires: float


@dataclass
class _CachedCredential:
    users_stamp: tuple[int, int, int]
    expires: float
    user: users.User | None


# ---- helpers shared by the routes ------------------------------------------------------


def request_host(settings: Settings, environ: WSGIEnvironment) -> str:
    """``server.public_host``, else the Host header without its port, else this machine's
    host name (a Host header that is not a plain host name or IP is ignored)."""
    public = settings.server.public_host
    if public:
        return public
    raw = str(environ.get("HTTP_HOST") or "").strip()
    host = raw[: raw.index("]") + 1] if raw.startswith("[") and "]" in raw else \
        raw.rsplit(":", 1)[0]
    return host if _HOST_RE.fullmatch(host) else socket.gethostname()


def read_body(environ: WSGIEnvironment, limit: int = MAX_BODY) -> bytes:
    text = str(environ.get("CONTENT_LENGTH") or "").strip()
    try:
        length = int(text) if text else -1
    except ValueError:
        raise HttpError(400, "invalid Content-Length") from None
    if length > limit:
        raise HttpError(413, f"request body over {limit} bytes")
    stream = environ["wsgi.input"]
    data = bytes(stream.read(length if length >= 0 else limit + 1))
    if len(data) > limit:
        raise HttpError(413, f"request body over {limit} bytes")
    return data


def _client_or_404(store: Store, serial: str) -> str:
    check_client(serial)
    if not Registry(store).exists(serial):
        raise HttpError(404, f"no client {serial}")
    return serial


def _volume_or_404(store: Store, serial: str, volume: str) -> str:
    check_volume(volume)
    try:
        st = os.lstat(store.volume_dir(serial, volume))
    except FileNotFoundError:
        raise HttpError(404, f"no volume {volume} for client {serial}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise HttpError(404, f"no volume {volume} for client {serial}")
    return volume


def _snapshot_row(store: Store, serial: str, volume: str, sid: str,
                  latest: str | None) -> dict[str, Any]:
    facts = read_facts(store.snapshots_dir(serial, volume) / sid)
    return {**facts, "client": serial, "volume": volume, "id": sid, "latest": latest == sid}


def _key_summary(client: Client) -> list[dict[str, Any]]:
    return [registration.key_summary(k) for k in client.keys]


def _volume_rows(store: Store, serial: str) -> list[dict[str, Any]]:
    rows = []
    for v in store.volumes(serial):
        ids = store.snapshot_ids(serial, v)
        rows.append({"volume": v, "snapshots": len(ids),
                     "latest": store.latest_id(serial, v) or (ids[-1] if ids else None),
                     "oldest": ids[0] if ids else None})
    return rows


def health(settings: Settings, store: Store) -> dict[str, Any]:
    use = disk_use(store.root)
    return {"status": "ok", "version": __version__,
            "queue_depth": metrics.queue_depth(store),
            "maintenance": admission.maintenance_on(Context(settings, store, Registry(store))),
            "disk": {"blocks_used_ratio": use.blocks_pct / 100.0,
                     "inodes_used_ratio": use.inodes_pct / 100.0,
                     "free_bytes": use.free_bytes}}


def clients_list(store: Store) -> list[dict[str, Any]]:
    from xsbackup.monitor.status import client_rows

    records = {c.serial: c for c in Registry(store).all()}
    rows = client_rows(store, dt.datetime.now(dt.UTC))
    for row in rows:
        client = records.get(row["serial"])
        row["uuid"] = client.uuid if client else ""
        row["keys"] = _key_summary(client) if client else []
        row["pending_keys"] = sum(1 for k in row["keys"] if k["status"] == "pending")
    return rows


def client_detail(store: Store, serial: str) -> dict[str, Any]:
    _client_or_404(store, serial)
    client = Registry(store).get(serial)
    facts = get_xattrs(store.client_dir(serial))
    return {"serial": client.serial, "nickname": client.nickname, "uuid": client.uuid,
            "disabled": client.disabled, "aliases": client.aliases, "created": client.created,
            "keys": _key_summary(client), "status": facts,
            "volumes": _volume_rows(store, serial)}


def volumes(store: Store, serial: str) -> list[dict[str, Any]]:
    return _volume_rows(store, _client_or_404(store, serial))


def snapshots(store: Store, serial: str, volume: str) -> list[dict[str, Any]]:
    _client_or_404(store, serial)
    _volume_or_404(store, serial, volume)
    latest = store.latest_id(serial, volume)
    return [_snapshot_row(store, serial, volume, s, latest)
            for s in store.snapshot_ids(serial, volume)]


def snapshot(store: Store, serial: str, volume: str, sid: str) -> dict[str, Any]:
    _client_or_404(store, serial)
    check_volume(volume)
    check_snapshot_id(sid)
    _volume_or_404(store, serial, volume)
    try:
        st = os.lstat(store.snapshots_dir(serial, volume) / sid)
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise HttpError(404, f"no snapshot {sid} of {serial} {volume}")
    return _snapshot_row(store, serial, volume, sid, store.latest_id(serial, volume))


# ---- the application -------------------------------------------------------------------


class App:
    """The WSGI application. One instance holds the sessions and the credential cache."""

    def __init__(self, settings_provider: SettingsProvider) -> None:
        self.settings = settings_provider
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._credentials: dict[str, _CachedCredential] = {}
        self._secret = secrets.token_bytes(32)
        self._users_stamp: tuple[int, int, int] = (-1, -1, -1)
        self._users: dict[str, users.User] = {}
        self._unflushed: dict[str, float] = {}
        self._flushed_at = time.monotonic()
        self.throttle = LoginThrottle()  # failed sign-ins (web UI and JSON session)
        self._ui: UI | None = None  # the web UI, built on its first request

    # -- WSGI entry --

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        try:
            resp = self.handle(environ)
        except HttpError as e:
            resp = json_response({"error": e.message}, e.status, e.headers)
        except InvalidName as e:
            resp = json_response({"error": e.message}, 400)
        except (PathRefused, NotReadable) as e:
            resp = json_response({"error": e.message}, 403)
        except (PathNotFound, SnapshotNotFound, ClientNotFound) as e:
            resp = json_response({"error": e.message}, 404)
        except Exception:
            LOG.exception("http %s %s failed", environ.get("REQUEST_METHOD"),
                          str(environ.get("PATH_INFO", ""))[:200])
            resp = json_response({"error": "internal server error; see the server log"}, 500)
        if resp.stream is not None:
            status = http.HTTPStatus(resp.status)
            start_response(f"{status.value} {status.phrase}",
                           [*resp.headers, ("Cache-Control", "no-store"),
                            ("X-Content-Type-Options", "nosniff")])
            return resp.stream
        headers = [("Content-Length", str(len(resp.body))), *resp.headers]
        if resp.content_type:
            headers.append(("Content-Type", resp.content_type))
        if resp.content_type == _JSON:
            headers += [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
        status = http.HTTPStatus(resp.status)
        start_response(f"{status.value} {status.phrase}", headers)
        return [resp.body]

    def handle(self, environ: WSGIEnvironment) -> Response:
        path = str(environ.get("PATH_INFO") or "/")
        method = str(environ.get("REQUEST_METHOD", "GET"))
        if path.startswith("/backup/1/available/"):
            if method != "GET":
                return _empty(405, [("Allow", "GET")])
            return self.available(path[len("/backup/1/available/"):])
        if path == "/ui" or path.startswith("/ui/"):
            return self.ui().handle(environ, method, path)
        if path == "/" and method in ("GET", "HEAD") and \
                "text/html" in str(environ.get("HTTP_ACCEPT") or ""):
            return _empty(303, [("Location", "/ui/")])  # a browser: the web UI
        if path in ("/", "/RPC2"):
            if method != "POST":
                raise HttpError(405, "registration is XML-RPC over POST", [("Allow", "POST")])
            return self.xmlrpc(environ)
        if path == "/metrics":
            self.require_user(environ)
            if method != "GET":
                raise HttpError(405, "method not allowed", [("Allow", "GET")])
            store = Store(self.settings().root)
            self.flush_counters(store)
            return Response(200, metrics.render(store), metrics.CONTENT_TYPE)
        if path == "/restore/kit":
            if method not in ("GET", "HEAD"):
                raise HttpError(405, "method not allowed", [("Allow", "GET, HEAD")])
            return Response(200, webrestore.kit(), "text/x-python; charset=utf-8",
                            [("Content-Disposition", 'attachment; filename="xsrestore.py"')])
        if path == "/api/v1/session":
            return self.session(environ, method)
        if path.startswith("/api/v1/"):
            self.require_user(environ)
            return self.api(environ, method, path[len("/api/v1/"):])
        raise HttpError(404, "not found")

    def ui(self) -> UI:
        """The web UI (``webui.UI``), imported on first use to keep start-up cheap."""
        with self._lock:
            if self._ui is None:
                from xsbackup.web.ui import UI

                self._ui = UI(self)
            return self._ui

    # -- availability (no auth; must be cheap) --

    def available(self, raw_serial: str) -> Response:
        settings = self.settings()
        store = Store(settings.root)
        serial = raw_serial.strip()
        if not CLIENT_RE.fullmatch(serial):
            self._count(store, "refused", "malformed")
            return _empty(403)
        try:
            admission.check_client(Registry(store), serial)
        except UnknownClient:
            self._count(store, "refused", "unknown")
            return _empty(403)
        except ClientDisabled:
            self._count(store, "refused", "disabled")
            return _empty(403)
        verdict = admission.availability(Context(settings, store, Registry(store)), serial,
                                         time.time())
        if verdict.granted:
            self._count(store, "granted", "")
            return _empty(200)
        self._count(store, "refused", verdict.reason)
        LOG.debug("client=%s availability refused: %s (retry after %ds)", serial,
                  verdict.reason, verdict.retry_after)
        return _empty(503, [("Retry-After", str(verdict.retry_after))])

    def _count(self, store: Store, result: str, reason: str) -> None:
        """Count an availability answer. Counts are batched in memory and added to the
        durable counters at most once a second (and before every /metrics scrape, and
        on ``close``): one read-modify-write of counters.json per request would cap the
        whole server at about a thousand answers a second, under one flock."""
        key = counters.key("admissions", {"path": "http", "result": result, "reason": reason})
        now = time.monotonic()
        with self._lock:
            self._unflushed[key] = self._unflushed.get(key, 0.0) + 1
            due = now - self._flushed_at >= COUNTER_FLUSH_SECONDS
        if due:
            self.flush_counters(store)

    def flush_counters(self, store: Store | None = None) -> None:
        """Add the batched counts to ``counters.json`` now."""
        with self._lock:
            pending, self._unflushed = self._unflushed, {}
            self._flushed_at = time.monotonic()
        if not pending:
            return
        store = store or Store(self.settings().root)
        if store.locks_dir.is_dir():
            counters.add(store, pending)

    # -- registration (no auth) --

    def xmlrpc(self, environ: WSGIEnvironment) -> Response:
        body = read_body(environ)
        settings = self.settings()
        store = Store(settings.root)
        host = request_host(settings, environ)

        def register(serial: Any, nickname: Any, uuid: Any, pubkey: Any) -> dict[str, str]:
            try:
                return registration.register(settings, Registry(store), serial, nickname,
                                             uuid, pubkey, host, environ.get("REMOTE_ADDR", ""))
            except (XsbackupError, OSError):
                LOG.exception("registration of %r failed", str(serial)[:80])
                return {"success": registration.ERROR,
                        "error": "server error; the administrator can find it in the log"}

        dispatcher = SimpleXMLRPCDispatcher(allow_none=True, encoding="utf-8")
        dispatcher.register_function(register, "register")
        # _marshaled_dispatch is the dispatcher's documented-by-use entry point (the
        # stdlib's own CGI and HTTP handlers call it); it turns any error into a Fault.
        # (typeshed says str; it returns the encoded bytes.)
        reply = cast(bytes, dispatcher._marshaled_dispatch(body))
        return Response(200, reply, "text/xml; charset=utf-8")

    # -- authentication --

    def _current_users(self) -> tuple[tuple[int, int, int], dict[str, users.User]]:
        store = Store(self.settings().root)
        try:
            st = os.stat(users.users_path(store))
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._lock:
            if stamp == self._users_stamp:
                return stamp, self._users
        loaded = users.load(store) if stamp != (0, 0, 0) else {}
        with self._lock:
            self._users_stamp, self._users = stamp, loaded
        return stamp, loaded

    def _from_basic(self, header: str) -> users.User | None:
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
        stamp, current = self._current_users()
        key = hmac.new(self._secret, raw, hashlib.sha256).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._credentials.get(key)
        if hit is not None and hit.users_stamp == stamp and hit.expires > now:
            return hit.user
        user = users.verify_in(current, name, password)
        if user is None:
            LOG.warning("http authentication failed for user %r", name[:64])
        with self._lock:
            if len(self._credentials) >= MAX_CACHED_CREDENTIALS:
                self._credentials.clear()
            self._credentials[key] = _CachedCredential(stamp, now + BASIC_CACHE_SECONDS, user)
        return user

    @staticmethod
    def _session_token(environ: WSGIEnvironment) -> str | None:
        text = str(environ.get("HTTP_COOKIE") or "")
        if SESSION_COOKIE not in text:
            return None
        try:
            cookie = SimpleCookie(text)
        except CookieError:
            return None
        morsel = cookie.get(SESSION_COOKIE)
        return morsel.value if morsel is not None and morsel.value else None

    def _from_session(self, token: str) -> users.User | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            session = self._sessions.get(key)
        if session is None:
            return None
        _, current = self._current_users()
        user = current.get(session.user)
        if (user is None or user.disabled or user.fingerprint != session.fingerprint
                or session.expires <= time.time()):
            with self._lock:
                self._sessions.pop(key, None)
            return None
        return user

    def authenticate(self, environ: WSGIEnvironment) -> users.User | None:
        token = self._session_token(environ)
        if token is not None:
            user = self._from_session(token)
            if user is not None:
                return user
        header = str(environ.get("HTTP_AUTHORIZATION") or "")
        return self._from_basic(header) if header else None

    def require_user(self, environ: WSGIEnvironment) -> users.User:
        user = self.authenticate(environ)
        if user is None:
            raise HttpError(401, "authentication required", [("WWW-Authenticate", REALM)])
        return user

    # -- sessions --

    def session(self, environ: WSGIEnvironment, method: str) -> Response:
        if method == "POST":
            return self._login(environ)
        if method == "DELETE":
            token = self._session_token(environ)
            if token is not None:
                with self._lock:
                    self._sessions.pop(hashlib.sha256(token.encode()).hexdigest(), None)
            return json_response({"status": "logged out"},
                                 headers=[("Set-Cookie", self._cookie(environ, "", 0))])
        if method == "GET":
            user = self.require_user(environ)
            return json_response({"user": user.name, "role": user.role})
        raise HttpError(405, "method not allowed", [("Allow", "GET, POST, DELETE")])

    # -- session helpers shared with the web UI --

    def derived_key(self, label: str) -> bytes:
        """A per-process key for ``label`` (CSRF tokens), derived from the secret."""
        return hmac.new(self._secret, label.encode(), hashlib.sha256).digest()

    def start_session(self, user: users.User) -> str:
        """A new session for ``user``; returns its token (the cookie value)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
                if len(self._sessions) >= MAX_SESSIONS:
                    oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
                    del self._sessions[oldest]
            self._sessions[hashlib.sha256(token.encode()).hexdigest()] = _Session(
                user.name, user.fingerprint, now + SESSION_SECONDS)
        LOG.info("http login: user %s (%s)", user.name, user.role)
        return token

    def end_session(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(hashlib.sha256(token.encode()).hexdigest(), None)

    def session_user(self, environ: WSGIEnvironment) -> tuple[users.User, str] | None:
        """(user, session token) from the session cookie alone (never HTTP Basic)."""
        token = self._session_token(environ)
        if token is None:
            return None
        user = self._from_session(token)
        return None if user is None else (user, token)

    def session_cookie(self, environ: WSGIEnvironment, token: str, max_age: int) -> str:
        return self._cookie(environ, token, max_age)

    def login_throttled(self, environ: WSGIEnvironment, name: str) -> int:
        """Seconds until ``name`` may try to sign in from this address (0: now)."""
        s = self.settings()
        return self.throttle.retry_after(str(environ.get("REMOTE_ADDR") or ""), name,
                                         s.ui.max_login_failures,
                                         60.0 * s.ui.login_lockout_minutes)

    def login_failed(self, environ: WSGIEnvironment, name: str) -> None:
        s = self.settings()
        self.throttle.failed(str(environ.get("REMOTE_ADDR") or ""), name,
                             s.ui.max_login_failures,
                             60.0 * s.ui.login_lockout_minutes)

    def _login(self, environ: WSGIEnvironment) -> Response:
        try:
            data = orjson.loads(read_body(environ))
        except orjson.JSONDecodeError:
            raise HttpError(400, "the body must be JSON {\"user\": ..., \"password\": ...}") \
                from None
        if not isinstance(data, dict) or not isinstance(data.get("user"), str) \
                or not isinstance(data.get("password"), str):
            raise HttpError(400, "the body must be JSON {\"user\": ..., \"password\": ...}")
        wait = self.login_throttled(environ, data["user"])
        if wait:
            raise HttpError(429, f"too many failed logins; try again in {wait} seconds",
                            [("Retry-After", str(wait))])
        _, current = self._current_users()
        user = users.verify_in(current, data["user"], data["password"])
        if user is None:
            LOG.warning("http login failed for user %r", data["user"][:64])
            self.login_failed(environ, data["user"])
            raise HttpError(401, "invalid user or password", [("WWW-Authenticate", REALM)])
        self.throttle.succeeded(user.name)
        token = self.start_session(user)
        now = time.time()
        expires = dt.datetime.fromtimestamp(now + SESSION_SECONDS, dt.UTC)
        return json_response(
            {"user": user.name, "role": user.role,
             "expires": expires.isoformat(timespec="seconds")},
            headers=[("Set-Cookie", self._cookie(environ, token, SESSION_SECONDS))])

    @staticmethod
    def _cookie(environ: WSGIEnvironment, value: str, max_age: int) -> str:
        parts = [f"{SESSION_COOKIE}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly",
                 "SameSite=Strict"]
        if environ.get("wsgi.url_scheme") == "https":
            parts.append("Secure")
        return "; ".join(parts)

    # -- the JSON API (authenticated; every route reads) --

    def api(self, environ: WSGIEnvironment, method: str, rest: str) -> Response:
        settings = self.settings()
        store = Store(settings.root)
        parts = rest.split("/")
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # one trailing slash is tolerated
        route: Callable[[], Any]
        match parts:
            case ["health"]:
                route = partial(health, settings, store)
            case ["clients"]:
                route = partial(clients_list, store)
            case ["clients", sn]:
                route = partial(client_detail, store, sn)
            case ["clients", sn, "volumes"]:
                route = partial(volumes, store, sn)
            case ["clients", sn, "volumes", vol, "snapshots"]:
                route = partial(snapshots, store, sn, vol)
            case ["clients", sn, "volumes", vol, "snapshots", sid]:
                route = partial(snapshot, store, sn, vol, sid)
            case ["clients", sn, "restore"]:
                query = parse_qs(str(environ.get("QUERY_STRING", "")))
                _client_or_404(store, sn)
                route = partial(lambda: restore.plan(
                    store, sn, query.get("volume", [""])[0] or None,
                    query.get("at", [""])[0] or None, request_host(settings, environ),
                    settings.server.ssh_port,
                    query.get("from", [""])[0] or None).as_dict())
            case ["clients", sn, "volumes", vol, "snapshots", sid, *sub] if sub:
                if method != "GET":
                    raise HttpError(405, "method not allowed", [("Allow", "GET")])
                _client_or_404(store, sn)
                status, headers, body = webrestore.snapshot_route(
                    settings, store, environ, sn, vol, sid, sub)
                if isinstance(body, bytes):
                    return Response(status, body, "", headers)
                return Response(status, b"", "", headers, stream=body)
            case _:
                raise HttpError(404, "not found")
        if method != "GET":
            raise HttpError(405, "method not allowed", [("Allow", "GET")])
        return json_response(route())


def make_app(settings_provider: SettingsProvider) -> App:
    """The WSGI application; ``settings_provider()`` is asked on every request, so a
    configuration reload (SIGHUP) takes effect at once."""
    return App(settings_provider)


# ---- the server ------------------------------------------------------------------------


class HttpServer:
    """A waitress server bound at construction; ``run_forever`` serves until ``close``."""

    def __init__(self, app: WSGIApplication, host: str, port: int, threads: int) -> None:
        import waitress  # type: ignore[import-untyped]  # no stubs; pure Python

        self.app = app
        self._server: Any = waitress.create_server(
            app, host=host, port=port, threads=threads, ident="xsbackup",
            max_request_body_size=1 << 20, expose_tracebacks=False)
        self.effective_host: str = str(self._server.effective_host)
        self.effective_port: int = int(self._server.effective_port)
        self._started = threading.Event()
        self._stopped = threading.Event()

    def run_forever(self) -> None:
        self._started.set()
        try:
            self._server.run()
        finally:
            self._stopped.set()

    run = run_forever

    def _close_sockets(self) -> None:
        from waitress import wasyncore

        # A connection the peer already dropped can fail to close; it is gone either way.
        with contextlib.suppress(OSError):
            wasyncore.close_all(self._server._map)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, stop the workers. Thread-safe."""
        if self._started.is_set() and not self._stopped.is_set():
            # The socket map belongs to the loop's thread: let the loop close it.
            self._server.trigger.pull_trigger(self._close_sockets)
            self._stopped.wait(timeout)
        if not self._stopped.is_set():
            self._close_sockets()
        self._server.task_dispatcher.shutdown(timeout=timeout)
        if isinstance(self.app, App):
            self.app.flush_counters()


def make_server(app: WSGIApplication, host: str, port: int, threads: int) -> HttpServer:
    return HttpServer(app, host, port, threads)
