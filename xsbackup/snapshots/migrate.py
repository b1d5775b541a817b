"""``xsbackup migrate --to btrfs``: convert a hardlink state root, snapshot by snapshot.

The root must be on btrfs, with subvolume rights (``storage.choice``). While it runs,
maintenance mode is on (no transfer starts) and every client's ingest and
post-processing locks are held (nothing else prunes or promotes); the queue must be
empty. For each volume, its snapshots oldest first:

1. ``rsync -aHXX --delete --numeric-ids`` the snapshot into the volume's ``current``
   subvolume (which then holds the newest snapshot, as after a btrfs transfer; what an
   interrupted hardlink transfer left for resuming is discarded first);
2. a read-only snapshot of ``current`` becomes ``snapshots/.<id>.btrfs`` (hidden: no
   snapshot id), carrying the top directory's xattrs, the facts, unchanged;
3. it is verified against the old tree: names, types, modes, sizes, mtimes, link targets,
   every xattr and every byte (a mismatch is copied again with ``--checksum`` once, then
   ``MigrateFailed``);
4. the two are exchanged in one ``renameat2(RENAME_EXCHANGE)``, so ``snapshots/<id>`` is
   always a whole snapshot, and the old tree goes to ``trash/``.

Killed anywhere, a second run resumes: a snapshot already a subvolume is done, a verified
hidden one is exchanged, anything else is copied again (rsync only sends what differs).
The root's record becomes ``btrfs`` at the end, maintenance returns to what it was
(``migration.json`` remembers it), and ``trash/`` is purged.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from xsbackup import procs
from xsbackup.context import Context
from xsbackup.crashpoints import crash
from xsbackup.errors import BackendUnavailable, MigrateFailed
from xsbackup.locking import FileLock, client_lock, postprocess_lock
from xsbackup.logs import LOG
from xsbackup.snapshots import queue
from xsbackup.storage.btrfs import BtrfsBackend, btrfs_ok, is_subvolume
from xsbackup.storage.choice import LEGACY, record, recorded, unusable
from xsbackup.storage.hardlink import HardlinkBackend
from xsbackup.store import Store, atomic_write, fsync_dir, iter_clients

STATE = "migration.json"
RENAME_EXCHANGE = 2
AT_FDCWD = -100
Progress = Callable[[str, str, str, str], None]  # client, volume, snapshot id, outcome


@dataclass
class Report:
    to: str
    migrated: list[str] = field(default_factory=list)   # client/volume/id
    already: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"to": self.to, "migrated": self.migrated, "already": self.already}


def migrate(ctx: Context, to: str, progress: Progress | None = None) -> Report:
    if to != "btrfs":
        raise MigrateFailed(f"migrate converts a hardlink root to btrfs only, not to {to}")
    store = ctx.store
    now = recorded(store) or LEGACY
    report = Report(to)
    if now == to and not (store.root / STATE).exists():
        return report
    if now not in (LEGACY, to):
        raise MigrateFailed(f"{store.root} is stored by the {now} backend; migrate "
                            "converts a hardlink root")
    why = unusable(store.root, to)
    if why:
        raise BackendUnavailable(f"the btrfs backend cannot work in {store.root}: {why}")
    state = _begin(store)
    locks = _lock_everyone(store)
    try:
        if queue.pending(store) or any(store.incoming_ids(c, v) for c in iter_clients(store)
                                       for v in store.volumes(c)):
            raise MigrateFailed("transfers are waiting to be post-processed; run xsbackup "
                                "postprocess --once first")
        for client in iter_clients(store):
            for volume in store.volumes(client):
                _volume(store, client, volume, report, progress)
        record(store, to)
        if not state.get("maintenance_was"):
            store.maintenance_flag.unlink(missing_ok=True)
        (store.root / STATE).unlink()
        fsync_dir(store.root)
    finally:
        for lock in locks:
            lock.release()
    BtrfsBackend(store).purge()
    return report


def _begin(store: Store) -> dict[str, Any]:
    path = store.root / STATE
    with contextlib.suppress(FileNotFoundError):  # not begun yet: begin it
        return dict(orjson.loads(path.read_bytes()))
    state = {"to": "btrfs", "maintenance_was": store.maintenance_flag.exists()}
    atomic_write(path, orjson.dumps(state), mode=0o600)
    store.maintenance_flag.write_text("on\n")
    return state


def _lock_everyone(store: Store) -> list[FileLock]:
    locks: list[FileLock] = []
    try:
        for client in iter_clients(store):
            for lock in (client_lock(store.locks_dir, client),
                         postprocess_lock(store.locks_dir, client)):
                locks.append(lock.acquire(wait=True))
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def _volume(store: Store, client: str, volume: str, report: Report,
            progress: Progress | None) -> None:
    vol = store.volume_dir(client, volume)
    current = vol / "current"
    if not is_subvolume(current):
        HardlinkBackend(store).discard_partial(client, volume)
        btrfs_ok("subvolume", "create", str(current), why="migrate: make current")
    snaps = vol / "snapshots"
    for sid in store.snapshot_ids(client, volume):
        name = f"{client}/{volume}/{sid}"
        old, new = snaps / sid, snaps / f".{sid}.btrfs"
        if is_subvolume(old):
            _drop(store, new, name)
            report.already.append(name)
            continue
        if is_subvolume(new) and not differences(old, new):
            _swap(store, old, new, name)
        else:
            _copy(current, old, new, name)
            crash("migrate-after-snapshot")
            _swap(store, old, new, name)
        report.migrated.append(name)
        LOG.info("client=%s volume=%s snapshot=%s migrated to btrfs", client, volume, sid)
        if progress is not None:
            progress(client, volume, sid, "migrated")


def _copy(current: Path, old: Path, new: Path, name: str) -> None:
    """Copy ``old`` into ``current`` and snapshot it read-only as ``new``, verified."""
    for extra in ((), ("--checksum",)):
        if new.exists():
            btrfs_ok("subvolume", "delete", str(new), why="migrate: drop a copy")
        # -XX: rsync's own records too; -1: mtimes to the nanosecond, not the second.
        res = procs.run(["rsync", "-aHXX", "--delete", "--numeric-ids", "--modify-window=-1",
                         *extra, f"{old}/", f"{current}/"], why="migrate a snapshot")
        if not res.ok:
            raise MigrateFailed(f"{name}: rsync: {res.first_error_line()}")
        btrfs_ok("subvolume", "snapshot", "-r", str(current), str(new),
                 why="migrate: snapshot")
        diff = differences(old, new)
        if not diff:
            return
        LOG.warning("%s: the copy differs (%s); copying again with --checksum", name, diff)
    raise MigrateFailed(f"{name}: the btrfs copy differs from the original: {diff}")


def _swap(store: Store, old: Path, new: Path, name: str) -> None:
    """Exchange ``old`` and ``new`` atomically, then move the old tree to trash/."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                      RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise MigrateFailed(f"{name}: cannot exchange the trees: {os.strerror(e)}")
    fsync_dir(old.parent)
    crash("migrate-after-swap")
    _drop(store, new, name)


