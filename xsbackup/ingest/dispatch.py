"""The forced command's dispatcher: ``xsbackup ssh-command --client SN``.

OpenSSH (through ``authorized_keys``) and the embedded SSH server both end here. In
this mode stderr belongs to the SSH client: the only thing ever written there is one
refusal line; everything else goes to the log. rsync's own exit code passes through.

Every session that does something (all but ``true``) holds one of the client's
``admission.max_sessions_per_client`` session locks for as long as it runs, and ends
when the client stops reading or writing for ``ingest.timeout`` seconds: rsync's own
``--timeout`` for transfers, and the same rule for the streamed verbs, which then exit 30
as rsync does. So a stalled client can neither hold the server's transfer slots nor
block its own next backup for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, BinaryIO, TextIO

from xsbackup import counters
from xsbackup.context import Context
from xsbackup.errors import (
    HookVeto,
    InvalidName,
    OverQuota,
    Refused,
    RequestRefused,
    ServerError,
    TooManySessions,
    UnknownClient,
    XsbackupError,
)
from xsbackup.ingest import admission
from xsbackup.ingest import command as rsyncargs
from xsbackup.ingest import upload as ingest
from xsbackup.locking import FileLock, take_slot
from xsbackup.logs import LOG
from xsbackup.store import CLIENT_RE, set_xattrs

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

RSYNC_TIMEOUT_EXIT = 30  # rsync's "timeout in data send/receive"


def run(ctx: Context, client: str, environ: Mapping[str, str] | None = None,
        stderr: TextIO | None = None, restore_key: str | None = None) -> int:
    """Serve ``SSH_ORIGINAL_COMMAND`` for ``client``. ``restore_key``: the session logged
    in with that one-time restore key (``restore.pullkey``), which allows one download."""
    env = os.environ if environ is None else environ
    err = stderr or sys.stderr
    command = env.get("SSH_ORIGINAL_COMMAND")
    remote = env.get("SSH_CONNECTION", "").split(" ")[0]
    try:
        return _dispatch(ctx, client, command, remote, restore_key)
    except (Refused, InvalidName) as e:
        # A malformed name the client sent (a volume, an --at time) is its error too.
        refusal = e if isinstance(e, Refused) else RequestRefused(e.message)
        LOG.warning("client=%s request refused from %s: %s (command %r)", client,
                    remote or "?", refusal.message, (command or "")[:300])
        if isinstance(e, OverQuota | HookVeto):  # the admin sees why in `xsbackup status`
            with contextlib.suppress(OSError, InvalidName):
                set_xattrs(ctx.store.client_dir(client), {
                    "last_error": e.message,
                    "last_error_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())})
        if ctx.store.locks_dir.is_dir():
            counters.bump(ctx.store, "admissions",
                          {"path": "ssh", "result": "refused", "reason": refusal.reason})
        error: XsbackupError = refusal
    except Exception as e:  # the client must see one line, never a traceback
        LOG.exception("client=%s request failed from %s (command %r)", client, remote or "?",
                      (command or "")[:300])
        error = ServerError(f"server error: {e.message}" if isinstance(e, XsbackupError) else
                            "server error; the administrator can find it in the log")
    if rsyncargs.is_git_archive(command):  # git prints "fatal: git archive: NACK <why>"
        from xsbackup.restore.gitarchive import pkt

        _write_stdout(pkt(f"NACK {error.message}\n".encode()))
    else:
        err.write(f"xsbackup: {error.message}\n")
        err.flush()
    return error.exit_code


def _write_stdout(data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(OSError):
        while view:
            view = view[os.write(sys.stdout.fileno(), view):]


def _dispatch(ctx: Context, client: str, command: str | None, remote: str,
              restore_key: str | None = None) -> int:
    if not CLIENT_RE.fullmatch(client):
        raise UnknownClient(f"unknown client {client[:64]!r}")
    store = ctx.store.require()
    record = admission.check_client(ctx.registry, client)
    req = rsyncargs.parse(command, client)
    if restore_key is not None:
        from xsbackup.restore import pullkey

        pullkey.check(ctx.registry, client, restore_key, req.kind, req.source, req.subpath,
                      req.volume, req.snapshot)
        LOG.info("client=%s volume=%s snapshot=%s restore key %s used from %s", client,
                 req.volume, req.snapshot, restore_key, remote or "?")
    if req.kind == "true":
        return 0
    if req.kind == "upload":
        admission.check_quota(store, record)
    admission.check_server(ctx, reserved=admission.has_reservation(ctx, client, time.time()))
    with _session(ctx, client):
        return _serve(ctx, client, req, remote)


def _session(ctx: Context, client: str) -> FileLock:
    """One of the client's session locks, held by this process until the session ends."""
    limit = ctx.settings.admission.max_sessions_per_client
    lock = take_slot(ctx.store.locks_dir, limit, name=f"session-{client}")
    if lock is None:
        raise TooManySessions.of(client, limit)
    return lock


def _serve(ctx: Context, client: str, req: rsyncargs.Request, remote: str) -> int:
    store = ctx.store
    if req.kind == "upload":
        rc = ingest.run_upload(ctx, client, req, remote=remote)
        result = "success" if rc in ingest.SUCCESS_CODES else "failure"
        counters.add(store, {
            counters.key("admissions", {"path": "ssh", "result": "granted", "reason": ""}): 1,
            counters.key("transfers", {"result": result}): 1})
        return rc
    if req.kind == "completion":
        return ingest.run_completion(ctx, client, req)
    if req.kind == "download":
        source = client
        if req.source:
            from xsbackup.restore.archive import check_readable

            source = check_readable(ctx.registry, client, req.source)
        return ingest.run_download(ctx, source, req)
    if req.kind == "gitarchive":
        return run_git_archive(ctx, client, req)
    return run_verb(ctx, client, req)


