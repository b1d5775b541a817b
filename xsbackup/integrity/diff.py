"""``xsbackup diff``: what changed between two snapshots of a volume.

Both trees are walked together, one directory of each at a time, through directory
descriptors (``restore.access``: nothing followed, under shared flocks). An entry that
is the same inode in both is unchanged, and nothing more is read about it: on one
filesystem (the hardlink backend: rsync ``--link-dest`` hardlinked it) the same name
and readdir inode number say so, set against set, with no ``stat``; across filesystems
(btrfs keeps inode numbers from one snapshot to the next) the same inode number also
needs the same ctime, which any change to the inode moves. Otherwise the client's view
of each side (rsync's fake-super record) is compared:

* ``added`` / ``removed``: the path is on one side only;
* ``modified``: the type differs, or the content does (for a file or symlink: its bytes;
  for a device: its numbers);
* ``metadata``: same type and content, but the permissions, owner or (except for a
  directory, whose mtime follows its entries) the mtime differ.

Two files of the same size and different inodes are compared by
their bytes while the bytes read stay under ``read_budget``; past it, by the digests of
the two snapshots' manifests (loaded then, once), so a ``chmod -R`` of a large tree costs
two manifest reads rather than reading every file twice.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from xsbackup.context import Context
from xsbackup.integrity import content
from xsbackup.restore import resolve
from xsbackup.restore.access import (
    ABSENT,
    O_DIR,
    FakeStat,
    OpenSnapshot,
    fake_stat,
    fake_stat_at,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xsbackup.snapshots import manifest

KINDS = ("added", "removed", "modified", "metadata")
TYPES = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


@dataclass
class Change:
    kind: str
    path: str
    type: str                       # the client's type (the newer side's when both)
    size_a: int | None = None
    size_b: int | None = None
    what: list[str] = field(default_factory=list)  # type, content, mode, owner, mtime

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "type": self.type,
                "size_a": self.size_a, "size_b": self.size_b, "what": list(self.what)}


READ_BUDGET = 64 << 20  # bytes diff compares by reading before it uses the manifests


@dataclass
class Side:
    """One snapshot being compared; its manifest's records by path, loaded when first
    needed."""

    ctx: Context
    client: str
    volume: str
    sid: str
    _digests: dict[str, manifest.Record] | None = None
    same_fs: bool = False  # (on side a) both snapshots on one filesystem

    @property
    def digests(self) -> dict[str, manifest.Record]:
        if self._digests is None:
            from xsbackup.snapshots import manifest  # here: rarely needed (module doc)

            try:
                records = manifest.read(self.ctx.storage, self.client, self.volume,
                                        self.sid) or []
            except manifest.ManifestError:
                records = []  # content is then read and compared
            self._digests = {r.path: r for r in records}
        return self._digests


@dataclass
class Budget:
    left: int


def type_name(mode: int) -> str:
    return TYPES.get(stat.S_IFMT(mode), "special")


def diff(ctx: Context, client: str, a: str, b: str, volume: str | None = None,
         read_budget: int = READ_BUDGET) -> tuple[str, str, str, list[Change]]:
    """(volume, id of a, id of b, changes from a to b), ``a`` and ``b`` as
    ``restore.resolve`` takes them (ids, ``latest``, times)."""
    store = ctx.store
    vol = resolve.pick_volume(store, client, volume)
    sa, sb = resolve.resolve(store, client, vol, a), resolve.resolve(store, client, vol, b)
    side_a, side_b = Side(ctx, client, vol, sa), Side(ctx, client, vol, sb)
    with OpenSnapshot(store, client, vol, sa) as snap_a, \
            OpenSnapshot(store, client, vol, sb) as snap_b:
        side_a.same_fs = os.fstat(snap_a.fd).st_dev == os.fstat(snap_b.fd).st_dev
        changes = list(_dir(snap_a.fd, snap_b.fd, "", side_a, side_b, Budget(read_budget)))
    return vol, sa, sb, changes


def _listing(fd: int | None) -> dict[str, int]:
    """The entries of the directory ``fd`` (ours alone: opened by this walk, or the
    snapshot's own) with their inode numbers (readdir's: no ``stat``)."""
    if fd is None:
        return {}
    with os.scandir(fd) as it:  # a duplicate descriptor, rewound when done
        return {e.name: e.inode() for e in it}


def _lstat(fd: int | None, name: str, listed: dict[str, int]) -> os.stat_result | None:
    if fd is None or name not in listed:
        return None
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _view(fd: int | None, name: str,
          st: os.stat_result | None) -> tuple[FakeStat | None, int | None]:
    """The client's view of ``name`` (lstat ``st``) and, for a directory the client sent
    as one, its descriptor (the caller closes it): a directory is opened first and its
    record read through that descriptor (``try_open_dir``'s check, done once)."""
    if fd is None or st is None:
        return None, None
    if stat.S_ISDIR(st.st_mode):
        try:
            sub = os.open(name, O_DIR, dir_fd=fd)
        except OSError as e:
            if e.errno not in ABSENT:
                raise
        else:
            try:
                view = fake_stat(sub, st)
            except BaseException:
                os.close(sub)
                raise
            if stat.S_ISDIR(view.mode):
                return view, sub
            os.close(sub)
            return view, None
    return fake_stat_at(fd, name, st), None


def _dir(fa: int | None, fb: int | None, prefix: str, side_a: Side, side_b: Side,
         budget: Budget) -> Iterator[Change]:
    la, lb = _listing(fa), _listing(fb)
    # On one filesystem, one name with one inode is one inode object on both sides
    # (directories never are): nothing about it can differ. Set operations, in C.
    names = {n for n, _ in la.items() ^ lb.items()} if side_a.same_fs else \
        la.keys() | lb.keys()
    for name in sorted(names):
        path = f"{prefix}{name}"
        sta, stb = _lstat(fa, name, la), _lstat(fb, name, lb)
        if sta is not None and stb is not None and sta.st_ino == stb.st_ino and \
                sta.st_ctime_ns == stb.st_ctime_ns and not stat.S_ISDIR(sta.st_mode):
            continue  # (btrfs keeps inode numbers and ctimes: an inode not changed since)
        va, sub_a = _view(fa, name, sta)
        try:
            vb, sub_b = _view(fb, name, stb)
            try:
                change = _compare(path, name, fa, fb, sta, stb, va, vb, side_a, side_b,
                                  budget)
                if change is not None:
                    yield change
                if (va is not None and stat.S_ISDIR(va.mode)) or \
                        (vb is not None and stat.S_ISDIR(vb.mode)):
                    yield from _dir(sub_a, sub_b, path + "/", side_a, side_b, budget)
            finally:
                if sub_b is not None:
                    os.close(sub_b)
        finally:
            if sub_a is not None:
                os.close(sub_a)


def _size(st: os.stat_result | None, view: FakeStat | None) -> int | None:
    return st.st_size if st is not None and view is not None and \
        stat.S_ISREG(view.mode) else None


def _compare(path: str, name: str, fa: int | None, fb: int | None,
             sta: os.stat_result | None, stb: os.stat_result | None,
             va: FakeStat | None, vb: FakeStat | None, side_a: Side,
             side_b: Side, budget: Budget) -> Change | None:
    if va is None or vb is None or sta is None or stb is None:
        if va is None and vb is None:
            return None
        if vb is not None:
            return Change("added", path, type_name(vb.mode), None, _size(stb, vb))
        if va is None:
            return None
        return Change("removed", path, type_name(va.mode), _size(sta, va), None)
    what = []
    kind_a, kind_b = stat.S_IFMT(va.mode), stat.S_IFMT(vb.mode)
    stored_files = stat.S_ISREG(sta.st_mode) and stat.S_ISREG(stb.st_mode)
    if kind_a != kind_b:
        what.append("type")
    elif stored_files and ((va.major, va.minor) != (vb.major, vb.minor) or
                           not _same_content(path, name, fa, fb, sta, stb, side_a, side_b,
                                                            budget)):
        what.append("content")
    if stat.S_IMODE(va.mode) != stat.S_IMODE(vb.mode):
        what.append("mode")
    if (va.uid, va.gid) != (vb.uid, vb.gid):
        what.append("owner")
    if kind_a != stat.S_IFDIR and sta.st_mtime_ns != stb.st_mtime_ns:
        what.append("mtime")
    if not what:
        return None
    kind = "modified" if {"type", "content"} & set(what) else "metadata"
    return Change(kind, path, type_name(vb.mode), _size(sta, va), _size(stb, vb), what)


def _same_content(path: str, name: str, fa: int | None, fb: int | None,
                  sta: os.stat_result, stb: os.stat_result, side_a: Side, side_b: Side,
                  budget: Budget) -> bool:
    if sta.st_size != stb.st_size:
        return False
    if 2 * sta.st_size <= budget.left:
        budget.left -= 2 * sta.st_size
        return content.same_bytes(name, fa, fb, sta.st_size)
    return content.digest(path, name, fa, sta, side_a.digests) == \
        content.digest(path, name, fb, stb, side_b.digests)


def summary(changes: list[Change]) -> dict[str, int]:
    return {k: sum(1 for c in changes if c.kind == k) for k in KINDS}
