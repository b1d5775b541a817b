"""The HTTP side of ``xsbackup serve``: one Flask application (DESIGN.md section 5).

``create_app(get_ctx)`` builds it from blueprints:

* ``availability``: ds-backup's ``GET /backup/1/available/<SN>``, no authentication;
* ``rpc``: the OLPC registration, XML-RPC at ``POST /`` and ``/RPC2``, no
  authentication; a browser's ``GET /`` goes to the web UI;
* ``api``: the JSON API ``/api/v1/...``, ``/metrics`` and ``/restore/kit``;
* ``ui``: the web UI under ``/ui/``.

``get_ctx`` is called once per request (``base.current_ctx``), never cached across
requests: ``serve`` swaps in a new ``Context`` on SIGHUP and the next request sees it.
Sessions are signed cookies (``sessions.py``), so a restart signs nobody out.

Errors: every route raises; ONE handler answers. An ``XsbackupError`` becomes its class's
``http_status`` (``HttpError`` carries its own, and its headers); Werkzeug's own (no such
path, a method no route takes) keep theirs; anything else, and any status of 500 or more,
is logged with its traceback and answered without details. The answer is the web UI's
error page under ``/ui``, else JSON ``{"error": "..."}``.

The server is waitress (``make_server``). It is pure Python with no C build, maintained
by the Pylons project, production-grade (HTTP/1.1 keep-alive, a bounded worker pool,
request-size limits, untrusted proxy headers cleared), and it runs in-process on a
thread, so ``xsbackup serve`` stays one process that SIGHUP can reload. Its limits come
from ``[http]`` when the server is made (``HttpServer``; the download slots of
``limits.py`` are read per request). Use::

    server = make_server(create_app(get_ctx), host, port, threads)
    threading.Thread(target=server.run_forever, daemon=True).start()   # or server.run
    ...                                                 # server.effective_port is bound
    server.close()    # from any thread: stops the loop, then the worker threads
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from flask import Flask, Response, request
from waitress import wasyncore  # type: ignore[import-untyped]  # no stubs; pure Python
from waitress.adjustments import Adjustments  # type: ignore[import-untyped]
from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.server import TcpWSGIServer  # type: ignore[import-untyped]
from waitress.task import ThreadedTaskDispatcher  # type: ignore[import-untyped]
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

from xsbackup.errors import XsbackupError
from xsbackup.logs import LOG
from xsbackup.web import (
    api,
    availability,
    fleet_page,  # noqa: F401  (its route joins ui.bp: /ui/fleet)
    rpc,
    ui,
)
from xsbackup.web.auth import AUTH_KEY, Authenticator
from xsbackup.web.availability import COUNTS_KEY, Counts
from xsbackup.web.base import CTX_KEY, ContextGetter, HttpError, Plain, json_response
from xsbackup.web.limits import GATE_KEY, DownloadGate
from xsbackup.web.render import error_page, setup_templates
from xsbackup.web.sessions import KEYS_KEY, CookieSessions, SessionKeys

INTERNAL = {"json": "internal server error; see the server log",
            "ui": "The server failed; the details are in its log."}


class AnyMethodRule(Rule):
    """A route that matches whatever the method: each view answers a method it does not
    take with its own 405 (and its own ``Allow``), as before the move to Flask."""

    def __init__(self, *args: Any, **options: Any) -> None:
        options["methods"] = None
        super().__init__(*args, **options)


class WebApp(Flask):
    """The Flask application, with the counts it batches (flushed on ``close``)."""

    response_class = Plain
    url_rule_class = AnyMethodRule

    def __init__(self, get_ctx: ContextGetter) -> None:
        super().__init__("xsbackup.web", static_folder=None, template_folder="templates")
        self.get_ctx = get_ctx
        self.counts = Counts(get_ctx)
        self.downloads = DownloadGate()
        self.extensions[CTX_KEY] = get_ctx
        self.extensions[AUTH_KEY] = Authenticator()
        self.extensions[COUNTS_KEY] = self.counts
        self.extensions[GATE_KEY] = self.downloads

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if str(environ.get("PATH_INFO", "")).startswith(availability.PREFIX):
            answer = availability.fast_path(self.get_ctx, self.counts, environ,
                                            start_response)
            if answer is not None:
                return answer
        return super().wsgi_app(environ, start_response)

    def flush_counters(self) -> None:
        """Add the batched availability counts to ``counters.json`` now."""
        self.counts.flush()


def handle_error(e: Exception) -> Response:
    """The one error handler: status, message and headers from the error, shown as the
    web UI's page under /ui, else as JSON."""
    in_ui = request.path == "/ui" or request.path.startswith("/ui/")
    headers: list[tuple[str, str]] = []
    if isinstance(e, XsbackupError):
        status, message = e.http_status, e.message
        if isinstance(e, HttpError):
            headers = e.headers
    elif isinstance(e, HTTPException) and e.code is not None and e.code < 500:
        status = e.code
        message = "There is no such page." if in_ui and status == 404 else \
            "not found" if status == 404 else str(e.description or e.name)
    else:
        status, message = 500, ""
    if status >= 500:
        LOG.exception("http %s %s failed", request.method, request.path[:200])
        message = INTERNAL["ui" if in_ui else "json"]
    if in_ui:
        return error_page(status, message, headers)
    return json_response({"error": message}, status, headers)


