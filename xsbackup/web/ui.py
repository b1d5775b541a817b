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

Security: sessions are the JSON API's (``sessions.py``: a signed ``xsbackup_session``
cookie, HttpOnly, SameSite=Strict, Secure under https, surviving a restart); the UI never
takes HTTP Basic. Every POST carries a CSRF token, the HMAC of the session's id (the
sign-in form's is bound to a pre-session cookie; ``auth.py``), checked before anything
else happens; a request with ``Sec-Fetch-Site: cross-site`` is refused too. Approve,
reject, aliases and prune need the ``admin`` role, checked on the server whatever the
page showed. Failed sign-ins are throttled per address and per user name, with the JSON
API's and HTTP Basic's (``auth.check_password``). Downloads are ``restore.downloads``'
attachments, with a ``sandbox`` CSP and ``nosniff``, within the user's download slots
(``limits.send``).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from importlib import resources
from urllib.parse import parse_qs, urlencode

from flask import Blueprint, Response, flash, g, request

from xsbackup.clients import registration
from xsbackup.context import Context
from xsbackup.logs import LOG
from xsbackup.restore import downloads, resolve
from xsbackup.store import Store, check_client
from xsbackup.web import limits, sessions
from xsbackup.web.auth import (
    LOGIN_COOKIE,
    LoginThrottled,
    authenticator,
    csrf_token,
    login_token,
    new_presession,
    token_ok,
)
from xsbackup.web.base import (
    ALL_METHODS,
    NOSNIFF,
    HttpError,
    Plain,
    body,
    cookie,
    current_ctx,
    from_another_site,
    parse_query,
    read_cookie,
    redirect,
)
from xsbackup.web.browse import browse, changes, journal_page, preview
from xsbackup.web.pages import client_page, dashboard, human_bytes, prune_plan, run_prune
from xsbackup.web.render import Visit, render, visit

STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
OPEN_ENDPOINTS = ("ui.static_file", "ui.login", "ui.bare")
SNAPSHOT = "/clients/<sn>/volumes/<vol>/snapshots/<sid>"

bp = Blueprint("ui", __name__, url_prefix="/ui")
_sweeping = threading.Lock()


# ---- plumbing ---------------------------------------------------------------------------


def allow(*methods: str) -> Visit:
    v = visit()
    if v.method not in methods:
        allowed = ", ".join(m for ms in methods for m in ((ms, "HEAD") if ms == "GET"
                                                         else (ms,)))
        raise HttpError(405, f"This page does not take {v.method[:10]} requests.",
                        [("Allow", allowed)])
    return v


def csrf_key(store: Store) -> bytes:
    return sessions.keys().derived_key(store, "webui-csrf")


def read_form(v: Visit) -> None:
    v.form = parse_qs(body().decode("ascii", "replace"), keep_blank_values=True,
                      encoding="utf-8", errors="replace")


def safe_next(value: str) -> str:
    """Where to go after signing in: only a path of this UI."""
    if value.startswith("/ui/") and not value.startswith("//") and "\\" not in value \
            and not any(ord(c) < 0x21 for c in value):
        return value
    return "/ui/"


@bp.before_request
def _enter() -> Response | None:
    """Every UI request: who is signed in (or off to the sign-in page), then the CSRF
    check of a POST, before any route runs."""
    v = g.xs_visit = Visit("GET" if request.method == "HEAD" else request.method,
                           parse_query(request.environ))
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    store = current_ctx().store
    found = authenticator().from_session(store)
    if found is None:
        if v.method == "GET":
            target = request.path + (f"?{request.environ['QUERY_STRING']}"
                                     if request.environ.get("QUERY_STRING") else "")
            return redirect("/ui/login?" + urlencode({"next": target}))
        raise HttpError(403, "You are not signed in (or your session ended). Sign in, "
                             "then try again.")
    v.user, v.sid = found
    v.csrf = csrf_token(csrf_key(store), v.sid)
    if v.method == "POST":
        check_csrf(v)
    return None


def check_csrf(v: Visit) -> None:
    """Before anything changes: the form's token must be this session's."""
    if from_another_site():
        raise HttpError(403, "Refused: the form was sent from another site.")
    read_form(v)
    if not token_ok(v.csrf, v.field("csrf")):
        LOG.warning("web ui: refused a %s to %s without a valid CSRF token (user %s)",
                    v.method, request.path[:200], v.user_name)
        raise HttpError(403, "Refused: the form's security token is missing or not valid "
                             "for this session. Reload the page and try again.")


