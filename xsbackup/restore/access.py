"""Safe access to stored snapshots: the one place that opens their files and reads what
``rsync --fake-super`` recorded about them.

A snapshot holds what ``rsync --fake-super`` wrote: real files and directories with safe
permissions, and, where the client's attributes differ from the stored ones, the
``user.rsync.%stat`` xattr, written by rsync as ``"%o %d,%d %d:%d"``: the mode in octal,
the device's major,minor and uid:gid. A client's symlink is a *regular file* holding the
link target, recorded with mode ``120777``; a device or fifo is an empty file recorded
with its own mode. The tree is the client's to shape, so nothing in it is ever followed:

* every component is opened relative to a directory descriptor with ``O_NOFOLLOW``
  (``O_DIRECTORY`` for directories), so a real symlink is refused, never followed;
* a directory recorded as a symlink is not entered, and a file's content is served only
  where it is the client's regular file (``is_client_file``);
* a requested sub-path may not contain ``..`` or NUL, nor start with ``/``;
* a reader holds a shared flock on the snapshot directory (``OpenSnapshot``), so prune
  skips it; an entry of ``snapshots/`` that is a symlink is not a snapshot.

Two families of openers share the flags: ``open_dir`` / ``open_file`` raise the user-facing
refusals (PathNotFound, PathRefused) for a path a user asked for, while ``try_open_dir`` /
``try_open_file`` return None when the thing is simply not there as the kind wanted, for
readers (the Journal) to whom an absent file is ordinary.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from typing import NamedTuple

from xsbackup.errors import LockBusy, PathNotFound, PathRefused, SnapshotNotFound
from xsbackup.locking import lock_directory
from xsbackup.store import Store, check_snapshot_id

FAKE_SUPER = "user.rsync.%stat"
CHUNK = 1 << 20  # stored files are copied in pieces of this size
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Errors that mean "not there as the kind of thing wanted": missing, a real symlink refused
# by O_NOFOLLOW (ELOOP, or EMLINK on some systems), a file where a directory was expected,
# or a socket. Anything else (EACCES, EIO) is a server problem and propagates.
ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EMLINK, errno.ENXIO})
# The file has no record: rsync wrote none (the stored attributes are the client's).
_NO_RECORD = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})
_RECORD = re.compile(rb"([0-7]{1,7}) ([0-9]{1,10}),([0-9]{1,10}) ([0-9]{1,10}):([0-9]{1,10})")


# ---- the fake-super record ---------------------------------------------------------------


class FakeStat(NamedTuple):
    """A stored item's attributes as the client sent them."""

    mode: int  # file type and permissions: S_ISLNK for a symlink stored as a file
    uid: int
    gid: int
    major: int  # device numbers, 0 unless a device
    minor: int

    @classmethod
    def stored(cls, st: os.stat_result) -> FakeStat:
        """The attributes on the server's disk, for an item rsync recorded nothing about."""
        return cls(st.st_mode, st.st_uid, st.st_gid, 0, 0)


def parse_fake_super(raw: bytes) -> FakeStat | None:
    """The ``user.rsync.%stat`` value ``b"<octal mode> <major>,<minor> <uid>:<gid>"``, or
    None if it is anything else (rsync itself refuses such a record as corrupt)."""
    match = _RECORD.fullmatch(raw)
    if match is None:
        return None
    mode, major, minor, uid, gid = match.groups()
    return FakeStat(int(mode, 8), int(uid), int(gid), int(major), int(minor))


def _record(target: int | str) -> bytes | None:
    """The raw record of an open descriptor, or of a path (never following its last
    component); None if there is none."""
    try:
        if isinstance(target, int):
            return os.getxattr(target, FAKE_SUPER)
        return os.getxattr(target, FAKE_SUPER, follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_RECORD:
            return None
        raise


def _client_view(raw: bytes | None, st: os.stat_result) -> FakeStat:
    found = parse_fake_super(raw) if raw is not None else None
    return found if found is not None else FakeStat.stored(st)


def fake_stat(fd: int, st: os.stat_result) -> FakeStat:
    """The client's attributes of the open item whose ``fstat`` is ``st``: rsync's record,
    or the stored attributes where it recorded nothing usable."""
    return _client_view(_record(fd), st)


def fake_stat_at(dir_fd: int, name: str, st: os.stat_result) -> FakeStat:
    """``fake_stat`` of ``name`` below ``dir_fd`` without opening it: one lgetxattr through
    the directory's descriptor, and the last component is never followed."""
    return _client_view(_record(f"/proc/self/fd/{dir_fd}/{name}"), st)


def is_client_file(fd: int, st: os.stat_result) -> bool:
    """True if the open item holds a client's regular file: it is a regular file, and rsync
    recorded nothing or a regular file. A symlink, device, fifo or socket of the client
    (or a corrupt record) is not: its stored bytes are not the client's file content."""
    if not stat.S_ISREG(st.st_mode):
        return False
    raw = _record(fd)
    if raw is None:
        return True
    found = parse_fake_super(raw)
    return found is not None and stat.S_ISREG(found.mode)


def _is_fake_symlink(fd: int) -> bool:
    raw = _record(fd)
    found = parse_fake_super(raw) if raw is not None else None
    return found is not None and stat.S_ISLNK(found.mode)


# ---- a snapshot, held open ---------------------------------------------------------------


class OpenSnapshot:
    """A snapshot directory held open with a shared flock (readers block pruning)."""

    def __init__(self, store: Store, client: str, volume: str, sid: str) -> None:
        path = store.snapshots_dir(client, volume) / check_snapshot_id(sid)
        try:
            self.fd = lock_directory(path, shared=True)
        except LockBusy:
            raise SnapshotNotFound(f"snapshot {sid} of {volume} is being pruned; "
                                   "choose another") from None
        except OSError as e:  # missing, or a symlink or file named like a snapshot
            if e.errno in ABSENT:
                raise SnapshotNotFound(f"snapshot {sid} of {volume} does not exist") from None
            raise
        self.client, self.volume, self.sid = client, volume, sid

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> OpenSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- paths a user asked for: refusals ----------------------------------------------------


def split_path(path: str) -> list[str]:
    """The components of a requested path below a snapshot; PathRefused if it could leave."""
    if "\0" in path:
        raise PathRefused("path contains a NUL byte")
    if path.startswith("/"):
        raise PathRefused(f"absolute path {path[:80]!r} is not allowed")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"path {path[:80]!r} contains '..'")
    return parts


