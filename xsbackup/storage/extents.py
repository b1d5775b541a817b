"""Usage by data extents, for copy-on-write copies (the reflink backend's ``measure``).

Reflinked files share data blocks but not inodes, so a hardlink-aware ``du`` would count
every snapshot whole. Here each regular file's extents come from the ``FS_IOC_FIEMAP``
ioctl: an extent the filesystem flags shared is held elsewhere too (another snapshot, or
``current/``), so deleting the snapshot would not free it; an unshared one is its own.
A client's total counts each shared extent once (by its physical address), and a
directory's or an empty file's allocated blocks as its own.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct

from xsbackup.storage.base import ClientUsage, MeasureProgress, SnapshotUsage
from xsbackup.store import Store

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
_HEADER = struct.Struct("QQIIII")           # start, length, flags, mapped, count, reserved
_EXTENT = struct.Struct("QQQQQIIII")         # logical, physical, length, 2 reserved, flags
EXTENT_LAST = 0x1
EXTENT_SHARED = 0x2000
_BATCH = 64


def file_extents(fd: int) -> list[tuple[int, int, bool]]:
    """(physical, length, shared) of every extent of the open file ``fd``."""
    out: list[tuple[int, int, bool]] = []
    start = 0
    while True:
        buf = bytearray(_HEADER.pack(start, (1 << 64) - 1 - start, 0, 0, _BATCH, 0)
                        + bytes(_EXTENT.size * _BATCH))
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _HEADER.unpack_from(buf)[3]
        last = False
        for i in range(mapped):
            logical, physical, length, _, _, flags, _, _, _ = _EXTENT.unpack_from(
                buf, _HEADER.size + i * _EXTENT.size)
            out.append((physical, length, bool(flags & EXTENT_SHARED)))
            start = logical + length
            last = bool(flags & EXTENT_LAST)
        if mapped < _BATCH or last:
            return out


class _Walk:
    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()  # shared extents counted in the total
        self.total = 0

    def tree(self, top: str, su: SnapshotUsage) -> None:
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError:
                continue
            with it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(e.path)
                        su.exclusive += st.st_blocks * 512
                        self.total += st.st_blocks * 512
                        continue
                    su.files += 1
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    su.apparent += st.st_size
                    self._file(e.path, st, su)

    def _file(self, path: str, st: os.stat_result, su: SnapshotUsage) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            extents = file_extents(fd)
        except OSError:
            extents = [(0, st.st_blocks * 512, False)]
        finally:
            os.close(fd)
        for physical, length, shared in extents:
            if not shared:
                su.exclusive += length
                self.total += length
            elif (physical, length) not in self.seen:
                self.seen.add((physical, length))
                self.total += length
        if not extents:
            su.exclusive += st.st_blocks * 512  # inline data, or nothing allocated
            self.total += st.st_blocks * 512


def measure(store: Store, client: str, pending_trees: tuple[str, ...],
            progress: MeasureProgress | None = None) -> ClientUsage:
    """The client's usage; ``pending_trees`` are a volume's trees besides ``incoming/<id>``
    that are its but not snapshots."""
    walk = _Walk()
    snaps: list[SnapshotUsage] = []
    for volume in store.volumes(client):
        for sid in store.snapshot_ids(client, volume):
            if progress is not None:
                progress(volume, sid)
            su = SnapshotUsage(volume, sid)
            walk.tree(str(store.snapshots_dir(client, volume) / sid), su)
            su.shared = max(0, su.apparent - su.exclusive)
            snaps.append(su)
    pending = SnapshotUsage("", "pending")
    for volume in store.volumes(client):
        vol = store.volume_dir(client, volume)
        trees = [vol / "incoming" / sid for sid in store.incoming_ids(client, volume)]
        trees += [vol / name for name in pending_trees]
        for tree in trees:
            if tree.is_dir() and not tree.is_symlink():
                walk.tree(str(tree), pending)
    return ClientUsage(client, walk.total, sum(s.apparent for s in snaps), snaps,
                       pending.exclusive, "fiemap extents")
