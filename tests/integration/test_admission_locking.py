"""Admission refusals, the per-client lock, parallel clients and resume, through sshd."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Server, Sshd
from xsbackup.snapshots import postprocess

pytestmark = pytest.mark.integration
SN = "SHF00112233"


def small_tree(base: Path, n: int = 3) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (base / f"f{i}.txt").write_text(f"file {i}\n")
    return base


@pytest.mark.parametrize(("config", "code", "message"), [
    ("[admission]\nmax_load = 0\n", 44, "load average"),
    ("[admission]\nslots = 0\n", 47, "transfer slots are taken"),
    ("[admission]\nmaintenance = true\n", 43, "maintenance mode"),
    ("[admission]\nmax_blocks_pct = 0\n", 45, "disk full"),
    ("[admission]\nmax_inodes_pct = 0\n", 46, "out of inodes"),
], ids=["load", "slots", "maintenance", "blocks", "inodes"])
def test_admission_refusals(server: Server, sshd: Sshd, tmp_path: Path, config: str, code: int,
                            message: str) -> None:
    key = server.add_client(SN)
    server.configure(config)
    src = small_tree(tmp_path / "src")
    # The rsync client shows the one refusal line; its own exit status is ssh's code, or
    # 12 when it noticed the closed stream before ssh's exit status arrived...
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode in (code, 12), r.stderr
    assert r.stderr.splitlines()[0].startswith("xsbackup: ")
    assert message in r.stderr.splitlines()[0]
    # ...and ssh carries the distinct exit code.
    res = sshd.ssh(key, "rsync --server -logDtpre.iLsfxCIvu . documents/")
    assert res.returncode == code
    assert len(res.stderr.strip().splitlines()) == 1
    assert message in res.stderr
    assert server.store.volumes(SN) == []


def test_maintenance_command_and_disabled_client(server: Server, sshd: Sshd,
                                                 tmp_path: Path) -> None:
    key = server.add_client(SN)
    src = small_tree(tmp_path / "src")
    assert server.cli("maintenance", "on").stdout.strip() == "maintenance on"
    res = sshd.ssh(key, "rsync --server -logDtpre.iLsfxCIvu . documents/")
    assert res.returncode == 43
    assert res.stderr.strip() == "xsbackup: server is in maintenance mode; try again later"
    server.cli("maintenance", "off")
    server.cli("clients", "disable", SN)
    res = sshd.ssh(key, "rsync --server -logDtpre.iLsfxCIvu . documents/")
    # A disabled client's key leaves authorized_keys: sshd itself refuses it.
    assert res.returncode == 255
    assert "Permission denied" in res.stderr
    res = server.xsbackup("ssh-command", "--client", SN, check=False,
                          env={**os.environ,
                               "SSH_ORIGINAL_COMMAND": "rsync --server -logDtpre.iLsfxCIvu . d/"})
    assert res.returncode == 42
    assert res.stderr.strip() == f"xsbackup: client {SN} is disabled"
    server.cli("clients", "enable", SN)
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr


def _slow_upload(sshd: Sshd, key: Path, src: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(["rsync", "-e", sshd.rsh(key), "-a", "--bwlimit=200", f"{src}/",
                             "127.0.0.1:documents/"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_second_session_of_one_client_refused_at_once(server: Server, sshd: Sshd,
                                                      tmp_path: Path) -> None:
    key = server.add_client(SN)
    src = tmp_path / "big"
    src.mkdir()
    for i in range(20):
        (src / f"blob{i:02d}").write_bytes(os.urandom(200_000))
    first = _slow_upload(sshd, key, src)
    current = server.store.volume_dir(SN, "documents") / "current"
    try:
        _wait_for(lambda: current.is_dir() and any(current.iterdir()))
        second = sshd.ssh(key, "rsync --server -logDtpre.iLsfxCIvu . documents/")
        assert second.returncode == 48
        assert second.stderr.strip() == f"xsbackup: backup already in progress for {SN}"
        again = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
        assert again.returncode in (48, 12)
        assert "backup already in progress" in again.stderr
        # Refused without queueing behind the first transfer: that one is still running.
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # Once the first session is gone the lock is free again.
    small = small_tree(tmp_path / "small")
    deadline = time.monotonic() + 20
    while True:
        r = sshd.rsync(key, "-a", "--delete", f"{small}/", "127.0.0.1:documents/")
        if "already in progress" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stderr


def test_eight_clients_in_parallel(server: Server, sshd: Sshd, tmp_path: Path) -> None:
    serials = [f"SHF0000000{i}" for i in range(8)]
    keys = {sn: server.add_client(sn) for sn in serials}
    trees = {sn: small_tree(tmp_path / sn, 20) for sn in serials}

    def push(sn: str) -> subprocess.CompletedProcess[str]:
        return sshd.rsync(keys[sn], "-a", f"{trees[sn]}/", "127.0.0.1:documents/")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(push, serials))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    postprocess.run_once(server.ctx())
    for sn in serials:
        (sid,) = server.store.snapshot_ids(sn, "documents")
        snap = server.store.snapshots_dir(sn, "documents") / sid
        assert sorted(p.name for p in snap.iterdir()) == sorted(p.name for p in
                                                                  trees[sn].iterdir())


def test_resume_after_killed_upload_has_no_stale_files(server: Server, sshd: Sshd,
                                                       tmp_path: Path) -> None:
    key = server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"part{i:02d}.bin").write_bytes(os.urandom(60_000))
    first = _slow_upload(sshd, key, src)
    current = server.store.volume_dir(SN, "documents") / "current"
    _wait_for(lambda: current.is_dir() and len(list(current.iterdir())) >= 3)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    # Files the killed transfer already stored are deleted on the client before the retry.
    done = sorted(p.name for p in current.iterdir() if not p.name.startswith("."))
    assert done
    for name in done[:2]:
        (src / name).unlink()
    (src / "late.txt").write_text("added after the interruption\n")
    deadline = time.monotonic() + 20
    while True:
        r = sshd.rsync(key, "-a", "--delete", f"{src}/", "127.0.0.1:documents/")
        if "already in progress" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    (sid,) = server.store.snapshot_ids(SN, "documents")
    snap = server.store.snapshots_dir(SN, "documents") / sid
    assert sorted(p.name for p in snap.iterdir()) == sorted(p.name for p in src.iterdir())
    for p in src.iterdir():
        assert (snap / p.name).read_bytes() == p.read_bytes()
    vol = server.store.volume_dir(SN, "documents")
    assert not (vol / "resume").exists()
    assert not (vol / "current").exists()
