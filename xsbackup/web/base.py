"""What every blueprint of the web layer shares: the request's ``Context``, the one web
error class, responses with today's exact headers, bodies, cookies and the host name.

The application (``app.create_app``) is handed a ``Callable[[], Context]``; ``current_ctx``
calls it once per request (``serve`` swaps in a new Context on SIGHUP, so a reload applies
to the next request) and keeps the answer on ``flask.g`` for the rest of that request.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from flask import Response, current_app, g, request

from xsbackup.config import Settings
from xsbackup.context import Context
from xsbackup.errors import XsbackupError

MAX_BODY = 64 * 1024
JSON = "application/json"
# Every route takes every method (``app.AnyMethodRule``) and answers a wrong one itself,
# with its own 405; listing OPTIONS keeps Flask from answering OPTIONS on its own.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
NO_STORE = ("Cache-Control", "no-store")
NOSNIFF = ("X-Content-Type-Options", "nosniff")
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]")
Headers = list[tuple[str, str]]
ContextGetter = Callable[[], Context]
CTX_KEY = "xsbackup.context"


class HttpError(XsbackupError):
    """The web request was refused."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.http_status = status
        self.headers = headers or []


class Plain(Response):
    """A response without a Content-Type unless one is given (an empty availability
    answer carries none, as ds-backup has always seen it)."""

    default_mimetype = None


def current_ctx() -> Context:
    """The Context of this request (asked of the service once per request)."""
    ctx: Context | None = g.get("xs_ctx")
    if ctx is None:
        getter: ContextGetter = current_app.extensions[CTX_KEY]
        ctx = g.xs_ctx = getter()
    return ctx


def json_response(value: Any, status: int = 200, headers: Headers | None = None) -> Response:
    return Plain(orjson.dumps(value), status, [*(headers or []), NO_STORE, NOSNIFF],
                 content_type=JSON)


def empty(status: int, headers: Headers | None = None) -> Response:
    return Plain(b"", status, [NO_STORE, *(headers or [])])


def redirect(location: str, headers: Headers | None = None) -> Response:
    return Plain(b"", 303, [("Location", location), NO_STORE, *(headers or [])])


def body(limit: int = MAX_BODY) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes."""
    environ = request.environ
    text = str(environ.get("CONTENT_LENGTH") or "").strip()
    try:
        length = int(text) if text else -1
    except ValueError:
        raise HttpError(400, "invalid Content-Length") from None
    if length > limit:
        raise HttpError(413, f"request body over {limit} bytes")
    data = bytes(environ["wsgi.input"].read(length if length >= 0 else limit + 1))
    if len(data) > limit:
        raise HttpError(413, f"request body over {limit} bytes")
    return data


def parse_query(environ: dict[str, Any]) -> dict[str, list[str]]:
    """The query string, decoding bytes that are not UTF-8 as surrogate escapes."""
    return parse_qs(str(environ.get("QUERY_STRING") or ""), keep_blank_values=True,
                    encoding="utf-8", errors="surrogateescape")


def path_arg() -> str:
    """``?path=``, a name in a snapshot: its bytes, percent-encoded (a UTF-8 name as
    UTF-8, any other byte as ``%XX``), kept exactly (undecodable bytes as surrogate
    escapes); the one encoding of the JSON API and the web UI's links."""
    return parse_query(request.environ).get("path", [""])[0]


def request_host(settings: Settings) -> str:
    """``server.public_host``, else the Host header without its port, else this machine's
    host name (a Host header that is not a plain host name or IP is ignored)."""
    public = settings.server.public_host
    if public:
        return public
    raw = str(request.environ.get("HTTP_HOST") or "").strip()
    host = raw[: raw.index("]") + 1] if raw.startswith("[") and "]" in raw else \
        raw.rsplit(":", 1)[0]
    return host if _HOST_RE.fullmatch(host) else socket.gethostname()


def cookie(name: str, value: str, max_age: int, path: str = "/") -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict, and Secure under https."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Strict"]
    if request.environ.get("wsgi.url_scheme") == "https":
        parts.append("Secure")
    return "; ".join(parts)


def read_cookie(name: str) -> str:
    return request.cookies.get(name, "")


def from_another_site() -> bool:
    """The browser says another site sent this request (``Sec-Fetch-Site``)."""
    return str(request.environ.get("HTTP_SEC_FETCH_SITE") or "") == "cross-site"


def client_address() -> str:
    return str(request.environ.get("REMOTE_ADDR") or "")
