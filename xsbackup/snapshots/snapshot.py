"""Snapshots: statistics and facts (xattrs) (DESIGN.md section 4).

The post-processor writes a snapshot's facts on ``incoming/<id>`` and syncs them before
the storage backend makes it visible (``storage.Backend.promote``). Directories are never
hardlinked, so the snapshot directory's xattrs belong to that snapshot alone; nothing
here ever writes to the content of the files inside. The walk that counts them also takes
group and world write away from their stored modes (``storage.permissions``; the
client's modes stay recorded for restore).

Facts are ours alone. A client sending ``rsync -X`` could give its top directory, which
becomes the snapshot directory, ``user.xsbackup.*`` xattrs of its own: ingest's rsync
drops them (``upload``), ``write_facts`` removes any it finds, and ``read_facts`` reads
only the names in ``FACT_KEYS``, from the snapshot directory only.
"""

from __future__ import annotations

import os
import re
import stat
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import orjson

from xsbackup.storage.permissions import tighten as tighten_item
from xsbackup.store import XATTR_PREFIX, get_xattrs, set_xattrs, snapshot_time

# Every fact the post-processor writes on a snapshot directory; nothing else is a fact.
FACT_KEYS = ("created", "files", "bytes", "new_bytes", "linked_files", "stats", "cjson",
             "origin", "manifest")


@dataclass
class Stats:
    files: int = 0          # regular files
    dirs: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0          # apparent size of regular files
    linked_files: int = 0   # files sharing their inode with the previous snapshot
    new_files: int = 0
    new_bytes: int = 0      # bytes of files not shared with the previous snapshot

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FileStat(NamedTuple):
    """What a manifest keeps of a regular file's lstat, named as ``os.stat_result``
    names it (either serves ``snapshots.manifest``)."""

    st_ino: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int


Lstat = os.stat_result | FileStat  # a regular file's lstat, for a manifest


@dataclass
class Changes:
    """What ``compute_stats`` found of the new tree against the previous snapshot, for
    the content manifest (``snapshots.manifest.build``). A regular file is *kept* when it
    is the previous snapshot's very file at the same path: the same inode there, and
    either the same filesystem (one inode object: the hardlink backend's link) or a
    ctime older than ``since_ns``, the previous snapshot's id time (the inode has not
    changed since before that snapshot was taken: a btrfs snapshot keeps inode numbers).
    Its size, mtime and content are then the previous snapshot's.

    The files that are not kept are held as their paths and, beside them, machine
    integers (``FileStat``'s four, by pairs): the walk keeps no Python object of a
    file's lstat. Keeping a thousand stat results (each some twenty integer objects)
    alive through a walk that makes and frees a hundred thousand more costs the
    allocator several million instructions; ``new_files`` makes them when they are
    read."""

    since_ns: int = 0
    same_fs: bool = False   # the new tree and the previous snapshot share a filesystem
    files: int = 0          # regular files of the new tree
    kept: int = 0
    new: list[str] = field(default_factory=list)  # not kept: their paths, walk order
    ids: array[int] = field(default_factory=lambda: array("Q"))   # inode, size
    times: array[int] = field(default_factory=lambda: array("q"))  # mtime, ctime (ns)
    # Times past what ``times`` holds (64 bits of nanoseconds: a client's file dated
    # after 2262 or before 1677), by index in ``new``: (mtime, ctime); zeros there.
    wide: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Entries of the previous snapshot not kept, but for a non-directory where a regular
    # file of ``new`` is now (whose record replaces its own): a file as its path, a
    # directory as its path and "/" (everything that was below it).
    gone: list[str] = field(default_factory=list)

    def add(self, path: str, st: Lstat) -> None:
        """Record ``path`` (lstat ``st``) as a regular file that is not kept."""
        self.new.append(path)
        self.ids.append(st.st_ino)
        self.ids.append(st.st_size)
        times = self.times
        try:
            times.append(st.st_mtime_ns)
            times.append(st.st_ctime_ns)
        except OverflowError:  # kept aside (``wide``), the array's pair zeroed
            i = len(self.new) - 1
            del times[2 * i:]
            times.extend((0, 0))
            self.wide[i] = (st.st_mtime_ns, st.st_ctime_ns)

    def mtimes(self) -> list[int]:
        """The mtimes (ns) of the files that are not kept, in walk order."""
        out = self.times[0::2].tolist()
        for i, (m, _) in self.wide.items():
            out[i] = m
        return out

    def new_files(self) -> list[tuple[str, Lstat]]:
        """The files that are not kept, as ``(path, FileStat)``, in walk order."""
        ids, times, wide = self.ids, self.times, self.wide
        return [(p, FileStat(ids[2 * i], ids[2 * i + 1],
                             *wide.get(i, (times[2 * i], times[2 * i + 1]))))
                for i, p in enumerate(self.new)]


