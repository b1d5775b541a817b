"""The embedded paramiko SSH server with stock ssh and rsync clients."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, Sshd
from xsbackup import logs
from xsbackup.server.sshserver import SshServer
from xsbackup.snapshots import postprocess

pytestmark = pytest.mark.integration
SN = "SHF00112233"
OTHER = "SHF00000001"


@pytest.fixture
def embedded(server: Server) -> Iterator[Sshd]:
    """The embedded server on a free loopback port; ``Sshd`` gives the client helpers."""
    server.configure("[server]\nmax_auth_failures = 3\n")
    logs.setup(server.settings())
    ssh = SshServer(server.settings, "127.0.0.1", 0)
    t = threading.Thread(target=ssh.serve_forever, daemon=True)
    t.start()
    try:
        yield Sshd(ssh.port, server.root / "log" / "xsbackup.log", "xsbackup")
    finally:
        ssh.close()
        ssh.wait_idle(10)
        t.join(timeout=5)


def test_ds_backup_lines_log_in_as_serial(server: Server, embedded: Sshd,
                                          tmp_path: Path) -> None:
    key = server.add_client(SN)
    home = tmp_path / "xo"
    trees = {}
    for sub, dest in ((".sugar/default/datastore", "datastore-current"),
                      ("power-logs", "power-logs"), ("Documents", "documents")):
        src = home / sub
        src.mkdir(parents=True)
        (src / "file.txt").write_text(f"{dest}\n")
        (src / "blob.bin").write_bytes(os.urandom(300_000))
        trees[dest] = src
    ssh = (f'ssh -F /dev/null -o "PasswordAuthentication no" -o "StrictHostKeyChecking no" '
           f"-i {key} -l {SN} -p {embedded.port} -o UserKnownHostsFile=/dev/null "
           "-o LogLevel=ERROR")
    for dest, src in trees.items():
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
    assert os.getxattr(server.store.client_dir(SN), "user.xsbackup.last_completion")
    postprocess.run_once(server.ctx())
    for vol, dest in (("datastore", "datastore-current"), ("power-logs", "power-logs"),
                      ("documents", "documents")):
        (sid,) = server.store.snapshot_ids(SN, vol)
        snap = server.store.snapshots_dir(SN, vol) / sid
        src = trees[dest]
        assert (snap / "blob.bin").read_bytes() == (src / "blob.bin").read_bytes()
        assert (snap / "file.txt").read_text() == f"{dest}\n"
    out = tmp_path / "restored"
    r = subprocess.run(["rsync", "-a", "-e", ssh, "127.0.0.1:datastore-latest/", f"{out}/"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (out / "blob.bin").read_bytes() == (trees["datastore-current"] / "blob.bin").read_bytes()


def test_key_of_a_cannot_act_as_b(server: Server, embedded: Sshd) -> None:
    key_a = server.add_client(SN)
    server.add_client(OTHER)
    r = embedded.ssh(key_a, "true", user=OTHER)
    assert r.returncode == 255
    assert "Permission denied" in r.stderr
    assert embedded.ssh(key_a, "true", user=SN).returncode == 0
    assert embedded.ssh(key_a, "true", user="xsbackup").returncode == 0


def test_service_login_acts_as_the_keys_owner(server: Server, embedded: Sshd,
                                              tmp_path: Path) -> None:
    key = server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a\n")
    r = embedded.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/", user="xsbackup")
    assert r.returncode == 0, r.stderr
    assert server.store.volumes(SN) == ["documents"]


def test_unknown_key_refused_and_throttled(server: Server, embedded: Sshd,
                                           tmp_path: Path) -> None:
    server.add_client(SN)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    for _ in range(3):
        r = embedded.ssh(stranger, "true", user=SN)
        assert r.returncode == 255
        assert "Permission denied" in r.stderr
    # The address has used up its failures: now even the right key is cut off at once.
    r = embedded.ssh(server.keys[SN], "true", user=SN)
    assert r.returncode == 255
    assert "Permission denied" not in r.stderr
    assert "too many failed logins" in (server.root / "log" / "xsbackup.log").read_text()


def test_refusals_keep_their_exit_code_and_line(server: Server, embedded: Sshd) -> None:
    key = server.add_client(SN)
    r = embedded.ssh(key, "rsync --server -logDtpre.iLsfxCIvu --inplace . documents/")
    assert r.returncode == 40
    assert r.stderr.strip() == "xsbackup: option --inplace is refused on this server"
    r = embedded.ssh(key, None)
    assert r.returncode == 40
    assert "interactive login is not allowed" in r.stderr
    assert server.store.volumes(SN) == []


def test_no_sftp_and_no_forwarding(server: Server, embedded: Sshd) -> None:
    key = server.add_client(SN)
    r = subprocess.run(["sftp", "-b", "-", "-o", "StrictHostKeyChecking=no",
                        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                        "-i", str(key), "-P", str(embedded.port), f"{SN}@127.0.0.1"],
                       input="ls\n", capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    r = embedded.ssh(key, "true", extra=("-o", "ExitOnForwardFailure=yes",
                                         "-L", "127.0.0.1:0:127.0.0.1:22"))
    assert r.returncode == 255
