"""The embedded paramiko SSH server with stock ssh and rsync clients."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
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
    with running_embedded(server) as sshd:
        yield sshd


@contextlib.contextmanager
def running_embedded(server: Server) -> Iterator[Sshd]:
    """The embedded server as ``server``'s configuration sets it up at start."""
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


# ---- limits: unauthenticated floods, login grace, sessions per client, stalls ----------


def backup(server: Server, embedded: Sshd, serial: str, tmp_path: Path,
           timeout: float = 60, login: str | None = "") -> subprocess.CompletedProcess[str]:
    """One plain rsync backup of a small tree, as ``login`` ("": the client's serial;
    None: the SSH server's own user)."""
    src = tmp_path / f"src-{serial}"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text(f"{serial}\n")
    return embedded.rsync(server.keys[serial], "-a", f"{src}/", "127.0.0.1:documents/",
                          user=serial if login == "" else login, timeout=timeout)


def open_flood(port: int, idle: int, half: int) -> list[socket.socket]:
    """``idle`` TCP connections that never speak, then ``half`` that send the SSH banner
    and stop there."""
    socks = []
    for i in range(idle + half):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i >= idle:
            s.sendall(b"SSH-2.0-OpenSSH_9.2p1 flood\r\n")
        socks.append(s)
    return socks


def test_unauthenticated_flood_leaves_room_for_a_backup(server: Server, embedded: Sshd,
                                                       tmp_path: Path) -> None:
    server.add_client(SN)
    flood = open_flood(embedded.port, idle=80, half=80)
    try:
        r = backup(server, embedded, SN, tmp_path, timeout=10)
        assert r.returncode == 0, r.stderr
    finally:
        for s in flood:
            s.close()
    assert server.store.volumes(SN) == ["documents"]


def test_login_grace_closes_a_silent_connection(server: Server, embedded: Sshd) -> None:
    server.configure("[server]\nmax_auth_failures = 3\nlogin_grace_seconds = 1\n")
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=30) as s:
        s.sendall(b"SSH-2.0-OpenSSH_9.2p1 silent\r\n")
        received = b""
        while chunk := s.recv(65536):  # a socket timeout here fails the test
            received += chunk
    assert received.startswith(b"SSH-2.0-")


def test_authenticated_sessions_over_max_connections_get_one_line(server: Server) -> None:
    key = server.add_client(SN)
    server.configure("[server]\nmax_connections = 1\n")
    with running_embedded(server) as embedded:
        held = stalled(embedded, key, SN, "rsync --server -logDtpre.iLsfxCIvu . documents/")
        try:
            wait_for_log(server, "upload started", 1)
            r = embedded.ssh(key, "true", user=SN)
            assert r.returncode == 47
            assert r.stderr == \
                "xsbackup: server busy: all 1 SSH sessions are taken; try again later\n"
        finally:
            end(held)


def test_one_key_cannot_take_every_ssh_session(server: Server, tmp_path: Path) -> None:
    """Logged-in connections that never send a command hold SSH sessions; one client
    holds at most admission.max_sessions_per_client of them."""
    server.add_client(SN)
    server.add_client(OTHER)
    server.configure("[server]\nmax_connections = 4\n")
    with running_embedded(server) as embedded:
        idle = [paramiko_client(server, embedded.port, server.keys[SN], SN) for _ in range(5)]
        try:
            for client in idle:
                transport = client.get_transport()
                assert transport is not None
                transport.open_session(timeout=10)
            wait_for_log(server, f"client={SN} ssh session from 127.0.0.1 refused", 2)
            r = embedded.ssh(server.keys[SN], "true", user=SN)
            assert r.returncode == 58
            assert r.stderr == (f"xsbackup: client {SN} already has 3 sessions running; "
                                "try again when they end\n")
            r = backup(server, embedded, OTHER, tmp_path)
            assert r.returncode == 0, r.stderr
        finally:
            for client in idle:
                client.close()


def paramiko_client(server: Server, port: int, key: Path, user: str) -> paramiko.SSHClient:
    """A logged-in paramiko client that knows the server's host key."""
    client = paramiko.SSHClient()
    host_key = paramiko.Ed25519Key.from_private_key_file(
        str(server.root / "ssh" / "ssh_host_ed25519_key"))
    client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
    client.connect("127.0.0.1", port, username=user, key_filename=str(key),
                   look_for_keys=False, allow_agent=False, timeout=10)
    return client


def paramiko_exec(server: Server, port: int, key: Path, user: str,
                  command: bytes) -> tuple[int, bytes]:
    """Run ``command`` (raw bytes, which the ssh program cannot send) over a real
    paramiko client; returns the exit status and stderr."""
    client = paramiko_client(server, port, key, user)
    try:
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=10)
        channel.settimeout(30)
        channel.exec_command(command)
        err = channel.makefile_stderr().read()
        return channel.recv_exit_status(), err
    finally:
        client.close()


def test_nul_in_an_exec_command_is_one_refusal(server: Server, embedded: Sshd) -> None:
    key = server.add_client(SN)
    rc, err = paramiko_exec(server, embedded.port, key, SN, b"rsync --server\0 . documents/")
    assert rc == 40
    assert err == b"xsbackup: the command contains a NUL byte\n"
    assert "Traceback" not in (server.root / "log" / "xsbackup.log").read_text()


