"""The web UI's pages: what one visit knows (``Visit``), templates, and the error page.

Templates are Jinja2 (Flask's environment) with autoescaping on for every template and
``StrictUndefined``; nothing from a client is ever marked safe. Pages are sent with a
strict Content-Security-Policy (no inline script or style), ``X-Frame-Options: DENY``
and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import datetime as dt
import http
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jinja2
from flask import Flask, Response, g, get_flashed_messages, render_template

from xsbackup import __version__
from xsbackup.web.base import Headers, Plain
from xsbackup.web.pages import human_age, human_bytes, iso, local_time
from xsbackup.web.users import User

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
PAGE_HEADERS = [("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"),
                ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
                ("Cross-Origin-Opener-Policy", "same-origin"), ("Cache-Control", "no-store")]
HTML = "text/html; charset=utf-8"


@dataclass
class Visit:
    """One request to the web UI: its query and form, and who is signed in."""

    method: str  # HEAD is answered as GET
    query: dict[str, list[str]] = field(default_factory=dict)
    form: dict[str, list[str]] = field(default_factory=dict)
    user: User | None = None
    sid: str = ""
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


def visit() -> Visit:
    """This request's visit (a bare one if the UI's own hooks never ran)."""
    found: Visit | None = g.get("xs_visit")
    if found is None:
        found = g.xs_visit = Visit("GET")
    return found


def setup_templates(app: Flask) -> None:
    app.jinja_options = {**app.jinja_options, "autoescape": True,
                         "undefined": jinja2.StrictUndefined, "trim_blocks": True,
                         "lstrip_blocks": True}
    app.jinja_env.filters.update(bytes=human_bytes, age=human_age, when=local_time, iso=iso,
                                 urlpart=lambda s: quote(str(s), safe=""))
    app.jinja_env.globals.update(version=__version__)


def render(template: str, context: dict[str, Any] | None = None, status: int = 200,
           headers: Headers | None = None) -> Response:
    v = visit()
    flashes = get_flashed_messages(with_categories=True) if v.sid and status < 300 else []
    text = render_template(
        template, user=v.user, is_admin=v.is_admin, csrf=v.csrf, flashes=flashes,
        tz=dt.datetime.now().astimezone().tzname() or "local", **(context or {}))
    return Plain(text.encode("utf-8", "replace"), status, [*PAGE_HEADERS, *(headers or [])],
                 content_type=HTML)


def error_page(status: int, message: str, headers: Headers | None = None) -> Response:
    title = http.HTTPStatus(status).phrase
    return render("error.html", {"status": status, "title": title, "message": message},
                  status, headers)
