"""Hostile requests through real OpenSSH: one refusal line, exit 40, nothing changed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Server, Sshd, tree_state
from tests.hostile_cases import HOSTILE, SN
from xsbackup.snapshots import postprocess

pytestmark = pytest.mark.integration
PWNED = Path("/tmp/xsbackup-pwned")


@pytest.fixture
def seeded(server: Server, sshd: Sshd, tmp_path: Path) -> tuple[Server, Sshd, Path]:
    """A client with one snapshot, so refusals can be checked against real history."""
    key = server.add_client(SN)
    server.add_client("SHF00000001")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("history\n")
    r = sshd.rsync(key, "-a", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    return server, sshd, key


def state_without_logs(root: Path) -> dict[str, object]:
    return {k: v for k, v in tree_state(root).items() if not k.startswith("log")}


@pytest.mark.parametrize(("command", "expected"), [(c, e) for _, c, e in HOSTILE],
                         ids=[i for i, _, _ in HOSTILE])
def test_refused_through_sshd(seeded: tuple[Server, Sshd, Path], command: str,
                              expected: str) -> None:
    server, sshd, key = seeded
    PWNED.unlink(missing_ok=True)
    before = state_without_logs(server.root)
    if command.strip() == "":
        # ssh cannot send an empty command; sshd gives the forced command an empty
        # SSH_ORIGINAL_COMMAND only through the environment, so drive it directly.
        res = server.xsbackup("ssh-command", "--client", SN, check=False,
                              env={**os.environ, "SSH_ORIGINAL_COMMAND": command})
    else:
        res = sshd.ssh(key, command)
    assert res.returncode == 40, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("xsbackup: ")
    assert expected in lines[0]
    assert res.stdout == ""
    assert not PWNED.exists()
    assert state_without_logs(server.root) == before


def test_interactive_login_refused(seeded: tuple[Server, Sshd, Path]) -> None:
    server, sshd, key = seeded
    before = state_without_logs(server.root)
    res = sshd.ssh(key, None)
    assert res.returncode == 40
    assert "interactive login is not allowed" in res.stderr
    assert state_without_logs(server.root) == before


def test_sftp_subsystem_refused(seeded: tuple[Server, Sshd, Path]) -> None:
    server, sshd, key = seeded
    before = state_without_logs(server.root)
    res = subprocess.run(["sftp", "-b", "-", "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                          "-i", str(key), "-P", str(sshd.port), f"{sshd.user}@127.0.0.1"],
                         input="ls\n", capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "Connection closed" in res.stderr
    log = (server.root / "log" / "xsbackup.log").read_text()
    assert "request refused" in log
    assert "only rsync is accepted (command 'internal-sftp')" in log
    assert state_without_logs(server.root) == before


def test_other_clients_snapshot_not_readable(seeded: tuple[Server, Sshd, Path],
                                             tmp_path: Path) -> None:
    server, sshd, _ = seeded
    other_key = server.keys["SHF00000001"]
    out = tmp_path / "out"
    r = sshd.rsync(other_key, "-a", "127.0.0.1:documents/latest/", f"{out}/")
    assert r.returncode in (51, 12)
    assert r.stderr.startswith("xsbackup: documents has no snapshot yet")
    res = sshd.ssh(other_key, "rsync --server --sender -logDtpre.iLsfxCIvu . documents/latest/")
    assert res.returncode == 51
    assert not out.exists() or not any(out.iterdir())


def test_unknown_client_refused(server: Server) -> None:
    res = server.xsbackup("ssh-command", "--client", "NOSUCH", check=False,
                          env={**os.environ, "SSH_ORIGINAL_COMMAND": "rsync --server -a . docs"})
    assert res.returncode == 41
    assert res.stderr.strip() == "xsbackup: unknown client NOSUCH"
