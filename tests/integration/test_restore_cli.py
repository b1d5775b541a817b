"""``xsbackup restore plan`` and ``restore archive`` as an administrator runs them: the
plan names the server devices reach, with the running configuration's port, and sizes in
IEC units; an archive is never poured onto a terminal."""

from __future__ import annotations

import io
import os
import select
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP, Server, local_push
from xsbackup.snapshots import postprocess

pytestmark = pytest.mark.integration
SN = "SHF00112233"


@pytest.fixture
def snapshot(server: Server, tmp_path: Path) -> str:
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "essay.txt").write_bytes(b"x" * 3000)
    (src / "notes.txt").write_text("notes\n")
    r = local_push(server, SN, src, "documents")
    assert r.returncode == 0, r.stderr
    assert postprocess.run_once(server.ctx()) == {"promoted": 1}
    (sid,) = server.store.snapshot_ids(SN, "documents")
    return sid


def test_plan_names_this_machine_and_the_configured_ssh_port(server: Server,
                                                             snapshot: str) -> None:
    host = socket.gethostname()
    source = f"{SN}@{host}:documents/{snapshot}/"
    out = server.cli("restore", "plan", SN).output.splitlines()
    assert out[0] == f"snapshot documents/{snapshot} of {SN}"
    assert out[2] == f"rsync -a -e 'ssh -p 2222' {source} <target>/"

    server.configure('[server]\nssh_port = 2022\n')
    assert server.cli("restore", "plan", SN).output.splitlines()[2] == \
        f"rsync -a -e 'ssh -p 2022' {source} <target>/"


def test_plan_without_the_embedded_server_names_openssh_port_22(server: Server,
                                                                 snapshot: str) -> None:
    server.configure('[server]\nssh_port = 0\npublic_host = "schoolserver"\n')
    out = server.cli("restore", "plan", SN).output.splitlines()
    assert out[2] == f"rsync -a {SN}@schoolserver:documents/{snapshot}/ <target>/"
    plan = server.cli("restore", "plan", SN, "--json").output
    assert '"ssh_port": 22' in plan


def test_plan_prints_sizes_in_iec_units(server: Server, snapshot: str) -> None:
    out = server.cli("restore", "plan", SN).output.splitlines()
    assert out[1] == "files=2 size=2.9 KiB"


def test_snapshots_list_prints_sizes_in_iec_units(server: Server, snapshot: str) -> None:
    (line,) = server.cli("snapshots", "list", SN).output.splitlines()
    assert " size=2.9 KiB " in line
    assert " new=2.9 KiB" in line


def test_archive_refuses_a_terminal(server: Server, snapshot: str) -> None:
    leader, follower = os.openpty()
    try:
        r = subprocess.run([XSBACKUP, "--root", str(server.root), "restore", "archive", SN],
                           stdout=follower, stderr=subprocess.PIPE, text=True, timeout=60)
        ready, _, _ = select.select([leader], [], [], 0)
        written = os.read(leader, 65536) if ready else b""
    finally:
        os.close(leader)
        os.close(follower)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [
        "xsbackup: error: refusing to write an archive to a terminal: redirect it to a "
        "file (> snapshot.tar) or a pipe (| tar x)"]
    assert written == b""


def test_archive_to_a_pipe_is_a_tar_stream(server: Server, snapshot: str) -> None:
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "restore", "archive", SN],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == \
            ["essay.txt", "notes.txt"]

