"""The web UI for admins and teachers, under ``/ui/`` on the HTTP port of ``xsbackup serve``.

Routes (every one but sign-in and the static files needs a signed-in session):

* ``GET /ui/login``, ``POST /ui/login``: sign in (``xsbackup admin add-user``'s users);
  ``POST /ui/logout`` signs out (``GET`` shows the button).
* ``GET /ui/``: the dashboard, ``?q=`` filters by serial or nickname, ``?sort=`` (serial,
  nickname, last, age, snapshots, usage, error) and ``?order=asc|desc`` sort.
* ``POST /ui/registrations/<SN>/approve`` and ``.../reject``: pending keys (admin).
* ``GET /ui/clients/<SN>``: volumes, snapshot timeline and charts, aliases, policy and
  the prune plan; ``POST /ui/clients/<SN>/aliases/add`` and ``.../remove`` (admin);
  ``GET /ui/clients/<SN>/prune`` asks for confirmation, ``POST`` prunes (admin).
* Below ``/ui/clients/<SN>/volumes/<V>/snapshots/<ID>/``: ``browse?path=&page=``,
  ``file?path=``, ``archive.zip?path=``, ``archive.tar[?path=]``, ``journal?path=&q=&page=``,
  ``journal/<uid>.xoj?path=`` and ``journal/<uid>/preview?path=``; ``.../volumes/<V>/latest``
  redirects to the newest snapshot.
* ``GET /ui/static/ui.css`` and ``ui.js``.

Security: sessions are the JSON API's (``xsbackup_session``: HttpOnly, SameSite=Strict,
Secure under https); the UI never takes HTTP Basic. Every POST carries a CSRF token, the
HMAC of the session token (the sign-in form's is bound to a pre-session cookie), checked
before anything else happens; a request with ``Sec-Fetch-Site: cross-site`` is refused
too. Approve, reject, aliases and prune need the ``admin`` role, checked on the server
whatever the page showed. Failed sign-ins are throttled per address and per user name
(``webui_auth``). Templates are Jinja2 with autoescaping on; nothing from a client is
ever marked safe. Pages are sent with a strict Content-Security-Policy (no inline
script or style), ``X-Frame-Options: DENY`` and ``Cache-Control: no-store``; downloads
are attachments with ``sandbox`` CSP and ``nosniff``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlencode
from wsgiref.types import WSGIEnvironment

import jinja2

from xsbackup import __version__
from xsbackup.clients import registration
from xsbackup.clients.registry import Registry
from xsbackup.config import Settings
from xsbackup.context import Context
from xsbackup.errors import (
    ClientNotFound,
    InvalidName,
    LockBusy,
    NothingPending,
    NotReadable,
    PathNotFound,
    PathRefused,
    SnapshotNotFound,
)
from xsbackup.logs import LOG
from xsbackup.restore import journal
from xsbackup.store import Store, check_client
from xsbackup.web import users
from xsbackup.web.app import SESSION_SECONDS, App, HttpError, Response, read_body
from xsbackup.web.auth import LOGIN_COOKIE, csrf_token, login_token, new_presession, token_ok
from xsbackup.web.browse import (
    browse,
    download_archive,
    download_bundle,
    download_file,
    journal_page,
    parse_query,
    preview,
    snapshot_or_404,
)
from xsbackup.web.pages import (
    client_page,
    dashboard,
    human_age,
    human_bytes,
    iso,
    local_time,
    prune_plan,
    run_prune,
)

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
PAGE_HEADERS = [("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"),
                ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
                ("Cross-Origin-Opener-Policy", "same-origin"), ("Cache-Control", "no-store")]
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
HTML = "text/html; charset=utf-8"
MAX_FLASH_SESSIONS = 10_000


class UIError(Exception):
    """An error shown as a page with ``status``."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class _Redirect(UIError):
    """Answer with ``response`` instead (sign in first)."""

    def __init__(self, response: Response) -> None:
        super().__init__(303, "redirect")
        self.response = response


