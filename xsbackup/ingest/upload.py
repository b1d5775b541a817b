"""Ingest and download: run ``rsync --server`` for a validated request (DESIGN.md 3.3-3.5).

The caller (``dispatch``) has parsed the command and admitted the client. Here we:

* take the per-client lock and a slot without waiting; both descriptors are inherited
  by the rsync child, so the lock outlives a killed wrapper for as long as rsync runs;
* have the storage backend prepare ``volumes/<v>/current/`` (``Backend.prepare``: for
  the hardlink backend a fresh tree, ``--link-dest`` to the newest completed transfer,
  an interrupted transfer reused as a second basis, temp and partial directories);
* run rsync with ``--fake-super`` (owners, devices, setuid bits and the like are recorded
  as xattrs, never applied), a receiver rule that drops the client's xattrs in the
  server's own ``user.xsbackup.*`` namespace (snapshot facts are the server's; a rule
  given to the server comes before any the client sends, and survives its ``!``), and
  the backend's options;
* on exit 0 or 24, have the backend turn ``current/`` into ``incoming/<id>``
  (``Backend.complete``) and write the queue entry (``snapshots.queue``);
* on any other exit, keep what the transfer wrote for the next one to resume from,
  unless the disk is now past admission's limits (it filled up, most likely with this
  very transfer): then that goes at once (``Backend.discard_partial``), so it never
  keeps every client refused.

Downloads open the snapshot and every component below it with ``O_NOFOLLOW`` relative to
directory descriptors, hold a shared flock on the snapshot (prune skips it), and give
rsync a ``/proc/self/fd/N`` path. Nothing is written on a download.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

from xsbackup import hooks, procs
from xsbackup.config import Settings
from xsbackup.context import Context
from xsbackup.errors import (
    BackupInProgress,
    DiskFull,
    InodesFull,
    LockBusy,
    NoSlot,
    Refused,
    RequestRefused,
)
from xsbackup.ingest.admission import check_server
from xsbackup.ingest.command import Request
from xsbackup.locking import FileLock, client_lock, take_slot
from xsbackup.logs import LOG
from xsbackup.records import record
from xsbackup.snapshots import queue
from xsbackup.storage.base import IngestTarget
from xsbackup.store import XATTR_PREFIX, Store, set_xattrs, snapshot_id_for

SUCCESS_CODES = (0, 24)
# Given to every receiving rsync: the client's xattrs in our namespace are never stored.
DROP_OWN_XATTRS = f"--filter=-x {XATTR_PREFIX}*"
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@record
class Transfer:
    """What one ingest did, for the queue entry, hooks and logs."""

    client: str
    volume: str
    started: dt.datetime
    finished: dt.datetime | None = None
    returncode: int | None = None
    snapshot_id: str | None = None
    remote: str = ""

    def origin(self) -> dict[str, object]:
        return {
            "client": self.client,
            "volume": self.volume,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": self.finished.isoformat(timespec="seconds") if self.finished else None,
            "seconds": round((self.finished - self.started).total_seconds(), 3)
            if self.finished else None,
            "rsync_exit": self.returncode,
            "remote": self.remote,
        }


class Session:
    """The locks of one writing session: client lock, then a slot."""

    def __init__(self, ctx: Context, client: str) -> None:
        self.lock = client_lock(ctx.store.locks_dir, client)
        try:
            self.lock.acquire()
        except LockBusy:
            raise BackupInProgress(f"backup already in progress for {client}") from None
        self.slot = _slot(ctx)

    def fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.lock.fd, self.slot.fd) if fd is not None)

    def close(self) -> None:
        self.slot.release()
        self.lock.release()


def _slot(ctx: Context) -> FileLock:
    settings = ctx.settings
    slot = take_slot(ctx.store.locks_dir, settings.admission.slots)
    if slot is None:
        raise NoSlot(
            f"server busy: all {settings.admission.slots} transfer slots are taken; "
            "try again later"
        )
    return slot


def unique_snapshot_id(store: Store, client: str, volume: str, now: dt.datetime) -> str:
    base = snapshot_id_for(now)
    taken = set(store.snapshot_ids(client, volume)) | set(store.incoming_ids(client, volume))
    if base not in taken:
        return base
    n = 1
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _open_dir(path: str, dir_fd: int) -> int:
    from xsbackup.restore.access import O_DIR

    return os.open(path, O_DIR, dir_fd=dir_fd)


def _server_opts(settings: Settings, req: Request) -> list[str]:
    """The client's options with the server's I/O timeout: the client's own ``--timeout``
    (rsync keeps the last one) where it is shorter than ``ingest.timeout``, else that;
    ds-backup's 160 s stays 160 s, and no session outlives a stalled client for ever."""
    asked = [int(o.partition("=")[2]) for o in req.options if o.startswith("--timeout=")]
    opts = [o for o in req.options if not o.startswith("--timeout=")]
    timeout = min((t for t in (asked[-1] if asked else 0, settings.ingest.timeout) if t > 0),
                  default=0)
    if timeout:
        opts.append(f"--timeout={timeout}")
    return opts


