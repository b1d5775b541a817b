"""The OLPC registration call at ``POST /`` (and ``/RPC2``): XML-RPC
``register(serial, nickname, uuid, pubkey)`` (``registration.register``), without
authentication, as Sugar makes it. Bodies over 64 KiB are refused with 413; a wrong
arity is an XML-RPC fault. A browser's ``GET /`` (``Accept: text/html``) is sent to the
web UI; any other method on these paths is a 405.
"""

from __future__ import annotations

from typing import Any, cast
from xmlrpc.server import SimpleXMLRPCDispatcher

from flask import Blueprint, Response, request

from xsbackup.clients import registration
from xsbackup.errors import XsbackupError
from xsbackup.logs import LOG
from xsbackup.web.base import (
    ALL_METHODS,
    HttpError,
    Plain,
    body,
    client_address,
    current_ctx,
    redirect,
    request_host,
)

bp = Blueprint("rpc", __name__)


@bp.route("/", methods=ALL_METHODS)
@bp.route("/RPC2", methods=ALL_METHODS)
def register_call() -> Response:
    if request.path == "/" and request.method in ("GET", "HEAD") and \
            "text/html" in str(request.environ.get("HTTP_ACCEPT") or ""):
        return redirect("/ui/")  # a browser: the web UI
    if request.method != "POST":
        raise HttpError(405, "registration is XML-RPC over POST", [("Allow", "POST")])
    data = body()
    ctx = current_ctx()
    settings = ctx.settings
    host = request_host(settings)
    remote = client_address()

    def register(serial: Any, nickname: Any, uuid: Any, pubkey: Any) -> dict[str, str]:
        try:
            if settings.fleet.place_as:  # a fleet member: the device may belong elsewhere
                from xsbackup.fleet.forward import placed_reply

                placed = placed_reply(settings, serial, nickname, uuid, pubkey, remote)
                if placed is not None:
                    return placed
            return registration.register(settings, ctx.registry, serial, nickname, uuid, pubkey,
                                         host, remote)
        except (XsbackupError, OSError):
            LOG.exception("registration of %r failed", str(serial)[:80])
            return {"success": registration.ERROR,
                    "error": "server error; the administrator can find it in the log"}

    dispatcher = SimpleXMLRPCDispatcher(allow_none=True, encoding="utf-8")
    dispatcher.register_function(register, "register")
    # _marshaled_dispatch is the dispatcher's documented-by-use entry point (the stdlib's
    # own CGI and HTTP handlers call it); it turns any error into a Fault.
    # (typeshed says str; it returns the encoded bytes.)
    reply = cast(bytes, dispatcher._marshaled_dispatch(data))
    return Plain(reply, 200, content_type="text/xml; charset=utf-8")
