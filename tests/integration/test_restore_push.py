"""``xsbackup restore push`` to "devices": Unix accounts with their own homes behind a second
loopback OpenSSH sshd, standing in for XOs; one of them on a tiny full tmpfs."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Server, local_push, running_sshd
from tests.integration.test_restore import fingerprint, sugar_datastore
from xsbackup.snapshots import postprocess

pytestmark = pytest.mark.integration
SERIALS = ("SHF0000PSH1", "SHF0000PSH2", "SHF0000PSH3")
Tree = dict[str, tuple[object, ...]]


@dataclass
class Devices:
    port: int
    key: Path
    users: list[str]
    homes: list[Path]
    known_hosts: Path

    def target(self, i: int) -> str:
        return f"{self.users[i]}@127.0.0.1:{self.port}"


@pytest.fixture
def devices(tmp_path: Path, host_key: Path) -> Iterator[Devices]:
    """Three accounts behind their own sshd; the third one's home is a 256 KiB tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("device accounts need root (useradd)")
    # Homes outside pytest's 0700 tmp_path, so the accounts can reach them.
    base = Path(tempfile.mkdtemp(prefix="xsb-devices-"))
    base.chmod(0o755)
    key = tmp_path / "admin_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    keys = base / "authorized_keys"  # sshd reads it as the user logging in
    shutil.copy(key.with_suffix(".pub"), keys)
    keys.chmod(0o644)
    users, homes = [], []
    mounted: Path | None = None
    try:
        for i in range(3):
            name = f"xsbpush{os.getpid() % 100000}{i}"
            home = base / name
            # "*": no password, but not a locked account (which sshd refuses)
            subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home),
                            "--shell", "/bin/sh", "--password", "*", name], check=True,
                           capture_output=True)
            users.append(name)
            home.mkdir()
            if i == 2:
                r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755",
                                    "tmpfs", str(home)], capture_output=True, text=True)
                if r.returncode != 0:
                    pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
                mounted = home
            pw = pwd.getpwnam(name)
            os.chown(home, pw.pw_uid, pw.pw_gid)
            homes.append(home)
        with running_sshd(tmp_path / "devsshd", host_key, keys) as (port, _log):
            yield Devices(port, key, users, homes, tmp_path / "known_hosts")
    finally:
        if mounted is not None:
            subprocess.run(["umount", "-l", str(mounted)], check=False)
        for name in users:
            subprocess.run(["userdel", "--force", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def backed_up(server: Server, tmp_path: Path) -> dict[str, dict[str, Tree]]:
    """Each serial's datastore and documents, as backed up: {serial: {volume: tree}}."""
    trees: dict[str, dict[str, Tree]] = {}
    for n, serial in enumerate(SERIALS):
        server.add_client(serial)
        ds = sugar_datastore(tmp_path / serial / "ds", entries=2 + n)
        docs = tmp_path / serial / "docs"
        docs.mkdir()
        (docs / "essay.txt").write_text(f"essay of {serial}\n")
        (docs / "big.bin").write_bytes(os.urandom(300_000 if n == 2 else 20_000))
        os.utime(docs / "essay.txt", (1_600_000_000, 1_600_000_000))
        assert local_push(server, serial, ds, "datastore-current").returncode == 0
        assert local_push(server, serial, docs, "documents").returncode == 0
        trees[serial] = {"datastore": fingerprint(ds), "documents": fingerprint(docs)}
    postprocess.run_once(server.ctx())
    return trees


def test_classroom_push(server: Server, devices: Devices,
                        backed_up: dict[str, dict[str, Tree]],
                        tmp_path: Path) -> None:
    hosts = tmp_path / "classroom.txt"
    hosts.write_text("# serial  device\n" + "".join(
        f"{sn} {devices.target(i)}\n" for i, sn in enumerate(SERIALS)) + "\n")
    r = server.xsbackup("restore", "push", "--hosts-from", str(hosts), "--parallel", "2",
                        "-i", str(devices.key), "--known-hosts", str(devices.known_hosts),
                        check=False)
    assert r.returncode == 65, r.stdout + r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()
            if line.startswith(SERIALS)}
    assert set(rows) == set(SERIALS), r.stdout
    assert " ok " in rows[SERIALS[0]]
    assert " ok " in rows[SERIALS[1]]
    assert "FAILED" in rows[SERIALS[2]]
    assert "not enough space" in rows[SERIALS[2]]
    assert "restart Sugar" in r.stdout
    (line,) = r.stderr.strip().splitlines()  # one line, naming the device and why
    assert f"1 of 3 devices failed: {SERIALS[2]}: {devices.target(2)}: not enough space" \
        in line
    for i in (0, 1):
        home = devices.homes[i]
        assert fingerprint(home / ".sugar" / "default" / "datastore") == \
            backed_up[SERIALS[i]]["datastore"]
        assert fingerprint(home / "Documents") == backed_up[SERIALS[i]]["documents"]
        assert (home / "Documents").stat().st_uid == pwd.getpwnam(devices.users[i]).pw_uid
    assert not (devices.homes[2] / "Documents").exists()  # refused before writing
    assert devices.known_hosts.read_text().count("ssh-ed25519") == 1  # accept-new saved it

    # one device, one volume, an explicit destination, as JSON
    r = server.xsbackup("restore", "push", SERIALS[1], "--to", devices.target(1),
                        "--volume", "documents", "--dest", "restored/docs", "-i",
                        str(devices.key), "--host-keys", "ignore", "--json", check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # an unchecked host key is logged, not warned about
    (out,) = json.loads(r.stdout)
    assert out["ok"]
    assert out["serial"] == SERIALS[1]
    assert out["volumes"][0]["dest"] == str(devices.homes[1] / "restored" / "docs")
    assert fingerprint(devices.homes[1] / "restored" / "docs") == \
        backed_up[SERIALS[1]]["documents"]


def test_unknown_host_key_refused_when_strict(server: Server, devices: Devices,
                                              backed_up: object) -> None:
    r = server.xsbackup("restore", "push", SERIALS[0], "--to", devices.target(0),
                        "--host-keys", "strict", "--known-hosts", str(devices.known_hosts),
                        "-i", str(devices.key), check=False)
    assert r.returncode == 66, r.stdout + r.stderr
    assert "1 of 1 devices failed" in r.stderr
    assert "cannot connect" in r.stderr or "not found in known_hosts" in r.stderr
    assert not (devices.homes[0] / "Documents").exists()