def _client_xattrs(store: Store, client: str, facts: dict[str, str]) -> None:
    with contextlib.suppress(OSError):
        set_xattrs(store.client_dir(client), facts)


def run_upload(ctx: Context, client: str, req: Request, clock: Clock = utcnow,
               remote: str = "") -> int:
    store, settings = ctx.store, ctx.settings
    session = Session(ctx, client)
    transfer = Transfer(client, req.volume, clock(), remote=remote)
    try:
        hook_env = {"XSBACKUP_CLIENT": client, "XSBACKUP_VOLUME": req.volume,
                    "XSBACKUP_REMOTE": remote}
        hooks.veto("pre-ingest", settings, hook_env)
        deletes = any(o.startswith("--delete") for o in req.options)
        with ctx.storage.prepare(client, req.volume, fresh=not deletes) as target:
            argv = [settings.ingest.rsync, "--server", *_server_opts(settings, req),
                    "--fake-super", DROP_OWN_XATTRS,
                    f"--confine-root={store.client_dir(client)}",
                    *target.rsync_args, "--", ".", f"{target.path}/"]
            LOG.info("client=%s volume=%s upload started from %s", client, req.volume,
                     remote or "?")
            rc = _run(argv, [*session.fds(), *target.pass_fds])
            transfer.finished = clock()
            transfer.returncode = rc
            if rc in SUCCESS_CODES:
                incoming = mark_success(ctx, transfer, target)
                hooks.run_post("post-ingest", settings, {
                    **hook_env, "XSBACKUP_SNAPSHOT_ID": transfer.snapshot_id or "",
                    "XSBACKUP_SNAPSHOT_PATH": str(incoming), "XSBACKUP_RSYNC_EXIT": str(rc),
                })
            else:
                error = f"rsync exited {rc} on {req.volume}"
                if _disk_full(ctx):
                    error += "; the disk is full, so it will not be resumed"
                    _discard_partial(ctx, client, req.volume)
                LOG.warning("client=%s volume=%s upload failed: %s", client, req.volume,
                            error)
                _client_xattrs(store, client, {"last_error": error,
                                               "last_error_at": transfer.finished.isoformat()})
                hooks.run_post("on-failure", settings, {**hook_env, "XSBACKUP_ERROR": error,
                                                        "XSBACKUP_RSYNC_EXIT": str(rc)})
        return rc
    finally:
        session.close()


def _disk_full(ctx: Context) -> bool:
    """Whether the disk is past admission's block or inode limit (the next transfer of
    any client would be refused)."""
    try:
        check_server(ctx, reserved=True)
    except (DiskFull, InodesFull):
        return True
    except Refused:
        return False
    return False


def _discard_partial(ctx: Context, client: str, volume: str) -> None:
    try:
        gone = ctx.storage.discard_partial(client, volume)
    except OSError as e:  # prune discards it later; the client's error is rsync's
        LOG.warning("client=%s volume=%s disk full after a failed upload; could not "
                    "discard what it left: %s", client, volume, e)
        return
    LOG.warning("client=%s volume=%s disk full after a failed upload: discarded %s",
                client, volume, ", ".join(gone))


