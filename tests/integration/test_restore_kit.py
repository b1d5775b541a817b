"""The bare-device restore kit, ``restore/xsrestore.py``, against a real ``xsbackup serve``.

A device backs up a Sugar-like datastore, is "reflashed" (a new key that the kit itself
generates), and the kit registers it, waits for the administrator's approval, pulls the
snapshot with stock rsync over the embedded SSH server and verifies it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import XSBACKUP, free_port
from tests.integration.test_serve import Served, register, rsa_blob, start, stop

pytestmark = pytest.mark.integration
KIT = Path(__file__).resolve().parents[2] / "restore" / "xsrestore.py"
SN = "SHF00112233"
OLD = "SHF00000042"
UID = "6f1c0d7e-3b1a-4c55-9a41-2d7c0e9b8a10"
IS_ROOT = os.geteuid() == 0
SNAPSHOT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{6}Z(?:-\d{1,6})?")


# ---- helpers -----------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = start(tmp_path / "root")
    try:
        yield s
    finally:
        stop(s)


@pytest.fixture(scope="module")
def kit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("xsrestore", KIT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sugar_datastore(base: Path) -> Path:
    """A small Sugar (version 6) datastore: one entry, index files, an empty file, a
    symlink, a setuid file and non-ASCII names, with fixed nanosecond mtimes."""
    ds = base / ".sugar" / "default" / "datastore"
    entry = ds / UID[:2] / UID
    (entry / "metadata").mkdir(parents=True)
    (entry / "data").write_bytes(os.urandom(40_000))
    (entry / "metadata" / "title").write_text("Dibujo de Ana: ñandú 🐢", encoding="utf-8")
    (entry / "metadata" / "activity").write_text("org.laptop.Oficina")
    (entry / "metadata" / "preview").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    (ds / "version").write_text("6")
    (ds / "index").mkdir()
    (ds / "index" / "postlist.glass").write_bytes(os.urandom(3000))
    (ds / "index_updated").write_bytes(b"")  # an empty file
    (ds / "checksums").mkdir()
    (ds / "ñandú \u2013 résumé.txt").write_text("acentos y eñes\n", encoding="utf-8")
    (ds / "日本語").mkdir()
    (ds / "日本語" / "メモ.txt").write_text("こんにちは\n", encoding="utf-8")
    (ds / "last-data").symlink_to(f"{UID[:2]}/{UID}/data")
    (ds / "dangling").symlink_to("../nowhere/at all")
    tool = ds / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o4755)
    stamp = 1_600_000_000_123_456_789
    for n, p in enumerate(sorted(ds.rglob("*"))):
        if not p.is_symlink():
            os.utime(p, ns=(stamp + n * 1_000_000_007, stamp + n * 1_000_000_007))
    return ds


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, ...]]:
    """Every entry below root: type, mode, contents or target, and mtime for files."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel.split("/", maxsplit=1)[0] in skip:
                continue
            st = p.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if not IS_ROOT:  # setuid survives a restore only when root receives it
                mode &= ~(stat.S_ISUID | stat.S_ISGID)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", mode, st.st_mtime_ns, p.read_bytes())
            else:
                out[rel] = ("dir", mode)
    return out


