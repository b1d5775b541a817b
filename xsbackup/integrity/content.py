"""The content digest of a stored file: the manifest's where it holds for this inode,
else the file read (``restore.access`` flags: nothing followed). ``snapshots.manifest``
is imported where a file is hashed: ``diff``'s walk (a short command) rarely needs it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

from xsbackup.restore.access import CHUNK, O_DIR, O_FILE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xsbackup.snapshots import manifest


def read_digest(name: str, dir_fd: int | None) -> tuple[str, int]:
    """(hex BLAKE2b-256, bytes read) of the stored file ``name`` below ``dir_fd``
    (``digests.digest_at``: never following a symlink, no atime written)."""
    from xsbackup.snapshots import digests  # here: hashlib and threads, not for diff's walk

    return digests.digest_at(name, dir_fd)


def digest(path: str, name: str, dir_fd: int | None, st: os.stat_result,
           recorded: dict[str, manifest.Record]) -> str:
    """The digest of the file at ``path`` (``name`` below ``dir_fd``, lstat ``st``): the
    manifest's record when it is of this very inode, else read."""
    rec = recorded.get(path)
    if rec is not None and rec.inode == st.st_ino:
        return rec.digest
    return read_digest(name, dir_fd)[0]


def same_bytes(name: str, dir_a: int | None, dir_b: int | None, size: int) -> bool:
    """Whether the stored regular files ``name`` below ``dir_a`` and ``dir_b``, both
    ``size`` bytes by their lstat, hold the same bytes (read side by side in pieces of
    that size, stopping at the first difference; a regular file's reads ignore the
    O_NONBLOCK it is opened with)."""
    fa = os.open(name, O_FILE, dir_fd=dir_a)
    try:
        fb = os.open(name, O_FILE, dir_fd=dir_b)
        try:
            step = min(size + 1, CHUNK)
            while True:
                a, b = os.read(fa, step), os.read(fb, step)
                if a != b:
                    return False
                if not a:
                    return True
        finally:
            os.close(fb)
    finally:
        os.close(fa)


class StoredFile(NamedTuple):
    path: str        # below the snapshot
    name: str        # below dir_fd
    dir_fd: int      # valid while the walk is in its directory
    entry: os.DirEntry[str]

    @property
    def inode(self) -> int:
        return self.entry.inode()  # readdir's: no stat

    @property
    def st(self) -> os.stat_result:
        """The file's lstat (one ``fstatat`` the first time; valid in its directory)."""
        return self.entry.stat(follow_symlinks=False)


def stored_dirs(dir_fd: int, prefix: str = "") -> Iterator[tuple[str, int,
                                                                list[os.DirEntry[str]]]]:
    """Each directory below the directory ``dir_fd`` (itself first) as (its path below
    it with a trailing ``/``, or ``prefix``; its descriptor, valid until the next step;
    its regular files on disk). Types come from readdir (a ``stat`` only where the
    filesystem does not give them). Directories are entered relative to their parent's
    descriptor with O_NOFOLLOW; nothing else is opened."""
    return _walk(dir_fd, prefix, _files)


def stored_inodes(dir_fd: int, prefix: str = "") -> Iterator[tuple[str, int,
                                                                  dict[str, int]]]:
    """``stored_dirs`` with each directory's regular files as {name: readdir inode}."""
    return _walk(dir_fd, prefix, _inodes)


Files = TypeVar("Files", list[os.DirEntry[str]], dict[str, int])


def _files(entries: list[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
    return [e for e in entries if e.is_file(follow_symlinks=False)]


def _inodes(entries: list[os.DirEntry[str]]) -> dict[str, int]:
    return {e.name: e.inode() for e in entries if e.is_file(follow_symlinks=False)}


def _walk(dir_fd: int, prefix: str, pick: Callable[[list[os.DirEntry[str]]], Files]
          ) -> Iterator[tuple[str, int, Files]]:
    with os.scandir(dir_fd) as it:
        entries = list(it)
    try:  # in C, entry by entry; a stat only where readdir gave no type
        files = pick(entries)
        dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)] \
            if len(files) < len(entries) else []
    except FileNotFoundError:  # such an entry went away meanwhile: skip it
        kept, dirs = _kinds(entries)
        files = pick(kept)
    yield prefix, dir_fd, files
    for name in dirs:
        try:
            sub = os.open(name, O_DIR, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            yield from _walk(sub, f"{prefix}{name}/", pick)
        finally:
            os.close(sub)


def open_stored_dir(snap_fd: int, prefix: str) -> int:
    """The directory ``prefix`` (``stored_dirs``' form: ``""`` or ``a/b/``) below the
    open snapshot ``snap_fd``, entered as ``stored_dirs`` does (one component at a time,
    O_NOFOLLOW); the caller closes it. OSError if it cannot be."""
    fd = os.dup(snap_fd)
    try:
        for name in prefix.split("/")[:-1]:
            sub = os.open(name, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kinds(entries: list[os.DirEntry[str]]) -> tuple[list[os.DirEntry[str]], list[str]]:
    """(regular files, directory names) of ``entries``, skipping one that is gone."""
    files, dirs = [], []
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False):
                files.append(e)
            elif e.is_dir(follow_symlinks=False):
                dirs.append(e.name)
        except FileNotFoundError:
            continue
    return files, dirs


def stored_files(dir_fd: int, prefix: str = "") -> Iterator[StoredFile]:
    """Every regular file on disk below the directory ``dir_fd``, in no particular order
    (``stored_dirs``): ``restore.archive.walk`` without the fake-super records (``check``
    compares stored bytes, so it needs no client's view)."""
    for pre, fd, files in stored_dirs(dir_fd, prefix):
        for e in files:
            yield StoredFile(pre + e.name, e.name, fd, e)
