"""Loop-mounted btrfs and XFS (``-m reflink=1``) filesystems for the storage-backend
tests, made once per session on sparse image files under /tmp. Without root, loop
devices or the mkfs tools, the tests that need them are skipped with the reason."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BACKENDS = ("hardlink", "btrfs", "reflink")
IMAGE_BYTES = 600 << 20
_MKFS = {"btrfs": ["mkfs.btrfs", "-q"], "reflink": ["mkfs.xfs", "-q", "-m", "reflink=1"]}
_mounts: dict[str, Path | str] = {}  # backend -> mount point, or why there is none


def loop_mount(kind: str, size: int = IMAGE_BYTES) -> tuple[Path, Path] | str:
    """(image, mount point) of a new loop-mounted filesystem for backend ``kind``, or why
    one cannot be had here."""
    if os.geteuid() != 0:
        return "loop-mounting a filesystem needs root (CI runs as root)"
    mkfs = _MKFS[kind]
    if shutil.which(mkfs[0]) is None:
        return f"{mkfs[0]} is not installed (apt-get install btrfs-progs xfsprogs)"
    base = Path(tempfile.mkdtemp(prefix=f"xsb-{kind}-", dir="/tmp"))
    image, mnt = base / "image", base / "mnt"
    mnt.mkdir()
    with image.open("wb") as fh:
        fh.truncate(size)
    r = subprocess.run([*mkfs, str(image)], capture_output=True, text=True)
    if r.returncode == 0:
        r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True,
                           text=True)
    if r.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        return f"cannot make a {kind} loop filesystem here: {r.stderr.strip()}"
    return image, mnt


def unmount(image: Path, mnt: Path) -> None:
    subprocess.run(["umount", str(mnt)], capture_output=True)
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    shutil.rmtree(image.parent, ignore_errors=True)


def shared_mount(request: pytest.FixtureRequest, kind: str) -> Path:
    """The session's filesystem for backend ``kind``; skips the test when there is none."""
    if kind not in _mounts:
        got = loop_mount(kind)
        if isinstance(got, str):
            _mounts[kind] = got
        else:
            image, mnt = got
            _mounts[kind] = mnt
            request.session.addfinalizer(lambda: unmount(image, mnt))
    where = _mounts[kind]
    if isinstance(where, str):
        print(f"skipped: {where}")
        pytest.skip(where)
    return where


def backend_root(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Path:
    """A new state-root path on the session's filesystem for ``kind``."""
    return shared_mount(request, kind) / f"{tmp_path.name}-{secrets.token_hex(3)}" / "state"