@pytest.mark.parametrize("at", ["not-a-time", "2026-13-45", "2026-01-01T25:00"])
def test_garbage_at_is_a_refusal_not_a_server_error(server: Server, embedded: Sshd,
                                                    tmp_path: Path, at: str) -> None:
    server.add_client(SN)
    assert backup(server, embedded, SN, tmp_path).returncode == 0
    postprocess.run_once(server.ctx())
    r = embedded.ssh(server.keys[SN], f"archive --volume documents --at {at}", user=SN)
    assert r.returncode == 40, r.stderr
    assert r.stderr == f"xsbackup: {at!r} is neither a snapshot id nor an ISO time\n"
    log = (server.root / "log" / "xsbackup.log").read_text()
    assert "request failed" not in log
    assert "Traceback" not in log


def stalled(embedded: Sshd, key: Path, user: str | None,
            command: str) -> subprocess.Popen[bytes]:
    """A client that runs ``command`` and then neither writes nor reads."""
    return subprocess.Popen([*embedded.ssh_base(key, user), "127.0.0.1", command],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def end(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        p.kill()
        p.communicate()


def wait_for_log(server: Server, text: str, count: int, deadline: float = 60) -> str:
    end = time.monotonic() + deadline
    while True:
        log = (server.root / "log" / "xsbackup.log").read_text()
        if log.count(text) >= count:
            return log
        assert time.monotonic() < end, f"{count} x {text!r} not logged in {deadline}s"
        time.sleep(0.1)


@pytest.mark.parametrize("via", ["embedded", "sshd"])
def test_stalled_downloads_of_one_client_leave_slots_for_others(
        server: Server, tmp_path: Path, via: str, request: pytest.FixtureRequest) -> None:
    """The embedded server refuses a client's fourth session itself; behind OpenSSH the
    forced command does."""
    ssh: Sshd = request.getfixturevalue(via)
    login = SN if via == "embedded" else None
    server.add_client(SN)
    server.add_client(OTHER)
    # Twelve logins at once: above max_startups' default start of 10, one could be dropped
    # before it logs in, which is another test's subject.
    server.configure('[server]\nmax_auth_failures = 3\nmax_startups = "20:30:60"\n')
    assert backup(server, ssh, SN, tmp_path, login=login).returncode == 0
    postprocess.run_once(server.ctx())
    sender = "rsync --server --sender -logDtpre.iLsfxCIvu . documents/latest/"
    procs = [stalled(ssh, server.keys[SN], login, sender) for _ in range(12)]
    try:
        deadline = time.monotonic() + 60
        while True:
            log = (server.root / "log" / "xsbackup.log").read_text()
            decided = log.count("download started") + log.count("3 sessions running")
            if decided >= 12:
                break
            assert time.monotonic() < deadline, log
            time.sleep(0.1)
        assert log.count("download started") == 3
        deadline = time.monotonic() + 30  # a refused client's ssh reports it soon after
        while sum(p.poll() is not None for p in procs) < 9:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = [p for p in procs if p.returncode is not None]
        assert len(refused) == 9
        for p in refused:
            assert p.returncode == 58
            assert p.stderr is not None
            assert p.stderr.read() == (f"xsbackup: client {SN} already has 3 sessions "
                                       "running; try again when they end\n").encode()
        r = backup(server, ssh, OTHER, tmp_path, login=None if via == "sshd" else "")
        assert r.returncode == 0, r.stderr
    finally:
        end(*procs)


def test_stalled_sessions_end_at_the_servers_io_timeout(server: Server, embedded: Sshd,
                                                        tmp_path: Path) -> None:
    server.add_client(SN)
    server.configure("[server]\nmax_auth_failures = 3\n[ingest]\ntimeout = 2\n")
    assert backup(server, embedded, SN, tmp_path).returncode == 0
    postprocess.run_once(server.ctx())
    upload = stalled(embedded, server.keys[SN], SN,
                     "rsync --server -logDtpre.iLsfxCIvu --timeout=0 . documents/")
    download = stalled(embedded, server.keys[SN], SN,
                       "rsync --server --sender -logDtpre.iLsfxCIvu . documents/latest/")
    try:
        assert upload.wait(timeout=60) == 30  # rsync's "timeout in data send/receive"
        assert download.wait(timeout=60) == 30
    finally:
        end(upload, download)
    r = backup(server, embedded, SN, tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_stalled_archive_stream_ends_at_the_io_timeout(server: Server, embedded: Sshd,
                                                        tmp_path: Path) -> None:
    server.add_client(SN)
    server.configure("[server]\nmax_auth_failures = 3\n[ingest]\ntimeout = 2\n")
    src = tmp_path / f"src-{SN}"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(16 << 20))  # more than every buffer between
    assert backup(server, embedded, SN, tmp_path).returncode == 0
    postprocess.run_once(server.ctx())
    reader = stalled(embedded, server.keys[SN], SN, "archive --volume documents")
    try:
        log = wait_for_log(server, "stalled", 1)
        assert f"client={SN} archive stalled" in log
    finally:
        end(reader)
    assert backup(server, embedded, SN, tmp_path).returncode == 0
