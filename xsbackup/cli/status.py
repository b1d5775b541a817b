"""``xsbackup status``'s document, shared by the click command and ``cli.entry``'s
click-free ``status --json`` (what ``fleet status`` and ``fleet collect`` run on every
server, so its start-up is paid per server)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from xsbackup import config, logs
from xsbackup.context import Context
from xsbackup.monitor.status import server_status


def document(root: str | None, config_file: str | None) -> dict[str, Any]:
    """Load the settings, require an initialised state root, set up logging (as
    ``with_context`` does), and return the server's status."""
    settings = config.load(root, config_file, {})
    ctx = Context.open(settings)
    logs.setup(settings)
    return status_of(ctx)


def status_of(ctx: Context) -> dict[str, Any]:
    return server_status(ctx, dt.datetime.now(dt.UTC))