@dataclass
class Req:
    environ: WSGIEnvironment
    method: str
    path: str
    settings: Settings
    store: Store
    query: dict[str, list[str]] = field(default_factory=dict)
    form: dict[str, list[str]] = field(default_factory=dict)
    user: users.User | None = None
    token: str = ""
    csrf: str = ""

    def arg(self, name: str, default: str = "") -> str:
        """A query parameter; only ``path`` keeps bytes that are not UTF-8 (as surrogate
        escapes, to name a file exactly), the others are text."""
        value = self.query.get(name, [default])[0]
        if name == "path":
            return value
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    def field(self, name: str) -> str:
        return self.form.get(name, [""])[0]

    def page(self) -> int:
        try:
            return max(0, int(self.arg("page", "1")) - 1)
        except ValueError:
            return 0

    @property
    def user_name(self) -> str:
        return self.user.name if self.user is not None else "-"

    @property
    def is_admin(self) -> bool:
        return self.user is not None and self.user.role == "admin"


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(303, b"", "", [("Location", location), ("Cache-Control", "no-store"),
                                   *(headers or [])])


def safe_next(value: str) -> str:
    """Where to go after signing in: only a path of this UI."""
    if value.startswith("/ui/") and not value.startswith("//") and "\\" not in value \
            and not any(ord(c) < 0x21 for c in value):
        return value
    return "/ui/"


