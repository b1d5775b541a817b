"""The reflink backend: copy-on-write copies of a persistent ``current/`` (XFS with
``reflink=1``, or btrfs where subvolumes cannot be made).

Ingest is ``mirror``'s: rsync updates ``current/`` in place. **Complete** copies it into
the volume's ``snapshotting/`` and renames that to ``incoming/<id>``, so a copy killed
halfway is never taken for a transfer (the next copy deletes it first). The copy is
``clonetree``'s: each file's data shared by ``FICLONE``, and in the same pass each
regular file made read-only (its write bits go, after rsync's record keeps the client's
mode, as ``permissions.tighten`` does for group and world write) and immutable where the
service may set that attribute (``CAP_LINUX_IMMUTABLE``). Where it cannot (an entry type
it does not copy), ``cp -a --reflink=always`` copies and ``freeze_tree`` freezes. Copies
share data blocks, never inodes: a later chmod, touch or rewrite in ``current/`` cannot
reach a snapshot, as it could through a hardlink. Directories stay writable by the
service, so a snapshot can still be renamed away and its facts written.

**Promote** renames ``incoming/<id>`` to ``snapshots/<id>``. A copy whose top directory
lacks the ``FROZEN`` mark (made before there was one) is frozen first.

**Delete** is the hardlink backend's rename into ``trash/`` under an exclusive flock;
**purge** clears the immutable attribute of what is there, then removes it the hardlink
way. **Measure** counts data extents (``extents``): shared blocks are not exclusive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from pathlib import Path

from xsbackup import procs
from xsbackup.crashpoints import crash
from xsbackup.logs import LOG
from xsbackup.storage import extents
from xsbackup.storage.base import (
    DEDUP_BLOCKS,
    RESUME,
    BackendInfo,
    ClientUsage,
    MeasureProgress,
    Progress,
    rm_tree,
)
from xsbackup.storage.clonetree import clone_tree
from xsbackup.storage.hardlink import HardlinkBackend
from xsbackup.storage.mirror import PARTIAL, MirrorBackend
from xsbackup.storage.permissions import tighten
from xsbackup.store import fsync_dir

NAME = "reflink"
SNAPSHOTTING = "snapshotting"
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10
WRITE_BITS = 0o222
# On a copy's top directory from when it is whole and frozen until its promotion.
FROZEN = "user.xsbackup-reflink.frozen"


class ReflinkBackend(MirrorBackend):
    def describe(self) -> BackendInfo:
        return BackendInfo(NAME, "a persistent current tree rsync updates in place; each "
                           "snapshot a read-only reflink copy of it (shared blocks, own "
                           "inodes)", (DEDUP_BLOCKS, RESUME))

    # ---- trees -------------------------------------------------------------------------

    def _new_tree(self, path: Path) -> None:
        path.mkdir()

    def _copy_tree(self, src: Path, dst: Path) -> None:
        aside = src.parent / SNAPSHOTTING
        if aside.exists():
            self._remove_tree(aside)
        try:
            clone_tree(str(src), str(aside))
        except OSError as e:
            # A type clone_tree does not copy, or no reflinks here: cp says which.
            LOG.info("reflink copy of %s by cp instead (%s)", src, e)
            if aside.exists():
                self._remove_tree(aside)
            res = procs.run(["cp", "-a", "--reflink=always", "--no-target-directory", "--",
                             str(src), str(aside)], why="reflink-copy a transfer")
            if not res.ok:
                raise OSError(f"cp --reflink=always {src}: {res.first_error_line()}") from None
            freeze_tree(str(aside))
        os.setxattr(aside, FROZEN, b"1")
        os.rename(aside, dst)

    def _remove_tree(self, path: Path) -> None:
        set_immutable_tree(str(path), False)
        error = rm_tree(path, "delete a tree")
        if error:
            raise OSError(f"rm -rf {path}: {error}")

    # ---- promotion ---------------------------------------------------------------------

    def promote(self, client: str, volume: str, sid: str) -> Path:
        vol = self.store.volume_dir(client, volume)
        src, dst = vol / "incoming" / sid, vol / "snapshots" / sid
        (vol / "snapshots").mkdir(exist_ok=True)
        if src.is_dir() and not dst.exists():
            try:
                os.removexattr(src, FROZEN)
            except OSError as e:   # copied before this mark existed: freeze it now
                if e.errno != errno.ENODATA:
                    raise
                freeze_tree(str(src))
            os.rename(src, dst)
            fsync_dir(vol / "snapshots")
            fsync_dir(vol / "incoming")
        crash("after-rename")
        self._point_latest(client, volume)
        return dst

    # ---- deletion ----------------------------------------------------------------------

    def delete(self, client: str, volume: str, sid: str) -> str:
        return HardlinkBackend(self.store).delete(client, volume, sid)

    def purge(self, progress: Progress | None = None) -> int:
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.store.trash_dir):
                set_immutable_tree(str(self.store.trash_dir / name), False)
        return HardlinkBackend(self.store).purge(progress)

    # ---- usage -------------------------------------------------------------------------

    def measure(self, client: str, progress: MeasureProgress | None = None) -> ClientUsage:
        return extents.measure(self.store, client, ("current", PARTIAL, SNAPSHOTTING),
                               progress)


def _walk_files(top: str) -> list[tuple[str, os.stat_result]]:
    out = []
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    out.append((e.path, st))
    return out


def freeze_tree(top: str) -> int:
    """Make every regular file below ``top`` read-only, and immutable when allowed.
    Idempotent. Returns the files made immutable."""
    files = _walk_files(top)
    for path, st in files:
        if not _flags(path) & FS_IMMUTABLE_FL:
            tighten(path, st, WRITE_BITS)
    return set_immutable_tree(top, True, files)


def set_immutable_tree(top: str, on: bool,
                       files: list[tuple[str, os.stat_result]] | None = None) -> int:
    """Set or clear the immutable attribute of every regular file below ``top``; stops
    quietly where the service may not (no ``CAP_LINUX_IMMUTABLE``). Returns the files
    changed."""
    if not os.path.isdir(top) or os.path.islink(top):
        return 0
    changed = 0
    for path, _ in files if files is not None else _walk_files(top):
        try:
            flags = _flags(path)
            if bool(flags & FS_IMMUTABLE_FL) != on:
                _set_flags(path, flags ^ FS_IMMUTABLE_FL)
                changed += 1
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                return changed
            raise
    return changed


def _flags(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        buf = bytearray(struct.pack("l", 0))
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        return int(struct.unpack("l", buf)[0])
    finally:
        os.close(fd)


def _set_flags(path: str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags))
    finally:
        os.close(fd)
