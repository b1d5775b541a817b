"""``storage.clonetree``: a reflink copy frozen as it is made, on a loop-mounted XFS
image (``tests.backends``; skipped with the reason without root or loop devices)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.backends import shared_mount
from xsbackup.storage import reflink
from xsbackup.storage.clonetree import Unsupported, clone_tree
from xsbackup.storage.permissions import STAT_XATTR

pytestmark = pytest.mark.integration


@pytest.fixture
def xfs(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    top = shared_mount(request, "reflink") / f"clone-{tmp_path.name}"
    top.mkdir()
    return top


def tree(top: Path) -> Path:
    src = top / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "loose.txt").write_text("loose\n")
    os.chmod(src / "loose.txt", 0o666)  # noqa: S103 - a client's loose mode
    (src / "kept.txt").write_text("kept\n")
    os.setxattr(src / "kept.txt", STAT_XATTR, b"100600 0,0 1000:1000")
    (src / "empty").write_bytes(b"")
    (src / "d" / "e" / "big.bin").write_bytes(os.urandom(200_000))
    os.link(src / "d" / "e" / "big.bin", src / "d" / "twin.bin")
    os.symlink("kept.txt", src / "link")
    (src / "weird\nname").write_text("x")
    os.chmod(src / "d", 0o750)  # noqa: S103
    for i, p in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i),
                 follow_symlinks=False)
    return src


def test_copy_keeps_everything_but_write_bits_and_freezes(xfs: Path) -> None:
    src = tree(xfs)
    dst = xfs / "dst"
    assert clone_tree(str(src), str(dst)) == 5  # the twin is a link
    for p in [src, *src.rglob("*")]:
        q = dst / p.relative_to(src)
        a, b = p.lstat(), q.lstat()
        assert a.st_mtime_ns == b.st_mtime_ns, p
        if stat.S_ISREG(a.st_mode):
            assert q.read_bytes() == p.read_bytes()
            assert stat.S_IMODE(b.st_mode) == stat.S_IMODE(a.st_mode) & ~0o222
            assert b.st_ino != a.st_ino
        else:
            assert b.st_mode == a.st_mode, p
    assert os.readlink(dst / "link") == "kept.txt"
    # The client's mode is recorded where the stored one stops saying it; a record
    # already there is kept as it was.
    assert os.getxattr(dst / "loose.txt", STAT_XATTR) == b"100666 0,0 0:0"
    assert os.getxattr(dst / "kept.txt", STAT_XATTR) == b"100600 0,0 1000:1000"
    assert (dst / "d" / "twin.bin").stat().st_ino == (dst / "d" / "e" / "big.bin").stat().st_ino
    for name in ("loose.txt", "d/twin.bin"):
        with pytest.raises(PermissionError):  # immutable, even for root
            (dst / name).open("ab").close()
    # The source is untouched.
    assert stat.S_IMODE((src / "loose.txt").stat().st_mode) == 0o666
    (src / "loose.txt").write_text("changed\n")
    assert (dst / "loose.txt").read_text() == "loose\n"
    reflink.set_immutable_tree(str(dst), False)


def test_a_device_node_is_unsupported_and_the_backend_falls_back_to_cp(xfs: Path) -> None:
    src = tree(xfs)
    subprocess.run(["mkfifo", str(src / "d" / "fifo")], check=True)
    with pytest.raises(Unsupported):
        clone_tree(str(src), str(xfs / "dst"))
    reflink.set_immutable_tree(str(xfs / "dst"), False)
    backend = reflink.ReflinkBackend.__new__(reflink.ReflinkBackend)
    backend._copy_tree(src, xfs / "copy")
    assert stat.S_ISFIFO((xfs / "copy" / "d" / "fifo").lstat().st_mode)
    assert os.getxattr(xfs / "copy", reflink.FROZEN) == b"1"
    with pytest.raises(PermissionError):
        (xfs / "copy" / "loose.txt").open("ab").close()
    reflink.set_immutable_tree(str(xfs / "copy"), False)