class UI:
    """The web UI; one instance per ``App`` (it shares the App's sessions)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("xsbackup.web", "templates"),
            autoescape=jinja2.select_autoescape(("html", "svg", "xml"),
                                                default_for_string=True, default=True),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(bytes=human_bytes, age=human_age, when=local_time, iso=iso,
                                urlpart=lambda s: quote(str(s), safe=""))
        self.env.globals.update(version=__version__)
        self.key = app.derived_key("webui-csrf")
        self._lock = threading.Lock()
        self._flash: dict[str, list[tuple[str, str]]] = {}
        self._sweeping = threading.Lock()

    # ---- entry ------------------------------------------------------------------------

    def handle(self, environ: WSGIEnvironment, method: str, path: str) -> Response:
        settings = self.app.settings()
        req = Req(environ, "GET" if method == "HEAD" else method, path, settings,
                  Store(settings.root), parse_query(environ))
        try:
            return self.route(req)
        except _Redirect as r:
            return r.response
        except UIError as e:
            return self.error(req, e.status, e.message, e.headers)
        except HttpError as e:
            return self.error(req, e.status, e.message, e.headers)
        except InvalidName as e:
            return self.error(req, 400, e.message)
        except (PathRefused, NotReadable) as e:
            return self.error(req, 403, e.message)
        except (PathNotFound, SnapshotNotFound, ClientNotFound) as e:
            return self.error(req, 404, e.message)
        except journal.JournalError as e:
            return self.error(req, 404, str(e) or "not a Sugar datastore")
        except (NothingPending, LockBusy) as e:
            return self.error(req, 409, e.message)
        except Exception:
            LOG.exception("http %s %s failed", method, path[:200])
            return self.error(req, 500, "The server failed; the details are in its log.")

    def route(self, req: Req) -> Response:
        rest = req.path[len("/ui"):]
        if rest in ("", "/index.html"):
            return redirect("/ui/")
        parts = rest[1:].split("/")
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()
        if parts[0] == "static" and len(parts) == 2:
            self.allow(req, "GET")
            return self.static(parts[1])
        if parts == ["login"]:
            return self.login(req)
        self.authenticate(req)
        if req.method == "POST":
            self.check_csrf(req)
        match parts:
            case [""]:
                self.allow(req, "GET")
                return self.render(req, "dashboard.html", dashboard(
                    req.settings, req.store, req.arg("q"), req.arg("sort"), req.arg("order"),
                    dt.datetime.now(dt.UTC)))
            case ["logout"]:
                if req.method == "POST":
                    return self.logout(req)
                self.allow(req, "GET", "POST")
                return self.render(req, "logout.html")
            case ["registrations", sn, ("approve" | "reject") as action]:
                return self.decide(req, sn, action)
            case ["clients", sn]:
                self.allow(req, "GET")
                return self.render(req, "client.html", client_page(
                    req.settings, req.store, sn, dt.datetime.now(dt.UTC)))
            case ["clients", sn, "aliases", ("add" | "remove") as action]:
                return self.alias(req, sn, action)
            case ["clients", sn, "prune"]:
                return self.prune(req, sn)
            case ["clients", sn, "volumes", vol, "latest"]:
                self.allow(req, "GET")
                check_client(sn)
                ids = req.store.snapshot_ids(sn, vol)
                if not ids:
                    raise UIError(404, f"{vol} of {sn} has no snapshot yet.")
                latest = req.store.latest_id(sn, vol)
                sid = latest if latest in ids else ids[-1]
                return redirect(f"/ui/clients/{sn}/volumes/{vol}/snapshots/{sid}/browse")
            case ["clients", sn, "volumes", vol, "snapshots", sid]:
                self.allow(req, "GET")
                snapshot_or_404(req.store, sn, vol, sid)
                return redirect(f"/ui/clients/{sn}/volumes/{vol}/snapshots/{sid}/browse")
            case ["clients", sn, "volumes", vol, "snapshots", sid, *sub]:
                self.allow(req, "GET")
                return self.snapshot(req, sn, vol, sid, sub)
        raise UIError(404, "There is no such page.")

    # ---- plumbing ---------------------------------------------------------------------

    @staticmethod
    def allow(req: Req, *methods: str) -> None:
        if req.method not in methods:
            allowed = ", ".join(m for ms in methods for m in ((ms, "HEAD") if ms == "GET"
                                                             else (ms,)))
            raise UIError(405, f"This page does not take {req.method[:10]} requests.",
                          [("Allow", allowed)])

    def render(self, req: Req, template: str, context: dict[str, Any] | None = None,
               status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
        flashes = self.pop_flashes(req) if req.token and status < 300 else []
        body = self.env.get_template(template).render(
            user=req.user, is_admin=req.is_admin, csrf=req.csrf, flashes=flashes,
            tz=dt.datetime.now().astimezone().tzname() or "local", **(context or {}))
        return Response(status, body.encode("utf-8", "replace"), HTML,
                        [*PAGE_HEADERS, *(headers or [])])

    def error(self, req: Req, status: int, message: str,
              headers: list[tuple[str, str]] | None = None) -> Response:
        title = http.HTTPStatus(status).phrase
        return self.render(req, "error.html", {"status": status, "title": title,
                                               "message": message}, status, headers)

    def static(self, name: str) -> Response:
        if name not in STATIC:
            raise UIError(404, "There is no such file.")
        data = resources.files("xsbackup.web").joinpath("templates", "static", name).read_bytes()
        return Response(200, data, STATIC[name], [("Cache-Control", "max-age=300"),
                                                  ("X-Content-Type-Options", "nosniff")])

    def read_form(self, req: Req) -> None:
        body = read_body(req.environ)
        req.form = parse_qs(body.decode("ascii", "replace"), keep_blank_values=True,
                            encoding="utf-8", errors="replace")

    def authenticate(self, req: Req) -> None:
        found = self.app.session_user(req.environ)
        if found is None:
            if req.method == "GET":
                target = req.path + (f"?{req.environ['QUERY_STRING']}"
                                     if req.environ.get("QUERY_STRING") else "")
                raise _Redirect(redirect("/ui/login?" + urlencode({"next": target})))
            raise UIError(403, "You are not signed in (or your session ended). Sign in, "
                               "then try again.")
        req.user, req.token = found
        req.csrf = csrf_token(self.key, req.token)

    def check_csrf(self, req: Req) -> None:
        """Before anything changes: the form's token must be this session's."""
        if str(req.environ.get("HTTP_SEC_FETCH_SITE") or "") == "cross-site":
            raise UIError(403, "Refused: the form was sent from another site.")
        self.read_form(req)
        if not token_ok(req.csrf, req.field("csrf")):
            LOG.warning("web ui: refused a %s to %s without a valid CSRF token (user %s)",
                        req.method, req.path[:200], req.user.name if req.user else "-")
            raise UIError(403, "Refused: the form's security token is missing or not valid "
                               "for this session. Reload the page and try again.")

    def require_admin(self, req: Req, what: str) -> None:
        if not req.is_admin:
            LOG.warning("web ui: user %s (%s) refused: %s", req.user.name if req.user else "-",
                        req.user.role if req.user else "-", what)
            raise UIError(403, f"Only an administrator can {what}. You are signed in as a "
                               f"{req.user.role if req.user else 'guest'}, which may look and "
                               "download but not change anything.")

    def flash(self, req: Req, level: str, text: str) -> None:
        key = hashlib.sha256(req.token.encode()).hexdigest()
        with self._lock:
            if len(self._flash) >= MAX_FLASH_SESSIONS:
                self._flash.clear()
            self._flash.setdefault(key, []).append((level, text))

    def pop_flashes(self, req: Req) -> list[tuple[str, str]]:
        key = hashlib.sha256(req.token.encode()).hexdigest()
        with self._lock:
            return self._flash.pop(key, [])

    # ---- signing in and out -----------------------------------------------------------

    def _login_cookie(self, req: Req, value: str, max_age: int) -> str:
        parts = [f"{LOGIN_COOKIE}={value}", "Path=/ui/", f"Max-Age={max_age}", "HttpOnly",
                 "SameSite=Strict"]
        if req.environ.get("wsgi.url_scheme") == "https":
            parts.append("Secure")
        return "; ".join(parts)

    @staticmethod
    def _presession(req: Req) -> str:
        from http.cookies import CookieError, SimpleCookie

        try:
            morsel = SimpleCookie(str(req.environ.get("HTTP_COOKIE") or "")).get(LOGIN_COOKIE)
        except CookieError:
            return ""
        value = morsel.value if morsel is not None else ""
        return value if 20 <= len(value) <= 64 and value.replace("-", "").replace(
            "_", "").isalnum() else ""

    def login_form(self, req: Req, status: int = 200, message: str = "", name: str = "",
                   headers: list[tuple[str, str]] | None = None) -> Response:
        pre = self._presession(req) or new_presession()
        cookie = ("Set-Cookie", self._login_cookie(req, pre, 3600))
        return self.render(req, "login.html", {
            "login_csrf": login_token(self.key, pre), "message": message, "name": name,
            "next": safe_next(req.field("next") or req.arg("next"))},
            status, [cookie, *(headers or [])])

    def login(self, req: Req) -> Response:
        self.allow(req, "GET", "POST")
        if req.method == "GET":
            if self.app.session_user(req.environ) is not None:
                return redirect(safe_next(req.arg("next")))
            return self.login_form(req)
        self.read_form(req)
        pre = self._presession(req)
        if not pre or not token_ok(login_token(self.key, pre), req.field("csrf")):
            return self.login_form(req, 403, "The sign-in form expired, or this browser "
                                   "does not keep cookies. Try again.")
        name = req.field("user").strip()
        wait = self.app.login_throttled(req.environ, name)
        if wait:
            minutes = max(1, (wait + 59) // 60)
            return self.login_form(
                req, 429, f"Too many failed sign-ins. Try again in {minutes} minute"
                f"{'s' if minutes > 1 else ''}.", name, [("Retry-After", str(wait))])
        user = users.verify(req.store, name, req.field("password"))
        if user is None:
            LOG.warning("web ui: sign-in failed for user %r from %s", name[:64],
                        req.environ.get("REMOTE_ADDR"))
            self.app.login_failed(req.environ, name)
            return self.login_form(req, 401, "Wrong user name or password.", name)
        self.app.throttle.succeeded(user.name)
        old = self.app.session_user(req.environ)
        if old is not None:
            self.app.end_session(old[1])
        token = self.app.start_session(user)
        return redirect(safe_next(req.field("next")), [
            ("Set-Cookie", self.app.session_cookie(req.environ, token, SESSION_SECONDS)),
            ("Set-Cookie", self._login_cookie(req, "", 0))])

    def logout(self, req: Req) -> Response:
        self.app.end_session(req.token)
        self.pop_flashes(req)
        return redirect("/ui/login", [
            ("Set-Cookie", self.app.session_cookie(req.environ, "", 0))])

    # ---- actions (admin) --------------------------------------------------------------

    def decide(self, req: Req, serial: str, action: str) -> Response:
        self.allow(req, "POST")
        self.require_admin(req, f"{action} a registration")
        check_client(serial)
        if action == "approve":
            registration.approve(Registry(req.store), serial)
            LOG.warning("web ui: %s approved the pending key of %s", req.user_name, serial)
            self.flash(req, "ok", f"Approved the new key of {serial}: it can back up now.")
        else:
            registration.reject(Registry(req.store), serial)
            LOG.warning("web ui: %s rejected the pending key of %s", req.user_name, serial)
            self.flash(req, "ok", f"Rejected the pending key of {serial}.")
        return redirect("/ui/#pending")

    def alias(self, req: Req, serial: str, action: str) -> Response:
        self.allow(req, "POST")
        self.require_admin(req, "change aliases")
        check_client(serial)
        old = req.field("alias").strip()
        registry = Registry(req.store)
        if action == "add":
            registry.add_alias(serial, check_client(old))
            self.flash(req, "ok", f"{serial} may now read the snapshots of {old}.")
        else:
            registry.remove_alias(serial, old)
            self.flash(req, "ok", f"{serial} no longer reads the snapshots of {old}.")
        LOG.warning("web ui: %s %s alias %s -> %s", req.user_name,
                    "added" if action == "add" else "removed", serial, old[:64])
        return redirect(f"/ui/clients/{serial}#aliases")

    def prune(self, req: Req, serial: str) -> Response:
        self.allow(req, "GET", "POST")
        self.require_admin(req, "prune snapshots")
        now = dt.datetime.now(dt.UTC)
        if req.method == "GET":
            client, items = prune_plan(req.settings, req.store, serial, now)
            doomed = [i for i in items if not i.keep]
            return self.render(req, "prune.html", {
                "client": client, "doomed": doomed, "kept": len(items) - len(doomed),
                "freed": sum(i.exclusive for i in doomed)})
        confirmed = set(req.form.get("snapshot", []))
        if req.field("confirm") != "yes" or not confirmed:
            raise UIError(400, "Nothing was pruned: the prune was not confirmed.")
        done = run_prune(req.settings, req.store, serial, confirmed, now)
        pruned = [i for i in done if i.outcome == "pruned"]
        skipped = [i for i in done if i.outcome != "pruned"]
        LOG.warning("web ui: %s pruned %d snapshot(s) of %s", req.user_name, len(pruned),
                    serial)
        self.flash(req, "ok", f"Pruned {len(pruned)} snapshot{'s' * (len(pruned) != 1)} of "
                   f"{serial}, freeing about {human_bytes(sum(i.exclusive for i in pruned))}.")
        for i in skipped:
            self.flash(req, "warn", f"Kept {i.volume}/{i.id}: {i.outcome or i.reasons[0]}.")
        self.sweep_trash(req.store)
        return redirect(f"/ui/clients/{serial}")

    def sweep_trash(self, store: Store) -> threading.Thread | None:
        """Delete the pruned trees in the background (they are already out of sight)."""
        if not self._sweeping.acquire(blocking=False):
            return None

        def run() -> None:
            try:
                Context(self.app.settings(), store, Registry(store)).storage.purge()
            except Exception:
                LOG.exception("web ui: deleting the trash failed; the next sweep retries")
            finally:
                self._sweeping.release()

        t = threading.Thread(target=run, name="ui-trash", daemon=True)
        t.start()
        return t

    # ---- snapshots --------------------------------------------------------------------

    def snapshot(self, req: Req, sn: str, vol: str, sid: str, sub: list[str]) -> Response:
        path = req.arg("path")
        base = {"serial": sn, "volume": vol, "sid": sid,
                "base": f"/ui/clients/{sn}/volumes/{vol}/snapshots/{sid}"}
        match sub:
            case ["browse"]:
                return self.render(req, "browse.html", {**base, **browse(
                    req.store, sn, vol, sid, path, req.page())})
            case ["file"]:
                headers, stream = download_file(req.store, sn, vol, sid, path)
            case ["archive.zip" | "archive.tar" as name]:
                headers, stream = download_archive(req.store, sn, vol, sid, path, name[-3:])
            case ["journal"]:
                return self.render(req, "journal.html", {**base, **journal_page(
                    req.store, sn, vol, sid, path, req.page(), req.arg("q"))})
            case ["journal", bundle] if bundle.endswith(".xoj"):
                headers, stream = download_bundle(req.store, sn, vol, sid, path, bundle[:-4])
            case ["journal", uid, "preview"]:
                data = preview(req.store, sn, vol, sid, path, uid)
                return Response(200, data, "image/png", [
                    ("Cache-Control", "private, max-age=3600"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Content-Security-Policy", "default-src 'none'; sandbox")])
            case _:
                raise UIError(404, "There is no such page.")
        LOG.info("web ui: %s downloads %s %s/%s %s", req.user_name, sn, vol, sid, sub[-1])
        return Response(200, b"", "", headers, stream=stream)

