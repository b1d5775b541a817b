"""The hardened systemd unit leaves the service working: ``xsbackup serve`` runs under
the unit's own seccomp sandbox (its syscall filter, MemoryDenyWriteExecute, address
families, namespaces, no setuid bits, UMask; ``tests/sandbox.py`` builds them from
``etc/systemd/xsbackup.service`` as systemd 252 does) and takes a backup over SSH with
a setuid file in it, publishes it, runs a Python post-snapshot hook that forks rsync,
answers HTTP, serves the snapshot back over SSH as rsync and as a tar stream, reloads on
SIGHUP and exits 0 on SIGTERM."""

from __future__ import annotations

import io
import os
import shlex
import signal
import stat
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests import sandbox
from tests.integration.test_serve import SN, register, rsa_blob, start, stop

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "etc" / "systemd" / "xsbackup.service"
HOOK = REPO / "hooks" / "replicate-offsite"


@pytest.mark.skipif(bool(sandbox.available()), reason=sandbox.available() or "available")
def test_serve_works_inside_the_units_sandbox(tmp_path: Path) -> None:
    root = tmp_path / "root"
    replica = root / "replica"  # ReadWritePaths= is the state root: replicate inside it
    hook = root / "hooks" / "post-snapshot" / "50-replicate"
    hook.parent.mkdir(parents=True)
    hook.write_text(f"#!/bin/sh\nXSBACKUP_REPLICA={replica} exec {sys.executable} {HOOK}\n")
    hook.chmod(0o755)
    served = start(root, wrap=(sys.executable, "-m", "tests.sandbox", str(UNIT), "--"))
    try:
        key, blob = rsa_blob(tmp_path, "owner.key")
        assert register(served, SN, blob)["success"] == "OK"
        with urllib.request.urlopen(served.url(f"/backup/1/available/{SN}"), timeout=10) as r:
            assert r.status == 200
        src = tmp_path / "docs"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "essay.txt").write_text("my essay\n")
        (src / "tool").write_bytes(b"#!/bin/sh\n")
        (src / "tool").chmod(0o4755)
        (src / "link").symlink_to("sub/essay.txt")
        push = subprocess.run(["rsync", "-a", "-e", served.ssh_cmd(key), f"{src}/",
                               "127.0.0.1:documents/"], capture_output=True, text=True,
                              timeout=60)
        assert push.returncode == 0, push.stderr
        vol = root / "clients" / SN / "volumes" / "documents"
        deadline = time.monotonic() + 30
        while not (vol / "latest").exists() or not list(replica.glob(f"{SN}/documents/2*")):
            assert time.monotonic() < deadline, (root / "log" / "xsbackup.log").read_text()
            time.sleep(0.1)
        # The unit's UMask=0027: nothing the service writes is world-readable.
        assert stat.S_IMODE((root / "log" / "xsbackup.log").stat().st_mode) & 0o007 == 0

        back = tmp_path / "back"
        pull = subprocess.run(["rsync", "-a", "-e", served.ssh_cmd(key),
                               "127.0.0.1:documents/latest/", f"{back}/"],
                              capture_output=True, text=True, timeout=60)
        assert pull.returncode == 0, pull.stderr
        assert (back / "sub" / "essay.txt").read_text() == "my essay\n"
        assert stat.S_IMODE((back / "tool").stat().st_mode) == 0o4755  # kept by fake-super
        assert os.readlink(back / "link") == "sub/essay.txt"
        archive = subprocess.run([*shlex.split(served.ssh_cmd(key)), "127.0.0.1",
                                  "archive --volume documents"], capture_output=True,
                                 timeout=60)
        assert archive.returncode == 0, archive.stderr
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            assert tar.getmember("tool").mode == 0o4755
        served.proc.send_signal(signal.SIGHUP)
    finally:
        code = stop(served)
    assert code == 0
    log = (root / "log" / "xsbackup.log").read_text()
    assert "Traceback" not in log
    assert "ERROR" not in log