def mark_success(ctx: Context, transfer: Transfer, target: IngestTarget) -> Path:
    """``current/`` becomes ``incoming/<id>/`` and a queue entry names it (DESIGN 3.5).
    Returns the ``incoming/<id>`` path."""
    store = ctx.store
    client, volume = transfer.client, transfer.volume
    finished = transfer.finished or utcnow()
    sid = unique_snapshot_id(store, client, volume, finished)
    transfer.snapshot_id = sid
    incoming = ctx.storage.complete(target, sid)
    queue.write(store, sid, client, volume, transfer.origin())
    _client_xattrs(store, client, {"last_transfer": finished.isoformat()})
    LOG.info("client=%s volume=%s snapshot=%s transfer complete (rsync exit %s), queued",
             client, volume, sid, transfer.returncode)
    return incoming


def run_completion(ctx: Context, client: str, req: Request, clock: Clock = utcnow) -> int:
    """ds-backup's completion flag: receive the empty file, then confirm the session."""
    import shutil  # here only: an upload's wrapper never needs it

    store, settings = ctx.store, ctx.settings
    session = Session(ctx, client)
    try:
        flag_dir = store.client_dir(client) / "completion"
        if flag_dir.exists():
            shutil.rmtree(flag_dir)
        flag_dir.mkdir()
        argv = [settings.ingest.rsync, "--server", *_server_opts(settings, req),
                "--fake-super", DROP_OWN_XATTRS, f"--confine-root={store.client_dir(client)}",
                f"--temp-dir={flag_dir}", "--", ".", str(flag_dir / client)]
        rc = _run(argv, list(session.fds()))
        shutil.rmtree(flag_dir, ignore_errors=True)
        if rc in SUCCESS_CODES:
            now = clock().isoformat()
            _client_xattrs(store, client, {"last_completion": now})
            LOG.info("client=%s ds-backup completion flag received", client)
        return rc
    finally:
        session.close()


def run_download(ctx: Context, client: str, req: Request) -> int:
    """Send one of the client's snapshots (or a path in it) read-only."""
    # Imported here, not with the module: an upload (every backup) never needs them.
    from xsbackup.restore.access import OpenSnapshot
    from xsbackup.restore.resolve import resolve

    store, settings = ctx.store, ctx.settings
    sid = resolve(store, client, req.volume, req.snapshot)
    slot = _slot(ctx)
    fds: list[int] = []
    try:
        snap_fd = OpenSnapshot(store, client, req.volume, sid).fd
        fds.append(snap_fd)
        source = _pin_source(snap_fd, req, fds, sid)
        argv = [settings.ingest.rsync, "--server", "--sender", *_server_opts(settings, req),
                "--fake-super", "--", ".", source]
        LOG.info("client=%s volume=%s snapshot=%s download started", client, req.volume, sid)
        rc = _run(argv, [*fds, *(fd for fd in (slot.fd,) if fd is not None)])
        LOG.info("client=%s volume=%s snapshot=%s download finished (rsync exit %s)",
                 client, req.volume, sid, rc)
        return rc
    finally:
        for fd in fds:
            os.close(fd)
        slot.release()


def _pin_source(snap_fd: int, req: Request, fds: list[int], sid: str) -> str:
    """Walk ``req.subpath`` below the snapshot with O_NOFOLLOW; return rsync's source arg."""
    parts = list(req.subpath)
    if not parts:
        return f"/proc/self/fd/{snap_fd}/" if req.trailing_slash else \
            f"/proc/self/fd/{snap_fd}/."
    dir_fd = snap_fd
    for name in parts[:-1]:
        try:
            dir_fd = _open_dir(name, dir_fd)
        except OSError:
            raise RequestRefused(f"no directory {'/'.join(parts)!r} in snapshot {sid}") from None
        fds.append(dir_fd)
    leaf = parts[-1]
    try:
        st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        raise RequestRefused(f"no such path {'/'.join(parts)!r} in snapshot {sid}") from None
    if req.trailing_slash:
        try:
            leaf_fd = _open_dir(leaf, dir_fd)
        except OSError:
            raise RequestRefused(f"{'/'.join(parts)!r} is not a directory") from None
        fds.append(leaf_fd)
        return f"/proc/self/fd/{leaf_fd}/"
    del st
    return f"/proc/self/fd/{dir_fd}/{leaf}"


def _run(argv: list[str], pass_fds: list[int]) -> int:
    """Run rsync with the wrapper's stdin/stdout/stderr, never through a shell."""
    return procs.call(argv, why="rsync", pass_fds=pass_fds)
