"""The btrfs backend: read-only subvolume snapshots of a persistent ``current`` subvolume.

Ingest is ``mirror``'s: rsync updates the volume's ``current`` subvolume in place, and a
successful transfer becomes ``incoming/<id>``, a writable snapshot of it, where the
post-processor writes the facts. **Promote** takes a read-only snapshot of that as
``snapshots/<id>`` (it appears whole, read-only from its first instant: a write, chmod or
utime there fails with ``EROFS``, even as root) and moves ``incoming/<id>`` into the
state root's ``deleting/`` (``CLIENT.VOLUME.ID.subvolume``), which ``purge`` and
``measure`` empty: deleting a subvolume evicts every cached inode of it, 0.4 s at 100,000
files, which the promotion need not wait for. (A read-only subvolume cannot be renamed
into another directory: its ``..`` would change; a writable one can.)

**Delete** is ``btrfs subvolume delete`` under the snapshot's exclusive flock (a reader
makes it refuse), after noting the subvolume's id in ``deleting/``. The filesystem's
cleaner frees the space later; **purge** waits for it (``btrfs subvolume sync``) and only
then counts the snapshot as freed, so prune's fair-share rounds see the space it has.

**Measure**: files and apparent bytes by a walk; exclusive bytes from qgroups when quotas
are enabled on the filesystem (exact), else from ``btrfs filesystem du`` (bytes held by
no other file). ``ClientUsage.method`` says which. A client's total is its exclusive bytes
plus the largest of its trees' shared bytes (a floor: what its trees share among
themselves counts once).

Every step runs the ``btrfs`` command (``procs``); the subvolume id of an open directory
comes from the ``BTRFS_IOC_INO_LOOKUP`` ioctl, which needs no privilege.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
from pathlib import Path

from xsbackup import procs
from xsbackup.crashpoints import crash
from xsbackup.errors import BackendUnavailable, LockBusy
from xsbackup.locking import FileLock
from xsbackup.storage.base import (
    DEDUP_BLOCKS,
    READ_ONLY,
    RESUME,
    BackendInfo,
    ClientUsage,
    MeasureProgress,
    Progress,
    SnapshotUsage,
    lock_for_delete,
    rm_tree,
)
from xsbackup.storage.mirror import PARTIAL, MirrorBackend
from xsbackup.store import fsync_dir

NAME = "btrfs"
SUBVOL_INO = 256                      # the root directory of every subvolume
_INO_LOOKUP = 0xD0009412              # _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
DELETING = "deleting"                 # under the state root: ids of deleted subvolumes,
RETIRED = ".subvolume"                # and promoted incoming/<id> waiting to be deleted


def btrfs(*args: str, why: str) -> procs.Result:
    """Run ``btrfs ARGS``; a missing btrfs-progs is ``BackendUnavailable``."""
    try:
        return procs.run(["btrfs", *args], why=why)
    except FileNotFoundError:
        raise BackendUnavailable("the btrfs backend needs btrfs-progs: the btrfs command "
                                 "was not found (apt-get install btrfs-progs)") from None


def btrfs_ok(*args: str, why: str) -> str:
    """``btrfs`` that must succeed; its stdout. A failure is an ``OSError`` naming it."""
    res = btrfs(*args, why=why)
    if not res.ok:
        raise OSError(f"btrfs {' '.join(args[:2])} {args[-1]}: {res.first_error_line()}")
    return res.stdout


def on_btrfs(path: Path) -> bool:
    """Whether the directory ``path`` is on btrfs (the lookup ioctl answers only there)."""
    try:
        subvolume_id(path)
    except OSError:
        return False
    return True


def subvolume_id(path: Path) -> int:
    """The id of the subvolume holding the directory ``path`` (ENOTTY off btrfs)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = bytearray(struct.pack("QQ", 0, SUBVOL_INO) + bytes(4080))
        fcntl.ioctl(fd, _INO_LOOKUP, buf)
        return int(struct.unpack_from("Q", buf)[0])
    finally:
        os.close(fd)