def since_ns(snapshot: Path | None) -> int:
    """The time of ``snapshot``'s id in nanoseconds (0 for none): it was taken after
    that (``snapshot.Changes``)."""
    if snapshot is None:
        return 0
    return int(snapshot_time(snapshot.name).timestamp()) * 1_000_000_000


def _prev_entries(prev: Path | None, rel: str) -> dict[str, int]:
    """The entries of the previous snapshot's directory ``rel``: name -> inode number, or
    its complement (negative) for a directory."""
    if prev is None:
        return {}
    out: dict[str, int] = {}
    try:
        with os.scandir(prev / rel if rel else prev) as it:
            for e in it:
                out[e.name] = ~e.inode() if e.is_dir(follow_symlinks=False) else e.inode()
    except OSError:
        return {}
    return out


def compute_stats(tree: Path, previous: Path | None, match: re.Pattern[str] | None = None,
                  found: list[str] | None = None, tighten: bool = False,
                  changes: Changes | None = None) -> Stats:
    """Walk ``tree`` once (scandir, no symlink following), comparing inodes by path with
    ``previous``. One directory listing of each tree per directory; no file is opened.
    With ``match``, the relative paths of non-directories whose name matches are
    appended to ``found`` in the same walk (the post-processor's metadata files). With
    ``tighten``, every item (``tree`` included) loses group and world write on the way
    (``storage.permissions.tighten``). With ``changes``, what the content manifest
    needs is recorded there (``Changes``): every regular file that is not kept, and every
    entry of ``previous`` that is not."""
    st = Stats()
    if tighten:
        tighten_item(str(tree), os.lstat(tree))
    try:
        same_fs = previous is not None and os.lstat(previous).st_dev == os.lstat(tree).st_dev
    except FileNotFoundError:
        same_fs = False
    since = changes.since_ns if changes is not None else 0
    gone = changes.gone if changes is not None else None
    kept = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        prev = _prev_entries(previous, rel)
        base = f"{rel}/" if rel else ""
        with os.scandir(tree / rel if rel else tree) as it:
            for e in it:
                s = e.stat(follow_symlinks=False)
                if tighten:
                    tighten_item(e.path, s)
                mode = s.st_mode
                was = prev.pop(e.name, None)
                if stat.S_ISDIR(mode):
                    st.dirs += 1
                    stack.append(base + e.name)
                    if was is not None and was >= 0 and gone is not None:
                        gone.append(base + e.name)  # a file there before
                    continue
                if match is not None and found is not None and match.match(e.name):
                    found.append(base + e.name)
                if stat.S_ISREG(mode):
                    st.files += 1
                    st.bytes += s.st_size
                    if was == s.st_ino:
                        st.linked_files += 1
                        if same_fs or s.st_ctime_ns < since:
                            kept += 1
                            continue
                    else:
                        st.new_files += 1
                        st.new_bytes += s.st_size
                    if changes is not None:
                        changes.add(base + e.name, s)
                        if was is not None and was < 0:  # a directory there before
                            changes.gone.append(base + e.name + "/")
                    continue  # a file there before: the new record replaces its own
                if stat.S_ISLNK(mode):
                    st.symlinks += 1
                else:
                    st.others += 1
                if was is not None and gone is not None:
                    gone.append(base + e.name + ("/" if was < 0 else ""))
        if prev and gone is not None:
            gone.extend(base + name + ("/" if was < 0 else "") for name, was in prev.items())
    if changes is not None:
        changes.files, changes.kept, changes.same_fs = st.files, kept, same_fs
    return st


def write_facts(path: Path, facts: dict[str, object]) -> None:
    """Write per-snapshot facts as ``user.xsbackup.<name>`` xattrs (JSON for non-strings),
    after removing every other ``user.xsbackup.*`` xattr of ``path``: none is ours."""
    encoded = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in
               facts.items()}
    for name in get_xattrs(path):
        if name not in encoded:
            os.removexattr(path, XATTR_PREFIX + name, follow_symlinks=False)
    set_xattrs(path, encoded)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_facts(path: Path) -> dict[str, object]:
    """The facts (``FACT_KEYS``) of the snapshot directory ``path``."""
    out: dict[str, object] = {}
    for k, v in get_xattrs(path).items():
        if k not in FACT_KEYS:
            continue
        try:
            out[k] = orjson.loads(v) if v[:1] in ("{", "[") or v.isdigit() else v
        except orjson.JSONDecodeError:
            out[k] = v
    return out
