"""Operating `xsbackup serve`: without its SSH server, without rsync, on a taken port,
with a quiet stderr, and a prune schedule that survives a restart."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP, Server, free_port
from tests.integration.test_serve import SN, register, rsa_blob, start, stop
from xsbackup.server.service import DailyPrune

pytestmark = pytest.mark.integration


def test_serve_without_its_ssh_server_still_answers_http(tmp_path: Path) -> None:
    served = start(tmp_path / "root", "--no-ssh")
    try:
        assert "ssh off" in served.banner
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", served.ssh_port)) != 0
        _, blob = rsa_blob(tmp_path, "owner.key")
        assert register(served, SN, blob)["success"] == "OK"
        with urllib.request.urlopen(served.url(f"/backup/1/available/{SN}"),
                                    timeout=10) as resp:
            assert resp.status == 200
        assert (served.root / "ssh" / "authorized_keys").read_text().count(blob) == 1
    finally:
        assert stop(served) == 0


def serve_once(root: Path, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """serve that is expected to refuse to start (the timeout is the test's deadline)."""
    return subprocess.run([XSBACKUP, "--root", str(root), "serve", "--ssh-port",
                           str(free_port()), "--http-port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("rsync", ["/nonexistent/rsync", "no-such-rsync"])
def test_serve_without_rsync_says_so_at_start(tmp_path: Path, rsync: str) -> None:
    r = serve_once(tmp_path / "root", env={"XSBACKUP_INGEST_RSYNC": rsync})
    assert r.returncode == 18
    where = "" if "/" in rsync else " on PATH"
    assert r.stderr == (f"xsbackup: error: rsync not found: ingest.rsync is {rsync!r}, and no "
                        f"such executable exists{where}; install rsync or set ingest.rsync\n")
    assert r.stdout == ""


@pytest.mark.parametrize("which", ["ssh", "http"])
def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path, which: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = serve_once(tmp_path / "root", f"--{which}-port", str(port))
    assert r.returncode == 19
    assert r.stderr == (f"xsbackup: error: cannot listen on 127.0.0.1:{port} ({which}): "
                        "Address already in use\n")


def test_ssh_noise_stays_out_of_stderr(tmp_path: Path) -> None:
    served = start(tmp_path / "root")
    try:
        for payload in (b"", b"SSH-2.0-OpenSSH_9.2p1\r\n", b"GET / HTTP/1.0\r\n\r\n",
                        b"SSH-2.0-x\r\n" + os.urandom(4096)):
            with socket.create_connection(("127.0.0.1", served.ssh_port), timeout=10) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                with contextlib.suppress(ConnectionResetError):  # unread bytes: a reset
                    while s.recv(65536):
                        pass
        served.proc.send_signal(signal.SIGTERM)
        _, err = served.proc.communicate(timeout=60)
    finally:
        stop(served)
    assert served.proc.returncode == 0
    assert err == ""
    log = (served.root / "log" / "xsbackup.log").read_text()
    assert "ended before login" in log


def test_scheduled_prune_is_not_run_again_after_a_restart(server: Server) -> None:
    server.configure('[prune]\nschedule = "00:00"\n')
    ctx = server.ctx()
    now = dt.datetime.now().astimezone()
    first = DailyPrune(lambda: ctx)
    assert first.due(now)
    first()
    assert (server.root / "last-prune").is_file()
    assert not first.due(now)
    restarted = DailyPrune(lambda: ctx)
    assert not restarted.due(now)
    assert restarted.due(now + dt.timedelta(days=1))
