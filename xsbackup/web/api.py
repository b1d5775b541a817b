"""The JSON API (``/api/v1/...``), ``/metrics`` and ``/restore/kit``.

Routes, every one read-only and open to both roles:

* ``GET /api/v1/health``: without credentials, ``{"status": "ok" | "degraded"}`` only
  (for load balancers); with credentials (checked as everywhere), the details;
* ``/clients``, ``/clients/<SN>``, ``/clients/<SN>/volumes``,
  ``/clients/<SN>/volumes/<V>/snapshots[/<ID>]``, ``/clients/<SN>/restore?volume=&at=&from=``;
  a client whose record cannot be read is listed as such (``pages.ReadableRegistry``);
* below ``/clients/<SN>/volumes/<V>/snapshots/<ID>/``, each taking ``?from=OLD`` to read
  an aliased client's snapshot as ``SN``: ``archive.tar`` / ``archive.zip`` ``?path=``,
  ``file?path=``, ``journal?offset=&limit=&q=`` and ``journal/<uid>.xoj``
  (``restore.downloads``, within ``limits.send``'s download slots);
* ``POST``/``GET``/``DELETE /api/v1/session``: sign in with JSON ``{"user", "password"}``
  (``application/json`` only, so no cross-site form can sign a browser in; throttled
  like every sign-in), who am I, sign out;
* ``GET /metrics``: Prometheus text format (``metrics.render``);
* ``GET /restore/kit``, without authentication: the restore kit for a bare device.

Everything else under ``/api/v1/`` and ``/metrics`` needs a session cookie or HTTP Basic
(``auth.py``); a wrong method is a 405, one trailing slash is tolerated. ``<ID>`` is a
snapshot id or ``latest``; ``?path=`` is the name's bytes, percent-encoded, as in the
web UI's links (``base.path_arg``). Every path segment a client supplies goes through
``check_client`` / ``check_volume`` / ``check_snapshot_id`` before it names anything on
disk: a malformed one (or a malformed parameter) is a 400, a well-formed one that does
not exist a 404. Errors are JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable
from typing import Any

import orjson
from flask import Blueprint, Response, g, request

from xsbackup import __version__
from xsbackup.clients import registration
from xsbackup.clients.registry import Client
from xsbackup.context import Context
from xsbackup.errors import Refused
from xsbackup.ingest import admission
from xsbackup.monitor import metrics
from xsbackup.restore import archive as restore
from xsbackup.restore import downloads, resolve
from xsbackup.restore import journal as sugar_journal
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.store import (
    Store,
    check_client,
    check_snapshot_id,
    check_volume,
    disk_use,
    get_xattrs,
)
from xsbackup.web import limits, users
from xsbackup.web.auth import REALM, authenticator
from xsbackup.web.availability import counts
from xsbackup.web.base import (
    ALL_METHODS,
    JSON,
    HttpError,
    Plain,
    body,
    current_ctx,
    from_another_site,
    json_response,
    path_arg,
    read_cookie,
    request_host,
)
from xsbackup.web.pages import ReadableRegistry, client_list
from xsbackup.web.sessions import SESSION_COOKIE

bp = Blueprint("api", __name__)
LOGIN_SHAPE = "the body must be JSON {\"user\": ..., \"password\": ...}"


def only(*methods: str) -> None:
    if request.method not in methods:
        raise HttpError(405, "method not allowed", [("Allow", ", ".join(methods))])


def require_user() -> users.User:
    ctx = current_ctx()
    user: users.User = authenticator().require_user(
        ctx.settings, ctx.store, str(request.environ.get("HTTP_AUTHORIZATION") or ""))
    g.xs_user = user
    return user


# ---- what the routes read ----------------------------------------------------------------


def client_or_404(ctx: Context, serial: str) -> str:
    check_client(serial)
    if not ctx.registry.exists(serial):
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
        ids = resolve.snapshot_ids(store, serial, v)
        rows.append({"volume": v, "snapshots": len(ids),
                     "latest": resolve.latest(store, serial, v),
                     "oldest": ids[0] if ids else None})
    return rows


def health_status(ctx: Context) -> str:
    """``ok``, or ``degraded`` while backups would be refused whatever the load:
    maintenance, or the disk over the admission limits (``admission.check_server``)."""
    try:
        admission.check_server(ctx, reserved=True)
    except Refused:
        return "degraded"
    return "ok"


def health(ctx: Context) -> dict[str, Any]:
    use = disk_use(ctx.store.root)
    return {"status": health_status(ctx), "version": __version__,
            "queue_depth": metrics.queue_depth(ctx.store),
            "maintenance": admission.maintenance_on(ctx),
            "disk": {"blocks_used_ratio": use.blocks_pct / 100.0,
                     "inodes_used_ratio": use.inodes_pct / 100.0,
                     "free_bytes": use.free_bytes}}


def clients_list(ctx: Context) -> list[dict[str, Any]]:
    """Every client; one whose record is unreadable is a row saying so (``unreadable``)."""
    registry = ReadableRegistry(ctx.store)
    records = {c.serial: c for c in registry.clients}
    rows = client_list(registry, dt.datetime.now(dt.UTC))
    for row in rows:
        client = records.get(row["serial"])
        row["uuid"] = client.uuid if client else ""
        row["keys"] = _key_summary(client) if client else []
        row["pending_keys"] = sum(1 for k in row["keys"] if k["status"] == "pending")
    return rows


def client_detail(ctx: Context, serial: str) -> dict[str, Any]:
    client_or_404(ctx, serial)
    client = ctx.registry.get(serial)
    facts = get_xattrs(ctx.store.client_dir(serial))
    return {"serial": client.serial, "nickname": client.nickname, "uuid": client.uuid,
            "disabled": client.disabled, "aliases": client.aliases, "created": client.created,
            "keys": _key_summary(client), "status": facts,
            "volumes": _volume_rows(ctx.store, serial)}


def snapshot_rows(ctx: Context, serial: str, volume: str) -> list[dict[str, Any]]:
    store = ctx.store
    client_or_404(ctx, serial)
    _volume_or_404(store, serial, volume)
    latest = resolve.latest(store, serial, volume)
    return [_snapshot_row(store, serial, volume, s, latest)
            for s in resolve.snapshot_ids(store, serial, volume)]


def snapshot_id(store: Store, serial: str, volume: str, sid: str) -> str:
    """``sid``, or for ``latest`` the snapshot it names (as SSH and the web UI take it)."""
    if sid != "latest":
        return sid
    _volume_or_404(store, serial, volume)
    found = resolve.latest(store, serial, volume)
    if found is None:
        raise HttpError(404, f"{volume} of {serial} has no snapshot yet")
    return found


def snapshot_one(ctx: Context, serial: str, volume: str, sid: str) -> dict[str, Any]:
    store = ctx.store
    client_or_404(ctx, serial)
    check_volume(volume)
    sid = check_snapshot_id(snapshot_id(store, serial, volume, sid))
    _volume_or_404(store, serial, volume)
    if not resolve.exists(store, serial, volume, sid):
        raise HttpError(404, f"no snapshot {sid} of {serial} {volume}")
    return _snapshot_row(store, serial, volume, sid, resolve.latest(store, serial, volume))


def _arg(name: str) -> str:
    return request.args.get(name, "")


def _count(name: str, default: int, lowest: int) -> int:
    """A whole-number query parameter of at least ``lowest`` (400 otherwise)."""
    text = _arg(name)
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or int(text) < lowest:
        raise HttpError(400, f"{name} must be a whole number of at least {lowest}")
    return int(text)


# ---- the JSON routes ---------------------------------------------------------------------


@bp.before_request
def _authenticate() -> None:
    if request.endpoint not in ("api.session_route", "api.restore_kit", "api.health_route"):
        require_user()


@bp.route("/api/v1/health", methods=ALL_METHODS)
def health_route() -> Response:
    """For load balancers, without credentials: ``{"status": "ok" | "degraded"}`` and
    nothing else. With credentials, Basic or a session cookie (checked as everywhere:
    wrong ones are a 401), the details."""
    only("GET")
    ctx = current_ctx()
    if request.environ.get("HTTP_AUTHORIZATION") or read_cookie(SESSION_COOKIE):
        require_user()
        return json_response(health(ctx))
    return json_response({"status": health_status(ctx)})


@bp.route("/api/v1/clients", methods=ALL_METHODS)
def clients_route() -> Response:
    only("GET")
    return json_response(clients_list(current_ctx()))


@bp.route("/api/v1/clients/<sn>", methods=ALL_METHODS)
def client_route(sn: str) -> Response:
    only("GET")
    return json_response(client_detail(current_ctx(), sn))


@bp.route("/api/v1/clients/<sn>/volumes", methods=ALL_METHODS)
def volumes_route(sn: str) -> Response:
    only("GET")
    ctx = current_ctx()
    return json_response(_volume_rows(ctx.store, client_or_404(ctx, sn)))


@bp.route("/api/v1/clients/<sn>/volumes/<vol>/snapshots", methods=ALL_METHODS)
def snapshots_route(sn: str, vol: str) -> Response:
    only("GET")
    return json_response(snapshot_rows(current_ctx(), sn, vol))


@bp.route("/api/v1/clients/<sn>/volumes/<vol>/snapshots/<sid>", methods=ALL_METHODS)
def snapshot_route(sn: str, vol: str, sid: str) -> Response:
    only("GET")
    return json_response(snapshot_one(current_ctx(), sn, vol, sid))


@bp.route("/api/v1/clients/<sn>/restore", methods=ALL_METHODS)
def restore_route(sn: str) -> Response:
    ctx = current_ctx()
    client_or_404(ctx, sn)
    only("GET")
    plan = restore.plan(ctx.store, sn, _arg("volume") or None, _arg("at") or None,
                        request_host(ctx.settings), ctx.settings.server.ssh_port,
                        _arg("from") or None)
    return json_response(plan.as_dict())


@bp.route("/api/v1/clients/<sn>/volumes/<vol>/snapshots/<sid>/<path:sub>",
          methods=ALL_METHODS)
def snapshot_part_route(sn: str, vol: str, sid: str, sub: str) -> Response:
    """A snapshot's files, archives and Journal, streamed (``restore.downloads``)."""
    only("GET")
    ctx = current_ctx()
    client_or_404(ctx, sn)
    source = downloads.source_of(ctx.store, sn, _arg("from"))
    sid = snapshot_id(ctx.store, source, vol, sid)
    path = path_arg()
    parts = sub.split("/")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    store = ctx.store
    make: Callable[[], downloads.Download]
    match parts:
        case ["archive.tar" | "archive.zip" as name]:
            def make() -> downloads.Download:
                return downloads.download_archive(store, source, vol, sid, path, name[-3:])
        case ["file"]:
            def make() -> downloads.Download:
                return downloads.download_file(store, source, vol, sid, path)
        case ["manifest"]:
            def make() -> downloads.Download:
                return downloads.download_manifest(store, ctx.storage, source, vol, sid)
        case ["journal"]:
            listing = downloads.journal_listing(
                store, source, vol, sid, _count("offset", 0, 0),
                min(_count("limit", 100, 1), 1000), _arg("q") or None)
            return json_response(listing)
        case ["journal", bundle] if bundle.endswith(".xoj") and \
                sugar_journal.UID_RE.fullmatch(bundle[:-4]):
            def make() -> downloads.Download:
                return downloads.download_bundle(store, source, vol, sid, path, bundle[:-4])
        case _:
            raise HttpError(404, "no such resource")
    return limits.send(g.xs_user.name, ctx.settings.http, make)


