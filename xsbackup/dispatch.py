"""The forced command's dispatcher: ``xsbackup ssh-command --client SN``.

OpenSSH (through ``authorized_keys``) and the embedded SSH server both end here. In
this mode stderr belongs to the SSH client: the only thing ever written there is one
refusal line; everything else goes to the log. rsync's own exit code passes through.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from . import admission, counters, ingest, rsyncargs
from .config import Settings
from .errors import Refused, ServerError, UnknownClient, XsbackupError
from .logs import LOG
from .registry import Registry
from .store import CLIENT_RE, Store


def run(settings: Settings, client: str, environ: Mapping[str, str] | None = None,
        stderr: TextIO | None = None) -> int:
    env = os.environ if environ is None else environ
    err = stderr or sys.stderr
    command = env.get("SSH_ORIGINAL_COMMAND")
    remote = env.get("SSH_CONNECTION", "").split(" ")[0]
    try:
        return _dispatch(settings, client, command, remote)
    except Refused as e:
        LOG.warning("client=%s request refused from %s: %s (command %r)", client,
                    remote or "?", e.message, (command or "")[:300])
        if settings.root.joinpath("locks").is_dir():
            counters.bump(Store(settings.root), "admissions",
                          {"path": "ssh", "result": "refused", "reason": e.reason})
        error: XsbackupError = e
    except (XsbackupError, OSError) as e:
        LOG.exception("client=%s request failed from %s (command %r)", client, remote or "?",
                      (command or "")[:300])
        error = ServerError(f"server error: {e}" if isinstance(e, XsbackupError) else
                            "server error; the administrator can find it in the log")
    err.write(f"xsbackup: {error.message}\n")
    err.flush()
    return error.exit_code


def _dispatch(settings: Settings, client: str, command: str | None, remote: str) -> int:
    if not CLIENT_RE.fullmatch(client):
        raise UnknownClient(f"unknown client {client[:64]!r}")
    store = Store(settings.root).require()
    admission.check_client(Registry(store), client)
    req = rsyncargs.parse(command, client)
    if req.kind == "true":
        return 0
    admission.check_server(settings, store, reserved=admission.has_reservation(
        settings, store, client, time.time()))
    if req.kind == "upload":
        rc = ingest.run_upload(store, settings, client, req, remote=remote)
        result = "success" if rc in ingest.SUCCESS_CODES else "failure"
        counters.add(store, {
            counters.key("admissions", {"path": "ssh", "result": "granted", "reason": ""}): 1,
            counters.key("transfers", {"result": result}): 1})
        return rc
    if req.kind == "completion":
        return ingest.run_completion(store, settings, client, req)
    if req.kind == "download":
        return ingest.run_download(store, settings, client, req)
    raise rsyncargs.refuse(f"'{req.verb_args[0]}' is not available on this server")
