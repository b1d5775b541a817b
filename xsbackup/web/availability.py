"""ds-backup's availability check, ``GET /backup/1/available/<SN>``, without authentication
(the deployed devices send none; ``ds-backup-protocol.md``).

The answer is an empty body and 200 (cleared: an admission is reserved), 503 with
``Retry-After`` (window, load, disk, maintenance), or 403 for a malformed, unknown or
disabled serial; any other method is a 405. The decision is ``admission.availability``;
this handler only looks up the one serial (no registry walk) and counts the outcome in
``admissions{path="http",...}``. Counts are batched in memory and added to the durable
counters at most once a second, before every /metrics scrape and when the server closes:
one read-modify-write of counters.json per request would cap the whole server at about a
thousand answers a second, under one flock; a crash loses at most that second of counts,
as ``counters.py`` allows.
"""

from __future__ import annotations

import threading
import time

from flask import Blueprint, Response, current_app, request

from xsbackup import counters
from xsbackup.errors import ClientDisabled, UnknownClient
from xsbackup.ingest import admission
from xsbackup.logs import LOG
from xsbackup.store import CLIENT_RE, Store
from xsbackup.web.base import ALL_METHODS, ContextGetter, current_ctx, empty

FLUSH_SECONDS = 1.0
COUNTS_KEY = "xsbackup.counts"

bp = Blueprint("availability", __name__)


class Counts:
    """Availability answers not yet added to ``counters.json``."""

    def __init__(self, get_ctx: ContextGetter) -> None:
        self.get_ctx = get_ctx
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


@bp.route("/backup/1/available/", methods=ALL_METHODS, defaults={"raw": ""})
@bp.route("/backup/1/available/<path:raw>", methods=ALL_METHODS)
def available(raw: str) -> Response:
    if request.method != "GET":
        return empty(405, [("Allow", "GET")])
    ctx = current_ctx()
    store = ctx.store
    tally = counts()
    serial = raw.strip()
    if not CLIENT_RE.fullmatch(serial):
        tally.add(store, "refused", "malformed")
        return empty(403)
    try:
        admission.check_client(ctx.registry, serial)
    except UnknownClient:
        tally.add(store, "refused", "unknown")
        return empty(403)
    except ClientDisabled:
        tally.add(store, "refused", "disabled")
        return empty(403)
    verdict = admission.availability(ctx.settings, store, serial, time.time())
    if verdict.granted:
        tally.add(store, "granted", "")
        return empty(200)
    tally.add(store, "refused", verdict.reason)
    LOG.debug("client=%s availability refused: %s (retry after %ds)", serial,
              verdict.reason, verdict.retry_after)
    return empty(503, [("Retry-After", str(verdict.retry_after))])