def create_app(get_ctx: ContextGetter) -> WebApp:
    """The WSGI application; ``get_ctx()`` is asked on every request, so a configuration
    reload (SIGHUP) takes effect at once."""
    app = WebApp(get_ctx)
    app.url_map.merge_slashes = False  # "//" is an empty segment, not a redirect
    app.url_map.strict_slashes = False  # one trailing slash is tolerated, never redirected
    app.extensions[KEYS_KEY] = keys = SessionKeys()
    app.session_interface = CookieSessions(keys)
    setup_templates(app)
    app.register_error_handler(Exception, handle_error)
    for blueprint in (availability.bp, rpc.bp, api.bp, ui.bp):
        app.register_blueprint(blueprint)
    return app


# ---- the server ------------------------------------------------------------------------

BACKLOG = 2048  # connections the kernel queues while every connection slot is taken


class Channel(HTTPChannel):  # type: ignore[misc]  # waitress has no type stubs
    """waitress's connection, remembering when the request now arriving began."""

    request_began: float | None = None

    def received(self, data: bytes) -> bool:
        before = self.request
        result = bool(super().received(data))
        if self.request is None:
            self.request_began = None
        elif self.request is not before:
            self.request_began = time.time()
        return result


class Listener(TcpWSGIServer):  # type: ignore[misc]
    """waitress's listener, whose periodic sweep (every ``cleanup_interval``) also closes
    a connection whose request has been arriving for longer than ``channel_timeout`` (a
    request trickled in a byte at a time is never idle), and one whose response nobody
    has read for that long (its worker thread is blocked until then)."""

    channel_class = Channel

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # connections idle between requests
        cutoff = now - self.adj.channel_timeout
        for channel in list(self.active_channels.values()):
            if channel.requests:
                # Its socket never turns writable, so the loop would never close it: close
                # it here (this is the loop's thread), which wakes its blocked worker.
                unread = channel.total_outbufs_len >= self.adj.send_bytes and \
                    channel.last_activity < cutoff
                if unread:
                    self._log_drop(channel, "left its response unread")
                    channel.handle_close()
            elif channel.request_began is not None and channel.request_began < cutoff:
                self._log_drop(channel, "was too slow sending its request")
                channel.will_close = True

    def _log_drop(self, channel: Channel, why: str) -> None:
        LOG.info("http: closed a connection from %s that %s for %ss",
                 channel.addr[0] if channel.addr else "?", why, self.adj.channel_timeout)


class HttpServer:
    """A waitress server bound at construction; ``run_forever`` serves until ``close``.

    Limits, from ``[http]``: ``threads`` workers, of which downloads may take at most
    ``max_downloads`` and never the last two (``limits.py``); ``connection_limit`` open
    connections (the listener then stops accepting and the kernel queues up to
    ``BACKLOG`` more); ``channel_timeout`` for a connection that is idle, sends its
    request too slowly, or leaves its response unread. The socket map is polled
    (``poll``, not ``select``, which cannot watch more than 1024 descriptors)."""

    def __init__(self, app: WebApp, host: str, port: int, threads: int) -> None:
        limits = app.get_ctx().settings.http
        adj = Adjustments(
            host=host, port=port, threads=threads, ident="xsbackup",
            max_request_body_size=1 << 20, expose_tracebacks=False,
            connection_limit=limits.connection_limit, channel_timeout=limits.channel_timeout,
            cleanup_interval=max(1, min(5, limits.channel_timeout // 2)), backlog=BACKLOG,
            asyncore_use_poll=True,
            # Forwarding headers reach the application, which believes them only from the
            # networks in ``http.trusted_proxies`` (web/base.py); waitress's own option
            # trusts a single address.
            clear_untrusted_proxy_headers=False)
        _raise_open_files(limits.connection_limit + threads + 64)
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(threads)
        self.app = app
        app.downloads.threads = threads
        self._server: Any = Listener(app, dispatcher=dispatcher, adj=adj)
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
        # ``handle_close`` (not the bare ``close`` of ``close_all``) also wakes a worker
        # blocked on a response nobody reads, which would otherwise wait forever.
        for channel in list(self._server.active_channels.values()):
            with contextlib.suppress(OSError):
                channel.handle_close()
        # A connection the peer already dropped can fail to close; it is gone either way.
        with contextlib.suppress(OSError):
            wasyncore.close_all(self._server._map)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, stop the workers. Thread-safe.

        The socket map belongs to the loop's thread: while it runs, only it closes the
        sockets (two threads closing one descriptor could close another's that reused
        its number). A loop whose wake-up pipe is gone is already ending."""
        if self._started.is_set() and not self._stopped.is_set():
            # The socket map belongs to the loop's thread: let the loop close it. A loop
            # that is ending has closed its trigger already (EBADF): nothing to ask then.
            try:
                self._server.trigger.pull_trigger(self._close_sockets)
            except OSError:
                LOG.debug("http: the server loop was already ending at close")
            self._stopped.wait(timeout)
        if self._started.is_set() and not self._stopped.is_set():
            LOG.error("http: the server loop did not stop within %gs", timeout)
        else:
            self._close_sockets()  # no loop: what it left open (nothing, normally)
        self._server.task_dispatcher.shutdown(timeout=timeout)
        self.app.flush_counters()


def _raise_open_files(needed: int) -> None:
    """Every connection is a descriptor: lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def make_server(app: WebApp, host: str, port: int, threads: int) -> HttpServer:
    return HttpServer(app, host, port, threads)
