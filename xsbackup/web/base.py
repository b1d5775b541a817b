"""What every blueprint of the web layer shares: the request's ``Context``, the one web
error class, responses with today's exact headers, bodies, cookies and the host name.

The application (``app.create_app``) is handed a ``Callable[[], Context]``; ``current_ctx``
calls it once per request (``serve`` swaps in a new Context on SIGHUP, so a reload applies
to the next request) and keeps the answer on ``flask.g`` for the rest of that request.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import WSGIEnvironment

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
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
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
    if request_scheme() == "https":
        parts.append("Secure")
    return "; ".join(parts)


def read_cookie(name: str) -> str:
    return request.cookies.get(name, "")


def from_another_site() -> bool:
    """The browser says another site sent this request (``Sec-Fetch-Site``)."""
    return str(request.environ.get("HTTP_SEC_FETCH_SITE") or "") == "cross-site"


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)


def forwarded_for(peer: str, header: str, networks: tuple[IPNetwork, ...]) -> str:
    """The address a request came from: ``peer``, unless ``peer`` is a trusted proxy; then
    the nearest address in ``X-Forwarded-For`` (read from the right, each proxy appending
    the one it saw) that is not itself a trusted proxy. A client can prepend anything to
    the header, so nothing left of the first untrusted hop is believed."""
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where an address should be: the proxy is all we know
    return hops[0] if hops else peer


def _from_trusted_proxy() -> bool:
    networks = _networks(tuple(current_ctx().settings.http.trusted_proxies))
    return bool(networks) and _trusted(str(request.environ.get("REMOTE_ADDR") or ""),
                                       networks)


def address_of(environ: WSGIEnvironment, settings: Settings) -> str:
    """The device's or browser's address in ``environ``, as the per-address limits count
    it: the peer, or the one a trusted proxy names (``forwarded_for``)."""
    peer = str(environ.get("REMOTE_ADDR") or "")
    entries = settings.http.trusted_proxies
    if not entries:
        return peer
    return forwarded_for(peer, str(environ.get("HTTP_X_FORWARDED_FOR") or ""),
                         _networks(tuple(entries)))


def client_address() -> str:
    """This request's ``address_of``."""
    return address_of(request.environ, current_ctx().settings)


def request_scheme() -> str:
    """``https`` or ``http``: the proxy's ``X-Forwarded-Proto`` when it is trusted."""
    if _from_trusted_proxy():
        proto = str(request.environ.get("HTTP_X_FORWARDED_PROTO") or "")
        proto = proto.split(",", maxsplit=1)[0].strip().lower()
        if proto in ("http", "https"):
            return proto
    return str(request.environ.get("wsgi.url_scheme") or "http")