def require_admin(v: Visit, what: str) -> None:
    if not v.is_admin:
        role = v.user.role if v.user else "-"
        LOG.warning("web ui: user %s (%s) refused: %s", v.user_name, role, what)
        raise HttpError(403, f"Only an administrator can {what}. You are signed in as a "
                             f"{v.user.role if v.user else 'guest'}, which may look and "
                             "download but not change anything.")


@bp.route("", methods=ALL_METHODS, endpoint="bare")
@bp.route("/index.html", methods=ALL_METHODS, endpoint="bare")
def bare() -> Response:
    return redirect("/ui/")


@bp.route("/static/<name>", methods=ALL_METHODS)
def static_file(name: str) -> Response:
    allow("GET")
    if name not in STATIC:
        raise HttpError(404, "There is no such file.")
    data = resources.files("xsbackup.web").joinpath("templates", "static", name).read_bytes()
    return Plain(data, 200, [("Cache-Control", "max-age=300"), NOSNIFF],
                 content_type=STATIC[name])


@bp.route("/<path:rest>", methods=ALL_METHODS)
def unknown(rest: str) -> Response:
    raise HttpError(404, "There is no such page.")


# ---- signing in and out -----------------------------------------------------------------


def _presession() -> str:
    value = read_cookie(LOGIN_COOKIE)
    return value if 20 <= len(value) <= 64 and value.replace("-", "").replace(
        "_", "").isalnum() else ""


def login_form(v: Visit, status: int = 200, message: str = "", name: str = "",
               headers: list[tuple[str, str]] | None = None) -> Response:
    pre = _presession() or new_presession()
    login_cookie = ("Set-Cookie", cookie(LOGIN_COOKIE, pre, 3600, "/ui/"))
    return render("login.html", {
        "login_csrf": login_token(csrf_key(current_ctx().store), pre), "message": message,
        "name": name, "next": safe_next(v.field("next") or v.arg("next"))},
        status, [login_cookie, *(headers or [])])


