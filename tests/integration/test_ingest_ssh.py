"""Ingest end to end: real rsync through real OpenSSH sshd and the forced command."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import Server, Sshd, tree_state
from xsbackup.snapshots import postprocess

pytestmark = pytest.mark.integration
SN = "SHF00112233"


def make_tree(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    (base / "same.txt").write_bytes(b"unchanged\n" * 100)
    (base / "edit.txt").write_bytes(b"version 1\n")
    (base / "chmod.txt").write_bytes(b"mode changes only\n")
    (base / "gone.txt").write_bytes(b"to be deleted\n")
    (base / "sub").mkdir(exist_ok=True)
    (base / "sub" / "deep.bin").write_bytes(os.urandom(4096))
    os.chmod(base / "chmod.txt", 0o644)
    return base


def promote_all(server: Server) -> None:
    postprocess.run_once(server.ctx())


def snapshot_dirs(server: Server, volume: str) -> list[Path]:
    return [server.store.snapshots_dir(SN, volume) / i
            for i in server.store.snapshot_ids(SN, volume)]


def same_content(a: Path, b: Path) -> None:
    names_a = sorted(str(p.relative_to(a)) for p in a.rglob("*"))
    names_b = sorted(str(p.relative_to(b)) for p in b.rglob("*"))
    assert names_a == names_b
    for n in names_a:
        pa, pb = a / n, b / n
        if pa.is_file() and not pa.is_symlink():
            assert pa.read_bytes() == pb.read_bytes(), n


def test_second_backup_links_unchanged_and_keeps_history(server: Server, sshd: Sshd,
                                                         tmp_path: Path) -> None:
    key = server.add_client(SN)
    src = make_tree(tmp_path / "src")
    r = sshd.rsync(key, "-a", "--delete", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    promote_all(server)
    (first,) = snapshot_dirs(server, "documents")
    before = tree_state(first)

    (src / "edit.txt").write_bytes(b"version 2, longer\n")
    os.chmod(src / "chmod.txt", 0o600)
    (src / "gone.txt").unlink()
    (src / "new.txt").write_bytes(b"brand new\n")
    r = sshd.rsync(key, "-a", "--delete", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    promote_all(server)
    first_again, second = snapshot_dirs(server, "documents")
    assert first_again == first
    assert tree_state(first) == before  # bytes, modes, mtimes, inodes of history untouched
    same_content(src, second)
    ino = lambda p: p.stat().st_ino  # noqa: E731
    assert ino(second / "same.txt") == ino(first / "same.txt")
    assert ino(second / "sub/deep.bin") == ino(first / "sub/deep.bin")
    assert ino(second / "chmod.txt") != ino(first / "chmod.txt")
    assert ino(second / "edit.txt") != ino(first / "edit.txt")
    assert not (second / "gone.txt").exists()
    assert (second / "new.txt").read_bytes() == b"brand new\n"
    assert os.readlink(server.store.volume_dir(SN, "documents") / "latest") == \
        f"snapshots/{second.name}"


def test_fidelity_symlink_and_setuid_stored_inert(server: Server, sshd: Sshd,
                                                  tmp_path: Path) -> None:
    key = server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "passwd-link").symlink_to("/etc/passwd")
    (src / "suid").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "suid", 0o4755)  # noqa: S103 - the fidelity case itself
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    promote_all(server)
    (snap,) = snapshot_dirs(server, "documents")
    stored = snap / "suid"
    assert stat.S_IMODE(stored.lstat().st_mode) & 0o7000 == 0  # no setuid bit on the server
    # --fake-super stores the symlink as a plain file holding its target, with the real
    # mode in an xattr: nothing on the server can follow it.
    link = snap / "passwd-link"
    assert not link.is_symlink()
    assert link.read_bytes() == b"/etc/passwd"
    assert os.getxattr(link, "user.rsync.%stat").startswith(b"120777 ")
    assert stat.S_IMODE(stored.lstat().st_mode) == 0o755

    out = tmp_path / "restored"
    r = sshd.rsync(key, "-a", "127.0.0.1:documents/latest/", f"{out}/")
    assert r.returncode == 0, r.stderr
    assert os.readlink(out / "passwd-link") == "/etc/passwd"
    if os.geteuid() == 0:
        assert stat.S_IMODE((out / "suid").lstat().st_mode) == 0o4755
    assert (out / "suid").read_bytes() == (src / "suid").read_bytes()