def run_git_archive(ctx: Context, login: str, req: rsyncargs.Request) -> int:
    """``git archive --remote``: git's upload-archive protocol on stdin and stdout."""
    from xsbackup.restore import gitarchive

    timeout = ctx.settings.ingest.timeout
    out = ClientStdout(sys.stdout.fileno(), timeout)
    try:
        return gitarchive.serve(ctx.store, login, req.source, req.volume, out,
                                lambda: gitarchive.read_arguments(sys.stdin.fileno(), timeout))
    except Stalled:
        LOG.warning("client=%s git archive stalled: nothing read for %ds (ingest.timeout); "
                    "ended", login, timeout)
        return RSYNC_TIMEOUT_EXIT
    finally:
        out.close()


def run_verb(ctx: Context, login: str, req: rsyncargs.Request) -> int:
    """``archive``, ``list``, ``manifest``, ``diff`` and ``find``: read-only, streamed to
    stdout."""
    timeout = ctx.settings.ingest.timeout
    out = io.BufferedWriter(ClientStdout(sys.stdout.fileno(), timeout), 1 << 16)
    try:
        return _verb(ctx, login, req, out)
    except Stalled:
        LOG.warning("client=%s %s stalled: nothing read for %ds (ingest.timeout); ended",
                    login, req.verb, timeout)
        return RSYNC_TIMEOUT_EXIT
    finally:
        with contextlib.suppress(Stalled, OSError):
            out.close()


def _verb(ctx: Context, login: str, req: rsyncargs.Request, out: BinaryIO) -> int:
    import orjson

    from xsbackup.restore import archive as restore
    from xsbackup.restore import resolve

    store = ctx.store
    source = restore.check_readable(ctx.registry, login, req.source or login)
    if req.verb == "list":
        vols = [resolve.pick_volume(store, source, req.opt("--volume"))] \
            if req.opt("--volume") else store.volumes(source)
        rows = [{"volume": v, "id": sid} for v in vols
                for sid in resolve.snapshot_ids(store, source, v)]
        out.write(orjson.dumps(rows) + b"\n")
        out.flush()
        return 0
    if req.verb in ("diff", "find"):
        return _integrity_verb(ctx, login, source, req, out)
    volume = resolve.pick_volume(store, source, req.opt("--volume"))
    sid = resolve.resolve(store, source, volume, req.opt("--at"))
    LOG.info("client=%s volume=%s snapshot=%s %s for %s started", source, volume, sid,
             req.verb, login)
    if req.verb == "manifest":
        import json

        # stdlib json, not orjson: a name that is not UTF-8 travels as \udcXX escapes,
        # which json.loads and os.fsencode turn back into the exact bytes.
        for entry in restore.manifest(store, source, volume, sid, ctx.storage):
            out.write(json.dumps(entry).encode("ascii") + b"\n")
        out.flush()
        return 0
    n = restore.write_archive(store, source, volume, sid, req.verb_path,
                              req.opt("--format") or "tar", out)
    out.flush()
    LOG.info("client=%s volume=%s snapshot=%s archive of %d items sent to %s", source,
             volume, sid, n, login)
    return 0


def _integrity_verb(ctx: Context, login: str, source: str, req: rsyncargs.Request,
                    out: BinaryIO) -> int:
    """``diff A B`` and ``find PATTERN`` of ``source`` (the login or a client it aliases,
    already checked): one JSON object per line, stdlib json as for ``manifest``."""
    import json

    from xsbackup.integrity import diff, find

    if req.verb == "diff":
        first, second = req.verb_args
        volume, a, b, changes = diff.diff(ctx, source, first, second, req.opt("--volume"))
        LOG.info("client=%s volume=%s diff %s %s for %s: %d changes", source, volume, a, b,
                 login, len(changes))
        rows = [c.as_dict() for c in changes]
    else:
        newest = req.opt("--newest")
        matches = find.find(ctx, source, req.verb_args[0], req.opt("--volume"),
                            int(newest) if newest else None)
        LOG.info("client=%s find %r for %s: %d paths", source, req.verb_args[0], login,
                 len(matches))
        rows = [m.as_dict() for m in matches]
    for row in rows:
        out.write(json.dumps(row).encode("ascii") + b"\n")
    out.flush()
    return 0


class Stalled(Exception):
    """The client read nothing for ``ingest.timeout`` seconds."""


class ClientStdout(io.RawIOBase):
    """The verbs' stdout with rsync's ``--timeout`` rule: when the client reads nothing
    for ``timeout`` seconds (0: wait for ever) the write raises ``Stalled``, and anything
    written after that is dropped, so closing the stream cannot block again. The
    descriptor is non-blocking while this object is open."""

    def __init__(self, fd: int, timeout: int) -> None:
        super().__init__()
        self.fd = fd
        self.wait_ms = timeout * 1000 if timeout else -1
        self.stalled = False
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | os.O_NONBLOCK)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        while not self.stalled:
            try:
                return os.write(self.fd, view)
            except BlockingIOError:
                if not self._poll.poll(self.wait_ms):
                    self.stalled = True
                    raise Stalled from None
        return len(view)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
        super().close()