def _drop(store: Store, path: Path, name: str) -> None:
    """Move a left-over plain tree to trash/, or delete a left-over subvolume."""
    if is_subvolume(path):
        btrfs_ok("subvolume", "delete", str(path), why="migrate: drop a copy")
    elif path.exists():
        os.rename(path, store.trash_dir / f"migrated.{name.replace('/', '.')}."
                                          f"{secrets.token_hex(4)}")


def differences(a: Path, b: Path) -> str:
    """The first difference between the trees ``a`` and ``b`` (every name, type, mode,
    size, mtime, link target, xattr and byte), or ""."""
    stack = [""]
    while stack:
        rel = stack.pop()
        pa, pb = (a / rel, b / rel) if rel else (a, b)
        try:
            na, nb = sorted(os.listdir(pa)), sorted(os.listdir(pb))
        except OSError as e:
            return f"{rel or '.'}: {e.strerror}"
        if na != nb:
            return f"{rel or '.'}: names differ ({sorted(set(na) ^ set(nb))[:3]})"
        for n in ["", *na]:
            r = f"{rel}/{n}".strip("/") if n else rel
            why = _item_differs(a / r if r else a, b / r if r else b)
            if why:
                return f"{r or '.'}: {why}"
            if n and stat.S_ISDIR(os.lstat(a / r).st_mode):
                stack.append(r)
    return ""


def _item_differs(x: Path, y: Path) -> str:
    sx, sy = os.lstat(x), os.lstat(y)
    if (sx.st_mode, sx.st_uid, sx.st_gid) != (sy.st_mode, sy.st_uid, sy.st_gid):
        return "mode or owner"
    if stat.S_ISLNK(sx.st_mode):
        return "" if os.readlink(x) == os.readlink(y) else "link target"
    if sx.st_mtime_ns != sy.st_mtime_ns:
        return f"mtime {sx.st_mtime_ns} != {sy.st_mtime_ns}"
    if _xattrs(x) != _xattrs(y):
        return "xattrs"
    if stat.S_ISREG(sx.st_mode):
        if sx.st_size != sy.st_size:
            return "size"
        with open(x, "rb") as fx, open(y, "rb") as fy:
            while True:
                bx, by = fx.read(1 << 20), fy.read(1 << 20)
                if bx != by:
                    return "content"
                if not bx:
                    break
    return ""


def _xattrs(p: Path) -> dict[str, bytes]:
    out = {}
    for n in os.listxattr(p, follow_symlinks=False):
        with contextlib.suppress(OSError):
            out[n] = os.getxattr(p, n, follow_symlinks=False)
    return out


def is_migrating(store: Store) -> bool:
    return (store.root / STATE).exists()

