"""ds-backup's availability check, ``GET /backup/1/available/<SN>``, without authentication
(the deployed devices send none; ``ds-backup-protocol.md``).

The answer is an empty body and 200 (cleared: an admission is reserved), 503 with
``Retry-After`` (window, load, disk, maintenance), or 403 for a malformed, unknown or
disabled serial; any other method is a 405. The decision is ``admission.availability``;
this handler only looks up the one serial (no registry walk) and counts the outcome in
``admissions{path="http",...}``. A ``GET`` is answered before Flask sees it
(``fast_path``, through ``WebApp.wsgi_app``): this endpoint is the one the deployed
devices hammer, and Flask's per-request machinery cost more than the answer itself.
Counts are batched in memory and added to the durable
counters at most once a second, before every /metrics scrape and when the server closes:
one read-modify-write of counters.json per request would cap the whole server at about a
thousand answers a second, under one flock; a crash loses at most that second of counts,
as ``counters.py`` allows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from http import HTTPStatus
from wsgiref.types import StartResponse, WSGIEnvironment

from flask import Blueprint, Response, current_app, request

from xsbackup import counters
from xsbackup.context import Context
from xsbackup.errors import ClientDisabled, UnknownClient
from xsbackup.ingest import admission
from xsbackup.ingest.window import Memory
from xsbackup.logs import LOG
from xsbackup.store import CLIENT_RE, Store
from xsbackup.web.base import (
    ALL_METHODS,
    NO_STORE,
    ContextGetter,
    Headers,
    address_of,
    client_address,
    current_ctx,
    empty,
)

FLUSH_SECONDS = 1.0
COUNTS_KEY = "xsbackup.counts"
PREFIX = "/backup/1/available/"
STATUS = {code: f"{code} {HTTPStatus(code).phrase}" for code in (200, 403, 503)}
EMPTY_HEADERS = [NO_STORE, ("Content-Length", "0")]  # what ``empty`` sends

bp = Blueprint("availability", __name__)


class Counts:
    """Availability answers not yet added to ``counters.json``, and the HTTP server's
    memory of grants and client records (``memory``)."""

    def __init__(self, get_ctx: ContextGetter) -> None:
        self.get_ctx = get_ctx
        self.memory = Memory()
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}
        self._flushed_at = time.monotonic()

    def add(self, store: Store, result: str, reason: str) -> None:
        key = counters.key("admissions", {"path": "http", "result": result, "reason": reason})
        now = time.monotonic()
        with self._lock:
            self._pending[key] = self._pending.get(key, 0.0) + 1
            due = now - self._flushed_at >= FLUSH_SECONDS
        if due:
            self.flush(store)

    def flush(self, store: Store | None = None) -> None:
        """Add the batched counts to ``counters.json`` now."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = time.monotonic()
        if not pending:
            return
        store = store or self.get_ctx().store
        if store.locks_dir.is_dir():
            counters.add(store, pending)


def counts() -> Counts:
    found: Counts = current_app.extensions[COUNTS_KEY]
    return found


def decide(ctx: Context, tally: Counts, raw: str, address: str) -> tuple[int, Headers]:
    """The answer to ``raw`` (the path after the prefix) asked from ``address`` (the
    device's, ``base.address_of``): status and headers; counted. The client check and
    the grants come from ``tally.memory`` while their files are unchanged
    (``ingest.window``)."""
    store = ctx.store
    serial = raw.strip()
    if not CLIENT_RE.fullmatch(serial):
        tally.add(store, "refused", "malformed")
        return 403, []
    try:
        tally.memory.records.check(ctx.registry, serial)
    except UnknownClient:
        tally.add(store, "refused", "unknown")
        return 403, []
    except ClientDisabled:
        tally.add(store, "refused", "disabled")
        return 403, []
    verdict = admission.availability(ctx, serial, time.time(), address,
                                     memory=tally.memory)
    if verdict.granted:
        tally.add(store, "granted", "")
        return 200, []
    tally.add(store, "refused", verdict.reason)
    LOG.debug("client=%s availability refused: %s (retry after %ds)", serial,
              verdict.reason, verdict.retry_after)
    return 503, [("Retry-After", str(verdict.retry_after))]


@bp.route(PREFIX, methods=ALL_METHODS, defaults={"raw": ""})
@bp.route(f"{PREFIX}<path:raw>", methods=ALL_METHODS)
def available(raw: str) -> Response:
    if request.method != "GET":
        return empty(405, [("Allow", "GET")])
    status, headers = decide(current_ctx(), counts(), raw, client_address())
    return empty(status, headers)


def fast_path(get_ctx: ContextGetter, tally: Counts, environ: WSGIEnvironment,
              start_response: StartResponse) -> Iterable[bytes] | None:
    """The same answer to a ``GET`` without Flask's request machinery, which tripled the
    cost of this endpoint (bench/serve.py); None leaves the request to Flask (another
    method, or a failure, which the route above meets again and the one error handler
    answers)."""
    if environ.get("REQUEST_METHOD") != "GET":
        return None
    # WSGI hands the path over as latin-1; Werkzeug's routing decodes it as UTF-8.
    raw = str(environ.get("PATH_INFO", ""))[len(PREFIX):]
    raw = raw.encode("latin-1", "replace").decode("utf-8", "replace")
    try:
        ctx = get_ctx()
        status, headers = decide(ctx, tally, raw, address_of(environ, ctx.settings))
    except Exception:
        return None
    start_response(STATUS[status], [*EMPTY_HEADERS, *headers])
    return [b""]
