"""flock-based locks under ``<root>/locks``.

* A lock file is opened with ``O_NOFOLLOW`` and never unlinked: unlinking would split
  waiters across two inodes.
* ``flock`` belongs to the open file description, so a killed process never leaves a
  stale lock, and the descriptor is close-on-exec, so an rsync child does not inherit it.
* Contention is the distinct ``LockBusy`` error; callers turn it into their own message.

We use ``fcntl.flock`` directly rather than the filelock package because we need shared
locks (readers of a snapshot), locks on directory descriptors (the snapshot itself) and
a non-blocking try over N slot files, all with the same semantics. filelock 4.x takes
only exclusive flocks (``UnixFileLock``, ``lock_descriptor``). Its ``ReadWriteLock`` is an
SQLite database, not a flock, and by default it falls back to marker files that it
unlinks (docs/design.md, section 9).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from xsbackup.errors import LockBusy

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class FileLock:
    """An exclusive or shared flock on ``path``; ``acquire`` never waits unless told."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> FileLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in _BUSY:
                raise LockBusy(f"{self.path.name} is locked by another process") from None
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        if self.fd is None:
            self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def client_lock(locks_dir: Path, client: str) -> FileLock:
    """The per-client ingest lock: held for a whole transfer and its success mark."""
    return FileLock(locks_dir / f"client-{client}.lock")


def postprocess_lock(locks_dir: Path, client: str) -> FileLock:
    """Serialises post-processing (and pruning) of one client's snapshots."""
    return FileLock(locks_dir / f"post-{client}.lock")


def take_slot(locks_dir: Path, slots: int, name: str = "slot") -> FileLock | None:
    """Take one of ``slots`` concurrency slots (``<name>-NNN.lock``) without waiting;
    None when all are taken."""
    for i in range(slots):
        lock = FileLock(locks_dir / f"{name}-{i:03d}.lock")
        try:
            return lock.acquire()
        except LockBusy:
            continue
    return None


def lock_directory(path: Path, shared: bool) -> int:
    """flock a directory itself (a snapshot being read or pruned); returns the fd."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in _BUSY:
            raise LockBusy(f"{path.name} is in use") from None
        raise
    return fd