def is_subvolume(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == SUBVOL_INO


class BtrfsBackend(MirrorBackend):
    def describe(self) -> BackendInfo:
        return BackendInfo(NAME, "a persistent current subvolume rsync updates in place; "
                           "each snapshot a read-only btrfs subvolume snapshot of it",
                           (DEDUP_BLOCKS, RESUME, READ_ONLY))

    # ---- trees -------------------------------------------------------------------------

    def _new_tree(self, path: Path) -> None:
        btrfs_ok("subvolume", "create", str(path), why="create a transfer subvolume")

    def _copy_tree(self, src: Path, dst: Path) -> None:
        btrfs_ok("subvolume", "snapshot", str(src), str(dst), why="snapshot a transfer")

    def _remove_tree(self, path: Path) -> None:
        if is_subvolume(path):
            btrfs_ok("subvolume", "delete", str(path), why="delete a subvolume")
            return
        error = rm_tree(path, "delete a partial file")
        if error:
            raise OSError(f"rm -rf {path}: {error}")

    # ---- promotion ---------------------------------------------------------------------

    def promote(self, client: str, volume: str, sid: str) -> Path:
        vol = self.store.volume_dir(client, volume)
        src, dst = vol / "incoming" / sid, vol / "snapshots" / sid
        (vol / "snapshots").mkdir(exist_ok=True)
        if src.is_dir() and not dst.exists():
            btrfs_ok("subvolume", "snapshot", "-r", str(src), str(dst),
                     why="make a snapshot visible")
            fsync_dir(vol / "snapshots")
        crash("after-rename")
        if is_subvolume(src) and dst.exists():
            self._retire(src, f"{client}.{volume}.{sid}")
        self._point_latest(client, volume)
        return dst

    def _retire(self, path: Path, name: str) -> None:
        """Move the writable subvolume ``path`` into ``deleting/`` for ``purge`` (or the
        next ``measure``) to delete. Deleting it here would cost the promotion the
        eviction of every cached inode of the tree (0.4 s at 100,000 files)."""
        self._deleting.mkdir(mode=0o700, exist_ok=True)
        os.rename(path, self._deleting / f"{name}{RETIRED}")
        fsync_dir(self._deleting)
        fsync_dir(path.parent)

    def _delete_retired(self) -> int:
        """Delete the subvolumes ``promote`` retired, noting each for the cleaner's wait
        (the caller holds the trash lock). Returns how many."""
        try:
            names = sorted(n for n in os.listdir(self._deleting) if n.endswith(RETIRED))
        except FileNotFoundError:
            return 0
        for name in names:
            path = self._deleting / name
            (self._deleting / str(subvolume_id(path))).write_text(f"{name}\n")
            self._remove_tree(path)
        return len(names)

    # ---- deletion ----------------------------------------------------------------------

    @property
    def _deleting(self) -> Path:
        return self.store.root / DELETING

    def delete(self, client: str, volume: str, sid: str) -> str:
        snapshots = self.store.snapshots_dir(client, volume)
        fd = lock_for_delete(snapshots / sid)
        if isinstance(fd, str):
            return fd
        try:
            self._deleting.mkdir(mode=0o700, exist_ok=True)
            (self._deleting / str(subvolume_id(snapshots / sid))).write_text(
                f"{client} {volume} {sid}\n")
            self._remove_tree(snapshots / sid)
        finally:
            os.close(fd)
        fsync_dir(snapshots)
        crash("prune-after-rename")
        self._forget_manifest(client, volume, sid)
        return ""

    def purge(self, progress: Progress | None = None) -> int:
        from xsbackup.storage.hardlink import HardlinkBackend

        removed = 0
        try:
            with FileLock(self.store.trash_lock).acquire():
                self._delete_retired()
                removed = self._wait_cleaner(progress)
        except LockBusy:
            return 0
        # Plain trees in trash/ (none of this backend's own): the hardlink way.
        return removed + HardlinkBackend(self.store).purge(progress)

    def _wait_cleaner(self, progress: Progress | None) -> int:
        try:
            notes = sorted(os.listdir(self._deleting))
        except FileNotFoundError:
            return 0
        removed = 0
        if notes:  # a commit wakes the cleaner now, not at the next periodic one
            btrfs_ok("filesystem", "sync", str(self.store.root), why="wake the btrfs cleaner")
        for note in notes:
            if note.endswith(RETIRED):
                continue
            if note.isdigit():
                btrfs_ok("subvolume", "sync", str(self.store.root), note,
                         why="wait for the btrfs cleaner")
            (self._deleting / note).unlink(missing_ok=True)
            removed += 1
            if progress is not None:
                progress(removed)
            crash("prune-during-delete")
        return removed

    # ---- usage -------------------------------------------------------------------------

    def measure(self, client: str, progress: MeasureProgress | None = None) -> ClientUsage:
        snaps: list[tuple[SnapshotUsage, Path]] = []
        pending: list[Path] = []
        for volume in self.store.volumes(client):
            vol = self.store.volume_dir(client, volume)
            for sid in self.store.snapshot_ids(client, volume):
                if progress is not None:
                    progress(volume, sid)
                su = SnapshotUsage(volume, sid)
                count_files(vol / "snapshots" / sid, su)
                snaps.append((su, vol / "snapshots" / sid))
            pending += [vol / "incoming" / i for i in self.store.incoming_ids(client, volume)]
            pending += [p for p in (vol / "current", vol / PARTIAL) if p.is_dir()]
        paths = [p for _, p in snaps] + pending
        # Retired and deleted subvolumes (promoted incoming/<id>, pruned snapshots) hold
        # their extents until deleted and cleaned: until then nothing they shared would be
        # exclusive.
        with contextlib.suppress(LockBusy), FileLock(self.store.trash_lock).acquire():
            self._delete_retired()
        btrfs_ok("filesystem", "sync", str(self.store.root), why="wake the btrfs cleaner")
        btrfs_ok("subvolume", "sync", str(self.store.root), why="wait for the btrfs cleaner")
        figures, method = self._exclusive(paths)
        total = 0
        widest_shared = 0
        for su, path in snaps:
            excl, refer = figures.get(str(path), (0, 0))
            su.exclusive = excl
            su.shared = max(0, su.apparent - excl)
            total += excl
            widest_shared = max(widest_shared, refer - excl)
        pending_excl = 0
        for path in pending:
            excl, refer = figures.get(str(path), (0, 0))
            pending_excl += excl
            widest_shared = max(widest_shared, refer - excl)
        usage = ClientUsage(client, total + pending_excl + widest_shared,
                            sum(su.apparent for su, _ in snaps), [su for su, _ in snaps],
                            pending_excl)
        usage.method = method
        return usage

    def _exclusive(self, paths: list[Path]) -> tuple[dict[str, tuple[int, int]], str]:
        """{path: (exclusive, referenced)} and how they were measured."""
        if not paths:
            return {}, "btrfs filesystem du"
        groups = self._qgroups()
        if groups is not None:
            out = {}
            for p in paths:
                with contextlib.suppress(OSError):
                    if is_subvolume(p):
                        rfer, excl = groups.get(subvolume_id(p), (0, 0))
                        out[str(p)] = (excl, rfer)
            plain = [p for p in paths if str(p) not in out]
            out.update(self._fs_du(plain))
            return out, "btrfs qgroups"
        return self._fs_du(paths), "btrfs filesystem du"

    def _qgroups(self) -> dict[int, tuple[int, int]] | None:
        """{subvolume id: (referenced, exclusive)}, or None when quotas are off."""
        res = btrfs("qgroup", "show", "--raw", str(self.store.root), why="read qgroups")
        if not res.ok:
            return None
        out = {}
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].startswith("0/") and parts[1].isdigit():
                out[int(parts[0][2:])] = (int(parts[1]), int(parts[2]))
        return out

    def _fs_du(self, paths: list[Path]) -> dict[str, tuple[int, int]]:
        if not paths:
            return {}
        text = btrfs_ok("filesystem", "du", "-s", "--raw", *map(str, paths),
                        why="measure snapshots")
        out = {}
        for line in text.splitlines()[1:]:
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[0].isdigit():
                out[parts[3]] = (int(parts[1]), int(parts[0]))
        return out


def count_files(top: Path, su: SnapshotUsage) -> None:
    """Add the regular files below ``top`` and their sizes to ``su``."""
    stack = [str(top)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                    continue
                su.files += 1
                if e.is_file(follow_symlinks=False):
                    su.apparent += e.stat(follow_symlinks=False).st_size
