"""`xsbackup serve` as a user runs it: one process, embedded SSH, HTTP, post-processing."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import TEST_LIMITS, XSBACKUP, free_port

pytestmark = pytest.mark.integration
SN = "SHF00112233"
PASSWORD = "correct horse battery staple"


@dataclass
class Served:
    proc: subprocess.Popen[str]
    root: Path
    ssh_port: int
    http_port: int
    banner: str

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def api(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.url(path))
        token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def ssh_cmd(self, key: Path, user: str = SN) -> str:
        return (f'ssh -F /dev/null -o "PasswordAuthentication no" -o "StrictHostKeyChecking no"'
                f" -i {key} -l {user} -p {self.ssh_port} -o UserKnownHostsFile=/dev/null"
                " -o LogLevel=ERROR")


def start(root: Path, *extra: str, wrap: tuple[str, ...] = ()) -> Served:
    """``xsbackup serve`` on free loopback ports (run by ``wrap`` when given). Its load and
    disk limits (which reach its forced commands too) are the tests' own: a busy machine
    must not refuse a transfer."""
    ssh_port, http_port = free_port(), free_port()
    limits = {f"XSBACKUP_ADMISSION_{k.upper()}": str(v) for k, v in TEST_LIMITS.items()}
    proc = subprocess.Popen([*wrap, XSBACKUP, "--root", str(root), "serve", "--ssh-port",
                             str(ssh_port), "--http-port", str(http_port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **limits})
    assert proc.stdout is not None
    banner = proc.stdout.readline().strip()
    assert banner.startswith("xsbackup serving"), proc.stderr.read() if proc.stderr else ""
    return Served(proc, root, ssh_port, http_port, banner)


def stop(served: Served, timeout: float = 60) -> int:
    if served.proc.poll() is None:
        served.proc.send_signal(signal.SIGTERM)
    try:
        return served.proc.wait(timeout=timeout)
    finally:
        for s in (served.proc.stdout, served.proc.stderr):
            if s:
                s.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "fresh-root"  # does not exist yet: serve creates it
    s = start(root)
    r = subprocess.run([XSBACKUP, "--root", str(root), "admin", "add-user", "admin",
                        "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    try:
        yield s
    finally:
        stop(s)


def rsa_blob(tmp_path: Path, name: str) -> tuple[Path, str]:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(key)],
                   check=True)
    return key, Path(f"{key}.pub").read_text().split()[1]


def register(served: Served, serial: str, blob: str) -> dict[str, str]:
    with xmlrpc.client.ServerProxy(served.url("/")) as proxy:
        reply = proxy.register(serial, "Ana's XO", "6f1c0d7e-uuid", blob)
    assert isinstance(reply, dict)
    return reply


def ds_backup(served: Served, key: Path, home: Path, tmp_path: Path) -> None:
    ssh = served.ssh_cmd(key)
    for src, dest in ((home / ".sugar/default/datastore", "datastore-current"),
                      (home / "power-logs", "power-logs"), (home / "Documents", "documents")):
        r = subprocess.run(["rsync", "-z", "-rlt", "--partial", "--delete", "--timeout=160",
                            "-e", ssh, f"{src}/", f"127.0.0.1:{dest}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    flag = tmp_path / "flag"
    flag.write_bytes(b"")
    r = subprocess.run(["rsync", "-z", "-rlt", "--timeout", "10", "-T", "/tmp", "-e", ssh,
                        str(flag), f"127.0.0.1:/var/lib/ds-backup/completion/{SN}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def xo_home(tmp_path: Path) -> Path:
    home = tmp_path / "xo"
    for sub in (".sugar/default/datastore/store", "power-logs", "Documents"):
        (home / sub).mkdir(parents=True)
    (home / ".sugar/default/datastore/store/abc.metadata").write_bytes(b'{"title":"drawing"}')
    (home / ".sugar/default/datastore/store/abc").write_bytes(os.urandom(20_000))
    (home / "power-logs/log1").write_text("battery 80%\n")
    (home / "Documents/essay.txt").write_text("my essay\n")
    return home


def test_out_of_the_box(served: Served, tmp_path: Path) -> None:
    key, blob = rsa_blob(tmp_path, "owner.key")
    reply = register(served, SN, blob)
    assert reply["success"] == "OK"
    assert reply["backupurl"] == f"{SN}@127.0.0.1:backup"
    with urllib.request.urlopen(served.url(f"/backup/1/available/{SN}"), timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == b""
    home = xo_home(tmp_path)
    ds_backup(served, key, home, tmp_path)
    deadline = time.monotonic() + 5
    vols: list[str] = []
    while time.monotonic() < deadline:
        code, body, _ = served.api(f"/api/v1/clients/{SN}/volumes/datastore/snapshots")
        if code == 200 and orjson.loads(body):
            vols = ["datastore"]
            break
        time.sleep(0.1)
    assert vols == ["datastore"], "no snapshot visible within 5 seconds"
    (snap,) = orjson.loads(body)
    assert snap["files"] == 2
    code, metrics, _ = served.api("/metrics")
    assert code == 200
    text = metrics.decode()
    assert "xsbackup_snapshot_promotions_total" in text
    assert f'xsbackup_client_seconds_since_last_success{{client="{SN}"}}' in text


def test_reflashed_device_new_key_needs_approval(served: Served, tmp_path: Path) -> None:
    _, old_blob = rsa_blob(tmp_path, "old.key")
    assert register(served, SN, old_blob)["success"] == "OK"
    assert register(served, SN, old_blob)["success"] == "OK"  # idempotent
    new_key, new_blob = rsa_blob(tmp_path, "new.key")
    reply = register(served, SN, new_blob)
    assert reply["success"] != "OK"
    assert "approv" in reply["error"]
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.txt").write_text("after reflash\n")
    r = subprocess.run(["rsync", "-a", "-e", served.ssh_cmd(new_key), f"{src}/",
                        "127.0.0.1:documents/"], capture_output=True, text=True, timeout=60)
    # Not yet approved: the key is unknown to the server, so ssh fails (rsync reports
    # ssh's 255, or its own 12 when it notices the closed stream first).
    assert r.returncode in (255, 12)
    assert "Permission denied" in r.stderr
    pending = subprocess.run([XSBACKUP, "--root", str(served.root), "clients", "pending",
                              "--json"], capture_output=True, text=True, check=True)
    assert SN in pending.stdout
    subprocess.run([XSBACKUP, "--root", str(served.root), "clients", "approve", SN],
                   capture_output=True, text=True, check=True)
    r = subprocess.run(["rsync", "-a", "-e", served.ssh_cmd(new_key), f"{src}/",
                        "127.0.0.1:documents/"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_sighup_regenerates_keys_and_sigterm_exits_zero(served: Served, tmp_path: Path) -> None:
    keys = served.root / "ssh" / "authorized_keys"
    _, blob = rsa_blob(tmp_path, "owner.key")
    register(served, SN, blob)
    keys.unlink()
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not keys.exists():
        assert time.monotonic() < deadline, "SIGHUP did not regenerate authorized_keys"
        time.sleep(0.05)
    assert blob in keys.read_text()
    assert stop(served) == 0


def test_sigterm_during_a_transfer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "xsbackup.toml").write_text("[server]\nshutdown_timeout = 2.0\n")
    served = start(root)
    try:
        key, blob = rsa_blob(tmp_path, "owner.key")
        assert register(served, SN, blob)["success"] == "OK"
        src = tmp_path / "big"
        src.mkdir()
        for i in range(20):
            (src / f"blob{i:02d}").write_bytes(os.urandom(200_000))
        first = subprocess.Popen(["rsync", "-a", "--bwlimit=300", "-e", served.ssh_cmd(key),
                                  f"{src}/", "127.0.0.1:documents/"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        current = root / "clients" / SN / "volumes" / "documents" / "current"
        deadline = time.monotonic() + 20
        while not (current.is_dir() and any(current.iterdir())):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stop(served, timeout=30) == 0
        _, err = first.communicate(timeout=30)
        # At 300 kB/s the 4 MB transfer needs ~13 s more: serve did not wait for it to
        # finish, it cut it off and the client was told so.
        assert first.returncode != 0
        assert err
    finally:
        stop(served)
    # Stored data is consistent: nothing half-made is visible, and the next run resumes.
    vol = root / "clients" / SN / "volumes" / "documents"
    assert not (vol / "snapshots").exists() or os.listdir(vol / "snapshots") == []
    served = start(root)
    try:
        r = subprocess.run(["rsync", "-a", "-e", served.ssh_cmd(key), f"{src}/",
                            "127.0.0.1:documents/"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 5
        while not (vol / "latest").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        snap = vol / "latest"
        assert sorted(os.listdir(snap)) == sorted(os.listdir(src))
        for name in os.listdir(src):
            assert (snap / name).read_bytes() == (src / name).read_bytes()
    finally:
        assert stop(served) == 0
