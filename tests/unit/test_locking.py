"""flock locks between real processes: shared and exclusive, ``LockBusy`` on contention,
waiting, lock files that are never unlinked, symlinks refused, and a lock that dies with
its holder (even when the holder's child lives on)."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xsbackup.errors import LockBusy
from xsbackup.locking import FileLock, client_lock, lock_directory, take_slot

# Holds a lock until its stdin closes. argv: path, "shared"|"exclusive", "file"|"dir",
# and optionally "child": first start a child that inherits every descriptor it may.
HOLDER = """
import subprocess, sys
from pathlib import Path
from xsbackup.locking import FileLock, lock_directory
path, mode, kind = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if kind == "dir":
    lock_directory(path, shared=mode == "shared")
else:
    FileLock(path, shared=mode == "shared").acquire()
if sys.argv[4:] == ["child"]:
    child = subprocess.Popen(["sleep", "300"], close_fds=False)
    print(child.pid, flush=True)
print("locked", flush=True)
sys.stdin.read()
"""


class Holder:
    """Another process holding a lock on ``path``."""

    def __init__(self, path: Path, mode: str = "exclusive", kind: str = "file",
                 child: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode, kind,
                                      *(["child"] if child else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        self.child_pid = int(first) if child else 0
        assert (self.proc.stdout.readline().strip() if child else first) == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "locks" / "thing.lock"


@pytest.fixture(autouse=True)
def _locks_dir(lock_path: Path) -> None:
    lock_path.parent.mkdir()


def test_shared_locks_coexist_and_exclude_an_exclusive_one(lock_path: Path) -> None:
    first = FileLock(lock_path, shared=True).acquire()
    second = FileLock(lock_path, shared=True).acquire()
    with pytest.raises(LockBusy, match=r"thing\.lock is locked by another process"):
        FileLock(lock_path).acquire()
    first.release()
    with pytest.raises(LockBusy):
        FileLock(lock_path).acquire()
    second.release()
    with FileLock(lock_path) as exclusive:
        assert exclusive.fd is not None
        with pytest.raises(LockBusy):
            FileLock(lock_path, shared=True).acquire()
    assert exclusive.fd is None
    FileLock(lock_path, shared=True).acquire().release()


def test_another_process_holding_the_lock_is_lock_busy(lock_path: Path) -> None:
    holder = Holder(lock_path)
    try:
        with pytest.raises(LockBusy) as caught:
            FileLock(lock_path).acquire()
        assert caught.value.exit_code == 11
        with pytest.raises(LockBusy):
            FileLock(lock_path, shared=True).acquire()
    finally:
        holder.release()
    FileLock(lock_path).acquire().release()


def test_a_shared_holder_elsewhere_admits_readers_only(lock_path: Path) -> None:
    holder = Holder(lock_path, "shared")
    try:
        FileLock(lock_path, shared=True).acquire().release()
        with pytest.raises(LockBusy):
            FileLock(lock_path).acquire()
    finally:
        holder.release()


def blocked_on(path: Path) -> bool:
    """Whether some flock request on ``path`` is waiting (``/proc/locks`` lists it with
    ``->``)."""
    st = path.stat()
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as fh:
        return any("->" in line and dev in line for line in fh)


def test_wait_blocks_until_the_holder_lets_go(lock_path: Path) -> None:
    holder = Holder(lock_path)
    got: list[FileLock] = []
    waiter = threading.Thread(target=lambda: got.append(FileLock(lock_path).acquire(wait=True)))
    waiter.start()
    try:
        while not blocked_on(lock_path):
            assert waiter.is_alive()
            time.sleep(0.01)
        assert got == []
    finally:
        holder.release()
    waiter.join(timeout=30)
    assert len(got) == 1
    got[0].release()


def test_the_lock_file_is_never_unlinked(lock_path: Path) -> None:
    with FileLock(lock_path):
        inode = lock_path.stat().st_ino
    assert lock_path.stat().st_ino == inode
    Holder(lock_path).release()
    assert lock_path.stat().st_ino == inode
    with client_lock(lock_path.parent, "SHF00000001"):
        pass
    assert (lock_path.parent / "client-SHF00000001.lock").is_file()
    assert (lock_path.stat().st_mode & 0o777) == 0o600


def test_a_symlinked_lock_file_is_refused(lock_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    lock_path.symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links") as caught:
        FileLock(lock_path).acquire()
    assert caught.value.errno == errno.ELOOP
    assert not target.exists()  # nothing was created through the link
    target.write_text("precious\n")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        FileLock(lock_path, shared=True).acquire()
    assert target.read_text() == "precious\n"
    real_dir = tmp_path / "snapshot"
    real_dir.mkdir()
    (tmp_path / "via-link").symlink_to(real_dir)
    with pytest.raises(OSError, match=r"Too many levels of symbolic links|Not a directory"):
        lock_directory(tmp_path / "via-link", shared=True)


def test_the_descriptor_is_close_on_exec(lock_path: Path) -> None:
    with FileLock(lock_path) as lock:
        assert lock.fd is not None
        assert fcntl.fcntl(lock.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def lock_and_release(path: Path, kind: str, shared: bool) -> None:
    if kind == "dir":
        os.close(lock_directory(path, shared=shared))
    else:
        FileLock(path, shared=shared).acquire().release()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_killed_holder_leaves_no_lock_even_if_its_child_lives(tmp_path: Path,
                                                                 kind: str) -> None:
    path = tmp_path / "snapshot" if kind == "dir" else tmp_path / "held.lock"
    if kind == "dir":
        path.mkdir()
    holder = Holder(path, "exclusive", kind, child=True)
    try:
        with pytest.raises(LockBusy):
            lock_and_release(path, kind, shared=True)
        holder.proc.kill()
        assert holder.proc.wait(timeout=30) == -signal.SIGKILL
        os.kill(holder.child_pid, 0)  # the child is still running...
        # ...and the lock is free: the child did not inherit it.
        lock_and_release(path, kind, shared=False)
    finally:
        os.kill(holder.child_pid, signal.SIGKILL)
        for stream in (holder.proc.stdin, holder.proc.stdout):
            if stream is not None:
                stream.close()


def test_directory_locks_shared_and_exclusive(tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    readers = [lock_directory(snap, shared=True) for _ in range(2)]
    with pytest.raises(LockBusy, match="snap is in use"):
        lock_directory(snap, shared=False)
    for fd in readers:
        os.close(fd)
    fd = lock_directory(snap, shared=False)
    with pytest.raises(LockBusy):
        lock_directory(snap, shared=True)
    os.close(fd)


def test_slots_are_taken_without_waiting(lock_path: Path) -> None:
    locks_dir = lock_path.parent
    taken = [take_slot(locks_dir, 3) for _ in range(3)]
    assert all(lock is not None for lock in taken)
    assert take_slot(locks_dir, 3) is None
    holder_path = locks_dir / "slot-001.lock"
    assert taken[1] is not None
    assert taken[1].path == holder_path
    taken[1].release()
    again = take_slot(locks_dir, 3)
    assert again is not None
    assert again.path == holder_path
    assert take_slot(locks_dir, 3) is None
    for lock in [*taken, again]:
        if lock is not None:
            lock.release()
    # Another process's slot counts too.
    holder = Holder(locks_dir / "slot-000.lock")
    try:
        mine = take_slot(locks_dir, 1)
        assert mine is None
    finally:
        holder.release()