@bp.route("/login", methods=ALL_METHODS)
def login() -> Response:
    v = allow("GET", "POST")
    ctx = current_ctx()
    auth = authenticator()
    if v.method == "GET":
        if auth.from_session(ctx.store) is not None:
            return redirect(safe_next(v.arg("next")))
        return login_form(v)
    read_form(v)
    pre = _presession()
    if not pre or not token_ok(login_token(csrf_key(ctx.store), pre), v.field("csrf")):
        return login_form(v, 403, "The sign-in form expired, or this browser does not keep "
                          "cookies. Try again.")
    name = v.field("user").strip()
    try:
        user = auth.check_password(ctx.settings, ctx.store, name, v.field("password"),
                                   "web ui")
    except LoginThrottled as e:
        minutes = max(1, (e.wait + 59) // 60)
        return login_form(v, 429, f"Too many failed sign-ins. Try again in {minutes} minute"
                          f"{'s' if minutes > 1 else ''}.", name, e.headers)
    if user is None:
        return login_form(v, 401, "Wrong user name or password.", name)
    if auth.from_session(ctx.store) is not None:
        auth.end_session(ctx.store)
    auth.start_session(user)
    return redirect(safe_next(v.field("next")),
                    [("Set-Cookie", cookie(LOGIN_COOKIE, "", 0, "/ui/"))])


@bp.route("/logout", methods=ALL_METHODS)
def logout() -> Response:
    v = allow("GET", "POST")
    if v.method == "POST":
        authenticator().end_session(current_ctx().store)
        return redirect("/ui/login")
    return render("logout.html")


# ---- pages ------------------------------------------------------------------------------


@bp.route("/", methods=ALL_METHODS)
def dashboard_page() -> Response:
    v = allow("GET")
    ctx = current_ctx()
    return render("dashboard.html", dashboard(ctx.settings, ctx.store, v.arg("q"),
                                              v.arg("sort"), v.arg("order"),
                                              dt.datetime.now(dt.UTC)))


@bp.route("/clients/<sn>", methods=ALL_METHODS)
def client(sn: str) -> Response:
    allow("GET")
    ctx = current_ctx()
    return render("client.html", client_page(ctx.settings, ctx.store, sn,
                                             dt.datetime.now(dt.UTC)))


@bp.route("/clients/<sn>/volumes/<vol>/latest", methods=ALL_METHODS)
def latest(sn: str, vol: str) -> Response:
    allow("GET")
    store = current_ctx().store
    check_client(sn)
    sid = resolve.latest(store, sn, vol)
    if sid is None:
        raise HttpError(404, f"{vol} of {sn} has no snapshot yet.")
    return redirect(f"/ui/clients/{sn}/volumes/{vol}/snapshots/{sid}/browse")


@bp.route(SNAPSHOT, methods=ALL_METHODS)
def snapshot(sn: str, vol: str, sid: str) -> Response:
    allow("GET")
    downloads.check_snapshot(current_ctx().store, sn, vol, sid)
    return redirect(f"/ui/clients/{sn}/volumes/{vol}/snapshots/{sid}/browse")


def _base(sn: str, vol: str, sid: str) -> dict[str, str]:
    return {"serial": sn, "volume": vol, "sid": sid,
            "base": f"/ui/clients/{sn}/volumes/{vol}/snapshots/{sid}"}


@bp.route(f"{SNAPSHOT}/browse", methods=ALL_METHODS)
def browse_page(sn: str, vol: str, sid: str) -> Response:
    v = allow("GET")
    return render("browse.html", {**_base(sn, vol, sid), **browse(
        current_ctx().store, sn, vol, sid, v.arg("path"), v.page())})


@bp.route(f"{SNAPSHOT}/changes", methods=ALL_METHODS)
def changes_page(sn: str, vol: str, sid: str) -> Response:
    """What changed since ``?since=`` (an id or time; default: the snapshot before)."""
    v = allow("GET")
    return render("changes.html", {**_base(sn, vol, sid), **changes(
        current_ctx(), sn, vol, sid, v.arg("since"))})


@bp.route(f"{SNAPSHOT}/journal", methods=ALL_METHODS)
def journal(sn: str, vol: str, sid: str) -> Response:
    v = allow("GET")
    return render("journal.html", {**_base(sn, vol, sid), **journal_page(
        current_ctx().store, sn, vol, sid, v.arg("path"), v.page(), v.arg("q"))})


@bp.route(f"{SNAPSHOT}/journal/<uid>/preview", methods=ALL_METHODS)
def journal_preview(sn: str, vol: str, sid: str, uid: str) -> Response:
    v = allow("GET")
    data = preview(current_ctx().store, sn, vol, sid, v.arg("path"), uid)
    return Plain(data, 200, [("Cache-Control", "private, max-age=3600"), NOSNIFF,
                             ("Content-Security-Policy", "default-src 'none'; sandbox")],
                 content_type="image/png")


def _send(v: Visit, sn: str, vol: str, sid: str, what: str,
          make: Callable[[Store], downloads.Download]) -> Response:
    ctx = current_ctx()
    response = limits.send(v.user_name, ctx.settings.http, lambda: make(ctx.store))
    LOG.info("web ui: %s downloads %s %s/%s %s", v.user_name, sn, vol, sid, what)
    return response


@bp.route(f"{SNAPSHOT}/file", methods=ALL_METHODS)
def file(sn: str, vol: str, sid: str) -> Response:
    v = allow("GET")
    return _send(v, sn, vol, sid, "file", lambda store: downloads.download_file(
        store, sn, vol, sid, v.arg("path")))


@bp.route(f"{SNAPSHOT}/archive.zip", methods=ALL_METHODS, defaults={"fmt": "zip"})
@bp.route(f"{SNAPSHOT}/archive.tar", methods=ALL_METHODS, defaults={"fmt": "tar"})
def archive(sn: str, vol: str, sid: str, fmt: str) -> Response:
    v = allow("GET")
    return _send(v, sn, vol, sid, f"archive.{fmt}", lambda store: downloads.download_archive(
        store, sn, vol, sid, v.arg("path"), fmt))


@bp.route(f"{SNAPSHOT}/journal/<bundle>", methods=ALL_METHODS)
def journal_bundle(sn: str, vol: str, sid: str, bundle: str) -> Response:
    if not bundle.endswith(".xoj"):
        raise HttpError(404, "There is no such page.")
    v = allow("GET")
    return _send(v, sn, vol, sid, bundle, lambda store: downloads.download_bundle(
        store, sn, vol, sid, v.arg("path"), bundle[:-4]))


# ---- actions (admin) --------------------------------------------------------------------


@bp.route("/registrations/<sn>/approve", methods=ALL_METHODS, defaults={"action": "approve"})
@bp.route("/registrations/<sn>/reject", methods=ALL_METHODS, defaults={"action": "reject"})
def decide(sn: str, action: str) -> Response:
    v = allow("POST")
    require_admin(v, f"{action} a registration")
    check_client(sn)
    registry = current_ctx().registry
    # The form names the one request the admin chose (several may wait for one serial,
    # an impostor's among them); without it only a lone request can be decided.
    fingerprint = v.field("fingerprint") or None
    if action == "approve":
        registration.approve(registry, sn, fingerprint=fingerprint)
        LOG.warning("web ui: %s approved the pending key %s of %s", v.user_name,
                    fingerprint or "-", sn)
        flash(f"Approved the new key of {sn}: it can back up now.", "ok")
    else:
        registration.reject(registry, sn, fingerprint=fingerprint)
        LOG.warning("web ui: %s rejected the pending key %s of %s", v.user_name,
                    fingerprint or "-", sn)
        flash(f"Rejected the pending key of {sn}.", "ok")
    return redirect("/ui/#pending")


@bp.route("/clients/<sn>/aliases/add", methods=ALL_METHODS, defaults={"action": "add"})
@bp.route("/clients/<sn>/aliases/remove", methods=ALL_METHODS, defaults={"action": "remove"})
def alias(sn: str, action: str) -> Response:
    v = allow("POST")
    require_admin(v, "change aliases")
    check_client(sn)
    old = v.field("alias").strip()
    registry = current_ctx().registry
    if action == "add":
        registry.add_alias(sn, check_client(old))
        flash(f"{sn} may now read the snapshots of {old}.", "ok")
    else:
        registry.remove_alias(sn, old)
        flash(f"{sn} no longer reads the snapshots of {old}.", "ok")
    LOG.warning("web ui: %s %s alias %s -> %s", v.user_name,
                "added" if action == "add" else "removed", sn, old[:64])
    return redirect(f"/ui/clients/{sn}#aliases")


@bp.route("/clients/<sn>/prune", methods=ALL_METHODS)
def prune_page(sn: str) -> Response:
    v = allow("GET", "POST")
    require_admin(v, "prune snapshots")
    ctx = current_ctx()
    now = dt.datetime.now(dt.UTC)
    if v.method == "GET":
        client_rec, items = prune_plan(ctx.settings, ctx.store, sn, now)
        doomed = [i for i in items if not i.keep]
        return render("prune.html", {
            "client": client_rec, "doomed": doomed, "kept": len(items) - len(doomed),
            "freed": sum(i.exclusive for i in doomed)})
    confirmed = set(v.form.get("snapshot", []))
    if v.field("confirm") != "yes" or not confirmed:
        raise HttpError(400, "Nothing was pruned: the prune was not confirmed.")
    done = run_prune(ctx.settings, ctx.store, sn, confirmed, now)
    pruned = [i for i in done if i.outcome == "pruned"]
    skipped = [i for i in done if i.outcome != "pruned"]
    LOG.warning("web ui: %s pruned %d snapshot(s) of %s", v.user_name, len(pruned), sn)
    flash(f"Pruned {len(pruned)} snapshot{'s' * (len(pruned) != 1)} of {sn}, freeing "
          f"about {human_bytes(sum(i.exclusive for i in pruned))}.", "ok")
    for i in skipped:
        flash(f"Kept {i.volume}/{i.id}: {i.outcome or i.reasons[0]}.", "warn")
    sweep_trash(ctx)
    return redirect(f"/ui/clients/{sn}")


def sweep_trash(ctx: Context) -> threading.Thread | None:
    """Delete the pruned trees in the background (they are already out of sight)."""
    if not _sweeping.acquire(blocking=False):
        return None

    def run() -> None:
        try:
            ctx.storage.purge()
        except Exception:
            LOG.exception("web ui: deleting the trash failed; the next sweep retries")
        finally:
            _sweeping.release()

    t = threading.Thread(target=run, name="ui-trash", daemon=True)
    t.start()
    return t