def _open_dir_in(dir_fd: int, name: str) -> int:
    try:
        fd = os.open(name, O_DIR, dir_fd=dir_fd)
    except FileNotFoundError:
        raise PathNotFound(f"no such path: {name[:80]!r}") from None
    except OSError:  # ELOOP (a real symlink) or ENOTDIR (a file, or a fake symlink)
        raise PathRefused(f"{name[:80]!r} is not a directory of the snapshot") from None
    try:
        if _is_fake_symlink(fd):
            raise PathRefused(f"{name[:80]!r} is a symlink")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir(snap_fd: int, parts: list[str]) -> int:
    """Open the directory ``parts`` below the snapshot; the caller closes the result."""
    fd = os.dup(snap_fd)
    try:
        for name in parts:
            nfd = _open_dir_in(fd, name)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(snap_fd: int, path: str) -> tuple[int, os.stat_result, int]:
    """Open a client's regular file below the snapshot, blocking: (fd, stat, client's mode)."""
    parts = split_path(path)
    if not parts:
        raise PathRefused("a file path is required")
    dir_fd = open_dir(snap_fd, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], O_FILE, dir_fd=dir_fd)
        except FileNotFoundError:
            raise PathNotFound(f"no such file: {path[:80]!r}") from None
        except OSError:
            raise PathRefused(f"{path[:80]!r} is not a regular file") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not is_client_file(fd, st):
            raise PathRefused(f"{path[:80]!r} is not a regular file (a symlink or a device)")
        os.set_blocking(fd, True)
        return fd, st, fake_stat(fd, st).mode
    except BaseException:
        os.close(fd)
        raise


# ---- readers to whom absence is ordinary: None ------------------------------------------


def _try_open(name: str, dir_fd: int, flags: int, wanted: Callable[[int], bool]) -> int | None:
    """``name`` below ``dir_fd`` opened with ``flags`` if ``wanted(fd)``, else None."""
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in ABSENT:
            return None
        raise
    try:
        if wanted(fd):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def try_open_dir(name: str, dir_fd: int) -> int | None:
    """``name`` below ``dir_fd`` as a directory, or None if it is not one (a real or fake
    symlink included)."""
    return _try_open(name, dir_fd, O_DIR, lambda fd: not _is_fake_symlink(fd))


def try_open_file(name: str, dir_fd: int) -> int | None:
    """A descriptor of the client's regular file ``name`` below ``dir_fd``
    (``is_client_file``), or None."""
    return _try_open(name, dir_fd, O_FILE, lambda fd: is_client_file(fd, os.fstat(fd)))


def file_size(name: str, dir_fd: int | None) -> int | None:
    """The size of the client's regular file ``name``; None if absent (or dir_fd is)."""
    if dir_fd is None:
        return None
    fd = try_open_file(name, dir_fd)
    if fd is None:
        return None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_fd(fd: int, cap: int) -> bytes | None:
    """The rest of the file, or None if it is longer than ``cap`` bytes."""
    if os.fstat(fd).st_size > cap:
        return None
    parts: list[bytes] = []
    got = 0
    while got <= cap:
        part = os.read(fd, min(CHUNK, cap + 1 - got))
        if not part:
            return b"".join(parts)
        parts.append(part)
        got += len(part)
    return None  # it grew past the cap while we read


def read_capped(name: str, dir_fd: int, cap: int) -> bytes | None:
    """The whole file, or None if it is absent or longer than ``cap`` bytes."""
    fd = try_open_file(name, dir_fd)
    if fd is None:
        return None
    try:
        return read_fd(fd, cap)
    finally:
        os.close(fd)


@contextlib.contextmanager
def scan(dir_fd: int | None) -> Iterator[Iterator[os.DirEntry[str]]]:
    """List ``dir_fd`` (nothing if None) through a fresh descriptor: its directory offset
    is ours alone, whoever else lists the same directory (threads of the HTTP server)."""
    if dir_fd is None:
        yield iter(())
        return
    fd = os.open(".", O_DIR, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            yield it
    finally:
        os.close(fd)


@contextlib.contextmanager
def subdir(name: str, dir_fd: int | None) -> Iterator[int | None]:
    """``name`` opened as a directory below ``dir_fd``; None if absent (or dir_fd is)."""
    fd = None if dir_fd is None else try_open_dir(name, dir_fd)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def is_dir_at(name: str, dir_fd: int | None) -> bool:
    """Whether ``name`` below ``dir_fd`` is a real directory (lstat: never followed)."""
    if dir_fd is None:
        return False
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError as e:
        if e.errno in ABSENT:
            return False
        raise