@bp.route("/api/v1/<path:rest>", methods=ALL_METHODS)
def unknown_route(rest: str) -> Response:
    raise HttpError(404, "not found")


# ---- sessions ----------------------------------------------------------------------------


@bp.route("/api/v1/session", methods=ALL_METHODS)
def session_route() -> Response:
    auth = authenticator()
    ctx = current_ctx()
    if request.method == "POST":
        return _login(ctx)
    if request.method == "DELETE":
        auth.end_session(ctx.store)
        return json_response({"status": "logged out"})
    if request.method == "GET":
        user = require_user()
        return json_response({"user": user.name, "role": user.role})
    raise HttpError(405, "method not allowed", [("Allow", "GET, POST, DELETE")])


def _login(ctx: Context) -> Response:
    """Only JSON signs in: a cross-site form (``text/plain``, urlencoded, multipart) is
    refused before its body is read, and so is anything a browser says came from
    another site; a JSON POST from another site needs a CORS preflight, never granted."""
    if from_another_site():
        raise HttpError(403, "refused: the sign-in was sent from another site")
    if request.mimetype != JSON:
        raise HttpError(415, "the body must be JSON (Content-Type: application/json)")
    auth = authenticator()
    try:
        data = orjson.loads(body())
    except orjson.JSONDecodeError:
        raise HttpError(400, LOGIN_SHAPE) from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str) \
            or not isinstance(data.get("password"), str):
        raise HttpError(400, LOGIN_SHAPE)
    user = auth.check_password(ctx.settings, ctx.store, data["user"], data["password"],
                               "http login")
    if user is None:
        raise HttpError(401, "invalid user or password", [("WWW-Authenticate", REALM)])
    expires = auth.start_session(user)
    return json_response({"user": user.name, "role": user.role,
                          "expires": dt.datetime.fromtimestamp(expires, dt.UTC)
                          .isoformat(timespec="seconds")})


# ---- metrics and the restore kit ---------------------------------------------------------


@bp.route("/metrics", methods=ALL_METHODS)
def metrics_route() -> Response:
    only("GET")
    store = current_ctx().store
    counts().flush(store)
    return Plain(metrics.render(store), 200, content_type=metrics.CONTENT_TYPE)


@bp.route("/restore/kit", methods=ALL_METHODS)
def restore_kit() -> Response:
    only("GET", "HEAD")
    return Plain(downloads.kit(), 200,
                 [("Content-Disposition", 'attachment; filename="xsrestore.py"')],
                 content_type="text/x-python; charset=utf-8")
