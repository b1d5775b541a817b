"""Safe snapshot access: the fake-super record, and opens that never follow anything.

Trees are real files in tmp_path with real ``user.rsync.%stat`` xattrs, the way
``rsync --fake-super`` stores them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from xsbackup.errors import LockBusy, PathNotFound, PathRefused, SnapshotNotFound
from xsbackup.locking import lock_directory
from xsbackup.restore import access
from xsbackup.restore.access import FakeStat, parse_fake_super
from xsbackup.store import Store

FAKE = "user.rsync.%stat"
SID = "2026-01-02T030405Z"


@pytest.mark.parametrize(("raw", "expected"), [
    (b"100644 0,0 1000:1000", FakeStat(0o100644, 1000, 1000, 0, 0)),
    (b"104755 0,0 0:0", FakeStat(stat.S_IFREG | stat.S_ISUID | 0o755, 0, 0, 0, 0)),
    (b"120777 0,0 1000:100", FakeStat(stat.S_IFLNK | 0o777, 1000, 100, 0, 0)),
    (b"40700 0,0 0:0", FakeStat(stat.S_IFDIR | 0o700, 0, 0, 0, 0)),
    (b"20620 4,1 0:5", FakeStat(stat.S_IFCHR | 0o620, 0, 5, 4, 1)),
    (b"60660 8,17 0:6", FakeStat(stat.S_IFBLK | 0o660, 0, 6, 8, 17)),
    (b"10644 0,0 1:1", FakeStat(stat.S_IFIFO | 0o644, 1, 1, 0, 0)),
    (b"140755 0,0 4294967295:4294967295",
     FakeStat(stat.S_IFSOCK | 0o755, 4294967295, 4294967295, 0, 0)),
])
def test_parse_records(raw: bytes, expected: FakeStat) -> None:
    assert parse_fake_super(raw) == expected


@pytest.mark.parametrize("raw", [
    b"", b"garbage", b"100644", b"100644 0,0", b"100644 0,0 1000", b"100644 0,0 1000:",
    b"100644 0,0 1000:1000 extra", b"100644 0,0 1000:1000\n", b"100644  0,0 1000:1000",
    b"100648 0,0 0:0", b"-100644 0,0 0:0", b"100644 -1,0 0:0", b"100644 0,0 -1:0",
    b"1_00644 0,0 0:0", b"+100644 0,0 0:0", b"100644 0,0 0:0\0", b"\xff\xfe 0,0 0:0",
    b"100644 0,0 " + b"9" * 5000 + b":0", b"0o100644 0,0 0:0",
])
def test_corrupt_records_are_none(raw: bytes) -> None:
    assert parse_fake_super(raw) is None


def _fd(path: Path, flags: int = os.O_RDONLY) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


@pytest.mark.parametrize(("xattr", "mode", "client_file"), [
    (None, stat.S_IFREG | 0o600, True),
    (b"100644 0,0 1000:1000", stat.S_IFREG | 0o644, True),
    (b"104755 0,0 0:0", stat.S_IFREG | 0o4755, True),
    (b"120777 0,0 0:0", stat.S_IFLNK | 0o777, False),
    (b"20644 8,1 0:0", stat.S_IFCHR | 0o644, False),
    (b"10644 0,0 0:0", stat.S_IFIFO | 0o644, False),
    (b"garbage", stat.S_IFREG | 0o600, False),  # stored attributes; content not served
    (b"", stat.S_IFREG | 0o600, False),
])
def test_stored_files(tmp_path: Path, xattr: bytes | None, mode: int,
                      client_file: bool) -> None:
    """fake_stat and fake_stat_at agree; a corrupt record leaves the stored attributes."""
    path = tmp_path / "f\udcff"  # a name that is not UTF-8
    path.write_bytes(b"/etc/passwd")
    path.chmod(0o600)
    if xattr is not None:
        os.setxattr(path, FAKE, xattr)
    fd = _fd(path)
    dir_fd = _fd(tmp_path, os.O_DIRECTORY)
    try:
        st = os.fstat(fd)
        assert access.fake_stat(fd, st).mode == mode
        assert access.fake_stat_at(dir_fd, path.name, st) == access.fake_stat(fd, st)
        assert access.is_client_file(fd, st) is client_file
        assert (access.try_open_file(path.name, dir_fd) is not None) is client_file
        assert (access.file_size(path.name, dir_fd) == 11) is client_file
    finally:
        os.close(fd)
        os.close(dir_fd)


def test_stored_attributes_without_a_record(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"x")
    fd = _fd(path)
    try:
        st = os.fstat(fd)
        assert access.fake_stat(fd, st) == FakeStat(st.st_mode, st.st_uid, st.st_gid, 0, 0)
    finally:
        os.close(fd)


# ---- planted symlinks, real and fake --------------------------------------------------


@pytest.fixture
def snap(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A snapshot with a real directory and file, and symlinks planted next to them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"TOP-SECRET")
    root = tmp_path / "snap"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"content")
    (root / "link-dir").symlink_to(outside)
    (root / "link-file").symlink_to(outside / "secret")
    (root / "dir" / "link-file").symlink_to(outside / "secret")
    fake_dir = root / "fake-dir"  # a directory that rsync recorded as a symlink
    fake_dir.mkdir()
    (fake_dir / "file").write_bytes(b"inside a fake symlink")
    os.setxattr(fake_dir, FAKE, b"120777 0,0 0:0")
    fake_link = root / "fake-link"  # a client's symlink, as rsync stores it
    fake_link.write_bytes(str(outside / "secret").encode())
    os.setxattr(fake_link, FAKE, b"120777 0,0 0:0")
    fd = _fd(root, os.O_DIRECTORY)
    try:
        yield root, fd
    finally:
        os.close(fd)


def test_open_file_serves_a_regular_file(snap: tuple[Path, int]) -> None:
    _, fd = snap
    file_fd, st, mode = access.open_file(fd, "dir/file")
    try:
        assert os.read(file_fd, 100) == b"content"
        assert stat.S_ISREG(mode)
        assert st.st_size == 7
    finally:
        os.close(file_fd)


@pytest.mark.parametrize(("path", "error"), [
    ("link-file", PathRefused),          # O_NOFOLLOW: ELOOP
    ("dir/link-file", PathRefused),
    ("link-dir/secret", PathRefused),    # through a real symlink
    ("fake-link", PathRefused),          # a client's symlink: its bytes are a target
    ("fake-dir/file", PathRefused),      # through a client's symlink
    ("dir", PathRefused),                # not a file
    ("missing", PathNotFound),
    ("missing/file", PathNotFound),
    ("../outside/secret", PathRefused),
    ("/etc/passwd", PathRefused),
    ("dir/\0", PathRefused),
    ("", PathRefused),
])
def test_open_file_refuses(snap: tuple[Path, int], path: str,
                           error: type[Exception]) -> None:
    _, fd = snap
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(error):
        access.open_file(fd, path)
    assert len(os.listdir("/proc/self/fd")) == before  # nothing left open


@pytest.mark.parametrize("path", ["link-dir", "fake-dir", "dir/link-file", "fake-link"])
def test_open_dir_refuses_symlinks(snap: tuple[Path, int], path: str) -> None:
    _, fd = snap
    with pytest.raises(PathRefused):
        access.open_dir(fd, access.split_path(path))


def test_open_dir_enters_a_real_directory(snap: tuple[Path, int]) -> None:
    _, fd = snap
    dir_fd = access.open_dir(fd, access.split_path("./dir/"))
    try:
        assert sorted(os.listdir(dir_fd)) == ["file", "link-file"]
    finally:
        os.close(dir_fd)


@pytest.mark.parametrize("name", ["link-dir", "fake-dir", "link-file", "fake-link",
                                  "missing"])
def test_try_openers_treat_symlinks_as_absent(snap: tuple[Path, int], name: str) -> None:
    _, fd = snap
    assert access.try_open_dir(name, fd) is None
    assert access.try_open_file(name, fd) is None
    assert access.read_capped(name, fd, 1 << 20) is None
    assert access.is_dir_at(name, fd) is (name == "fake-dir")  # lstat: a real directory


def test_read_capped(snap: tuple[Path, int]) -> None:
    root, fd = snap
    dir_fd = access.try_open_dir("dir", fd)
    assert dir_fd is not None
    try:
        assert access.read_capped("file", dir_fd, 7) == b"content"
        assert access.read_capped("file", dir_fd, 6) is None
        with access.scan(dir_fd) as it:
            assert sorted(e.name for e in it) == ["file", "link-file"]
    finally:
        os.close(dir_fd)
    assert (root / "dir" / "file").read_bytes() == b"content"  # nothing written


# ---- the snapshot itself ------------------------------------------------------------------


def test_open_snapshot_never_follows_a_symlinked_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    snaps = store.snapshots_dir("SN1", "documents")
    snaps.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (snaps / SID).symlink_to(elsewhere)
    with pytest.raises(SnapshotNotFound, match="does not exist"):
        access.OpenSnapshot(store, "SN1", "documents", SID)
    (snaps / SID).unlink()
    (snaps / SID).write_bytes(b"")  # a file named like a snapshot
    with pytest.raises(SnapshotNotFound, match="does not exist"):
        access.OpenSnapshot(store, "SN1", "documents", SID)


def test_open_snapshot_holds_a_shared_lock(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    path = store.snapshots_dir("SN1", "documents") / SID
    path.mkdir(parents=True)
    with access.OpenSnapshot(store, "SN1", "documents", SID) as snap:
        assert stat.S_ISDIR(os.fstat(snap.fd).st_mode)
        with pytest.raises(LockBusy):
            lock_directory(path, shared=False)
    pruning = lock_directory(path, shared=False)  # released on exit: prune may take it
    try:
        with pytest.raises(SnapshotNotFound, match="being pruned"):
            access.OpenSnapshot(store, "SN1", "documents", SID)
    finally:
        os.close(pruning)
