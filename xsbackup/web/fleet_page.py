"""``GET /ui/fleet`` (admins only): every fleet server's disk, overdue clients and
off-site lag, from ``fleet collect`` run when the page is asked for (each server has
``[fleet] timeout`` to answer; one that does not is a row saying why)."""

from __future__ import annotations

from flask import Response

from xsbackup.errors import InventoryError
from xsbackup.fleet import inventory, ops
from xsbackup.web.base import ALL_METHODS, current_ctx
from xsbackup.web.render import render
from xsbackup.web.ui import allow, bp, require_admin


@bp.route("/fleet", methods=ALL_METHODS)
def fleet() -> Response:
    v = allow("GET")
    require_admin(v, "see the fleet")
    settings = current_ctx().settings
    try:
        inv = inventory.load(inventory.locate(None, settings.fleet.inventory, settings.root))
    except InventoryError as e:
        return render("fleet.html", {"problem": e.message, "report": None})
    report = ops.collect(inv, settings.fleet.timeout, None,
                         settings.ui.overdue_days * 86400)
    return render("fleet.html", {"problem": "", "report": report,
                                 "overdue_days": settings.ui.overdue_days})