def backup(served: Served, serial: str, key: Path, ds: Path) -> str:
    """Push ``ds`` as the datastore volume; the snapshot id once it is visible."""
    r = subprocess.run(["rsync", "-a", "-e", served.ssh_cmd(key, serial), f"{ds}/",
                        "127.0.0.1:datastore/"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    snaps = served.root / "clients" / serial / "volumes" / "datastore" / "snapshots"
    deadline = time.monotonic() + 15
    while True:
        ids = sorted(os.listdir(snaps)) if snaps.is_dir() else []
        if ids:
            return ids[-1]
        assert time.monotonic() < deadline, "no snapshot appeared within 15 seconds"
        time.sleep(0.1)


def kit_argv(served: Served | None, *args: str) -> list[str]:
    http_port = served.http_port if served else free_port()
    ssh_port = served.ssh_port if served else free_port()
    return [sys.executable, str(KIT), "--server", "127.0.0.1", "--http-port", str(http_port),
            "--ssh-port", str(ssh_port), *args]


def kit_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "device-home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home)}


def run_kit(tmp_path: Path, served: Served | None, *args: str,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(kit_argv(served, *args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=kit_env(tmp_path))


def xsb(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XSBACKUP, "--root", str(served.root), *args], capture_output=True,
                          text=True, timeout=60)


# ---- the whole path --------------------------------------------------------------------


def test_reflashed_device_restores_after_approval(served: Served, tmp_path: Path) -> None:
    key1, blob1 = rsa_blob(tmp_path, "owner.key")
    assert register(served, SN, blob1)["success"] == "OK"
    ds = sugar_datastore(tmp_path / "xo")
    backup(served, SN, key1, ds)

    # The device is reflashed: its key is gone, the kit generates a new one.
    new_key = tmp_path / "reflashed" / ".sugar" / "default" / "owner.key"
    target = tmp_path / "restored" / "datastore"
    proc = subprocess.Popen(
        kit_argv(served, "--serial", SN, "--key", str(new_key), "--target", str(target),
                 "--wait", "60", "--poll", "0.5"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=kit_env(tmp_path))
    assert proc.stdout is not None
    seen: list[str] = []
    approved = None
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Waiting for the administrator" in line:
                approved = xsb(served, "clients", "approve", SN)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    stdout = "".join(seen) + out
    assert proc.returncode == 0, stdout + err
    assert approved is not None, stdout
    assert approved.returncode == 0, approved.stderr
    assert "generating a new RSA key" in stdout
    assert new_key.is_file()
    assert Path(f"{new_key}.pub").is_file()
    assert stdout.count("Waiting for the administrator") == 1
    assert f"Ask them to run: xsbackup clients approve {SN}" in stdout
    assert "verified" in stdout
    assert tree(target) == tree(ds)
    for p in ds.rglob("*"):
        if not p.is_symlink() and p.is_file():
            assert (target / p.relative_to(ds)).stat().st_mtime_ns == p.stat().st_mtime_ns
    if IS_ROOT:
        assert stat.S_IMODE((target / "bin" / "tool").stat().st_mode) == 0o4755

    # The server hands out exactly this script.
    with urllib.request.urlopen(served.url("/restore/kit"), timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == KIT.read_bytes()


def test_replaced_device_restores_its_predecessor(served: Served, tmp_path: Path) -> None:
    old_key, old_blob = rsa_blob(tmp_path, "old.key")
    assert register(served, OLD, old_blob)["success"] == "OK"
    ds = sugar_datastore(tmp_path / "old-xo")
    sid = backup(served, OLD, old_key, ds)
    new_key, new_blob = rsa_blob(tmp_path, "new.key")
    assert register(served, SN, new_blob)["success"] == "OK"  # a new serial: open
    r = xsb(served, "clients", "alias", SN, OLD)
    assert r.returncode == 0, r.stderr

    target = tmp_path / "new-xo" / "datastore"
    (target / "index").mkdir(parents=True)
    (target / "stray.txt").write_text("not in the snapshot\n")
    r = run_kit(tmp_path, served, "--serial", SN, "--key", str(new_key), "--from", OLD,
                "--target", str(target), "--at", sid, "--replace", "--sugar",
                "--after", 'printf %s "$XSRESTORE_SNAPSHOT $XSRESTORE_SOURCE" > ../after.txt')
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{SN}@127.0.0.1:clients/{OLD}/datastore/{sid}/" in r.stdout
    assert "--delete" in r.stdout
    assert not (target / "stray.txt").exists()  # --replace
    assert not (target / "index").exists()  # --sugar
    assert not (target / "index_updated").exists()
    assert tree(target) == tree(ds, skip=("index", "index_updated"))
    assert (target.parent / "after.txt").read_text() == f"{sid} {OLD}"

    # Without the alias, the new device may not read the old one's snapshots.
    r = xsb(served, "clients", "unalias", SN, OLD)
    assert r.returncode == 0, r.stderr
    r = run_kit(tmp_path, served, "--serial", SN, "--key", str(new_key), "--from", OLD,
                "--target", str(tmp_path / "other"))
    assert r.returncode == 8, r.stdout + r.stderr
    assert f"may not read the snapshots of {OLD}" in r.stderr


def test_closed_policy_refuses_a_new_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "xsbackup.toml").write_text('[registration]\nnew_key = "closed"\n')
    served = start(root)
    try:
        _, blob = rsa_blob(tmp_path, "owner.key")
        assert register(served, SN, blob)["success"] == "OK"
        target = tmp_path / "restored"
        r = run_kit(tmp_path, served, "--serial", SN, "--key", str(tmp_path / "new.key"),
                    "--target", str(target), "--wait", "5", "--poll", "0.5")
    finally:
        stop(served)
    assert r.returncode == 5, r.stdout + r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("xsrestore: error: registration refused (DENIED):")
    assert "a different key is already registered" in line
    assert not target.exists()


def test_no_wait_for_approval_exits_6(served: Served, tmp_path: Path) -> None:
    _, blob = rsa_blob(tmp_path, "owner.key")
    assert register(served, SN, blob)["success"] == "OK"
    r = run_kit(tmp_path, served, "--serial", SN, "--key", str(tmp_path / "new.key"),
                "--target", str(tmp_path / "restored"), "--wait", "0")
    assert r.returncode == 6, r.stdout + r.stderr
    assert f"xsbackup clients approve {SN}" in r.stdout
    assert "still awaiting approval" in r.stderr
    pending = xsb(served, "clients", "pending", "--json")
    assert SN in pending.stdout


def test_dry_run_contacts_nothing_and_changes_nothing(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "owner.key"
    target = tmp_path / "restored"
    # No server at all: every port is closed, so any contact would fail the run.
    r = run_kit(tmp_path, None, "--serial", SN, "--key", str(key), "--target", str(target),
                "--sugar", "--after", "touch marker", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    assert "register('SHF00112233'" in r.stdout
    rsync_line = next(ln for ln in r.stdout.splitlines() if "rsync -a" in ln)
    assert f"{SN}@127.0.0.1:datastore/latest/ {target}/" in rsync_line
    assert "--delete" not in rsync_line
    assert f"-i {key} -p " in rsync_line
    assert "manifest --volume datastore --at latest" in r.stdout
    assert "touch marker" in r.stdout
    assert not target.exists()
    assert not key.parent.exists()


def test_unreachable_server_exits_7(tmp_path: Path) -> None:
    key, _ = rsa_blob(tmp_path, "owner.key")
    r = run_kit(tmp_path, None, "--serial", SN, "--key", str(key), "--target",
                str(tmp_path / "t"))
    assert r.returncode == 7, r.stdout + r.stderr
    assert "cannot reach the registration service" in r.stderr


# ---- pieces of the script, imported ------------------------------------------------------


def test_verify_reports_every_kind_of_mismatch(kit_module: ModuleType, tmp_path: Path) -> None:
    t = tmp_path / "t"
    (t / "d").mkdir(parents=True)
    (t / "ok.txt").write_bytes(b"12345")
    (t / "short.txt").write_bytes(b"123")
    (t / "d" / "link").symlink_to("elsewhere")
    (t / "good-link").symlink_to("ok.txt")
    (t / "not-a-dir").write_bytes(b"")
    manifest = [
        {"path": "d", "type": "dir", "mode": 0o755, "mtime": 0},
        {"path": "ok.txt", "type": "file", "mode": 0o644, "mtime": 0, "size": 5},
        {"path": "good-link", "type": "symlink", "mode": 0o777, "mtime": 0,
         "target": "ok.txt"},
        {"path": "short.txt", "type": "file", "mode": 0o644, "mtime": 0, "size": 9},
        {"path": "missing.txt", "type": "file", "mode": 0o644, "mtime": 0, "size": 1},
        {"path": "d/link", "type": "symlink", "mode": 0o777, "mtime": 0, "target": "here"},
        {"path": "not-a-dir", "type": "dir", "mode": 0o755, "mtime": 0},
        {"path": "d", "type": "file", "mode": 0o644, "mtime": 0, "size": 0},
        {"path": "../escape", "type": "file", "mode": 0o644, "mtime": 0, "size": 0},
        {"path": "fifo", "type": "special", "mode": 0o644, "mtime": 0},
    ]
    problems = kit_module.verify(manifest, str(t), is_root=False)
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    assert "short.txt: size 3, expected 9" in text
    assert "missing.txt: missing" in text
    assert "d/link: symlink to 'elsewhere', expected 'here'" in text
    assert "not-a-dir: expected a directory" in text
    assert "d: expected a file" in text
    assert "unsafe path" in text
    assert len(kit_module.verify(manifest, str(t), is_root=True)) == 7  # + the fifo
    assert kit_module.verify(manifest[:3], str(t), is_root=False) == []


def test_verification_failure_exits_9_with_20_lines(kit_module: ModuleType, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    manifest = [{"path": f"f{i}", "type": "file", "size": 1} for i in range(25)]
    with pytest.raises(kit_module.Fail) as info:
        kit_module.report_verification(manifest, str(tmp_path))
    assert info.value.code == 9
    assert "25 of 25 entries differ" in info.value.message
    assert "5 more not shown" in info.value.message
    assert capsys.readouterr().err.count("mismatch:") == 20


def test_serial_sources(kit_module: ModuleType, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    sn_file = tmp_path / "SN"
    sn_file.write_bytes(b"SHF00112233\n\x00")
    monkeypatch.setattr(kit_module, "SN_PATH", str(sn_file))
    assert kit_module.find_serial(None) == (SN, str(sn_file))
    assert kit_module.find_serial("  ABC12345678 ") == ("ABC12345678", "--serial")
    monkeypatch.setattr(kit_module, "SN_PATH", str(tmp_path / "absent"))
    rc = kit_module.main(["--server", "127.0.0.1", "--target", str(tmp_path / "t"),
                          "--dry-run"])
    assert rc == 3
    assert "no serial number" in capsys.readouterr().err


def test_key_readable_by_others_exits_4(kit_module: ModuleType, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = rsa_blob(tmp_path, "owner.key")
    key.chmod(0o644)
    rc = kit_module.main(["--server", "127.0.0.1", "--target", str(tmp_path / "t"),
                          "--serial", SN, "--key", str(key), "--dry-run"])
    assert rc == 4
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--at", "yesterday"], ["--volume", "../x"],
                                  ["--from", "a-b"], ["--poll", "0"]])
def test_usage_errors_exit_2(kit_module: ModuleType, tmp_path: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        kit_module.main(["--server", "h", "--target", str(tmp_path / "t"), "--serial", SN,
                         *args])
    assert info.value.code == 2
