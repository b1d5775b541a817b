"""The forced command through ``serve``'s pre-loaded server (``cli.forkserver``): the
same snapshots, the same refusals byte for byte, the in-process path whenever the server
cannot take the connection, and no lock or zombie left when the forced command dies."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP, Server, Sshd, _local_rsh, local_push
from tests.integration.test_serve import start, stop
from xsbackup import layout
from xsbackup.locking import take_slot

pytestmark = pytest.mark.integration
SN = "SHF00FA57"
OTHER = "SHF00D15A"
UPLOAD = "rsync --server -logDtpre.iLsfxCIvu . documents/"
DEBUG = 'level = "debug"\n'
SERVED = "served by the forced command server"
SYSTEM_PYTHON = "/usr/bin/python3"  # any user may run it (the venv's may sit under /root)


def wait_for(cond: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def served_count(server: Server) -> int:
    log = server.root / "log" / "xsbackup.log"
    return log.read_text().count(SERVED) if log.exists() else 0


@pytest.fixture
def forkserver(server: Server) -> Iterator[subprocess.Popen[bytes]]:
    """``cli.forkserver`` for the state root, as ``serve`` runs it."""
    server.configure(f"[log]\n{DEBUG}")
    proc = subprocess.Popen([sys.executable, "-m", "xsbackup.cli.forkserver", "--root",
                             str(server.root)], stdin=subprocess.DEVNULL,
                            start_new_session=True)
    sock = Path(layout.forked_socket(server.root))
    wait_for(sock.exists)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


def forced(server: Server, client: str, command: str,
           **env: str) -> tuple[int, str, str]:
    """The forced command as sshd runs it: (exit code, stdout, stderr)."""
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "ssh-command", "--client",
                        client], capture_output=True, text=True, timeout=60, check=False,
                       stdin=subprocess.DEVNULL,
                       env={"PATH": os.environ["PATH"], "SSH_ORIGINAL_COMMAND": command,
                            "SSH_CONNECTION": "127.0.0.9 40000 127.0.0.1 22", **env})
    return r.returncode, r.stdout, r.stderr


def tree(base: Path) -> dict[str, tuple[int, bytes, int]]:
    """Every path's mode, content or link target, and how many names its inode has."""
    out = {}
    for p in sorted(base.rglob("*")):
        st = p.lstat()
        body = os.readlink(p).encode() if p.is_symlink() else \
            p.read_bytes() if p.is_file() else b""
        out[str(p.relative_to(base))] = (st.st_mode, body, st.st_nlink if p.is_file() else 0)
    return out


def test_backup_and_restore_over_openssh_take_serves_fast_path(
        server: Server, sshd: Sshd, tmp_path: Path) -> None:
    key = server.add_client(SN)
    server.configure(f"[log]\n{DEBUG}")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n" * 100)
    (src / "sub" / "b.bin").write_bytes(os.urandom(5000))
    os.link(src / "a.txt", src / "sub" / "a-link.txt")
    (src / "to-a").symlink_to("a.txt")
    os.chmod(src / "sub" / "b.bin", 0o640)
    served = start(server.root, "--no-ssh")
    try:
        wait_for(Path(layout.forked_socket(server.root)).exists)
        r = sshd.rsync(key, "-aH", f"{src}/", "127.0.0.1:documents/")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: server.store.snapshot_ids(SN, "documents"))
        out = tmp_path / "restored"
        r = sshd.rsync(key, "-aH", "127.0.0.1:documents/latest/", f"{out}/")
        assert r.returncode == 0, r.stderr
        assert served_count(server) == 2  # both connections: a fork of serve's server
    finally:
        assert stop(served) == 0
    assert tree(out) == tree(src)
    assert not Path(layout.forked_socket(server.root)).exists()  # stopped with serve


def test_the_embedded_ssh_servers_forced_command_takes_it_too(server: Server) -> None:
    key = server.add_client(SN)
    server.configure(f"[log]\n{DEBUG}")
    served = start(server.root)
    try:
        wait_for(Path(layout.forked_socket(server.root)).exists)
        r = subprocess.run([*shlex.split(served.ssh_cmd(key, SN)), "127.0.0.1", "list"],
                           capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, check=False)
        assert (r.returncode, r.stdout, r.stderr) == (0, "[]\n", "")
        assert served_count(server) == 1
    finally:
        assert stop(served) == 0


def test_forked_command_off_runs_each_forced_command_alone(server: Server) -> None:
    server.add_client(SN)
    server.configure(f"[server]\nforked_command = false\n[log]\n{DEBUG}")
    served = start(server.root, "--no-ssh")
    try:
        assert forced(server, SN, "list") == (0, "[]\n", "")
        assert served_count(server) == 0
        assert not Path(layout.forked_socket(server.root)).exists()
    finally:
        assert stop(served) == 0


CASES = {
    "unknown-client": ("NOSUCH", UPLOAD, {}),
    "disabled": (OTHER, UPLOAD, {}),
    "bad-command": (SN, "ls -la /", {}),
    "hostile-path": (SN, "rsync --server -logDtpre.iLsfxCIvu . ../../etc/", {}),
    "hostile-restore": (SN, "rsync --server --sender -logDtpre.iLsfxCIvu . "
                            "documents/../../../etc/", {}),
    "no-snapshot": (SN, "rsync --server --sender -logDtpre.iLsfxCIvu . documents/latest/",
                    {}),
    "over-the-cap": (SN, UPLOAD, {"XSBACKUP_ADMISSION_MAX_LOAD": "0"}),
    "busy": (SN, UPLOAD, {"XSBACKUP_ADMISSION_MAX_SESSIONS_PER_CLIENT": "1"}),
    "true-unknown": ("NOSUCH", "true", {}),
    "true": (SN, "true", {}),
}


def refusals(server: Server) -> dict[str, tuple[int, str, str]]:
    """Each case's (exit code, stdout, stderr); the load average a refusal quotes is
    read at the moment of asking, so it is replaced by ``LOAD`` (the rest must match)."""
    lock = take_slot(server.store.locks_dir, 1, name=f"session-{SN}")  # "busy"
    assert lock is not None
    try:
        seen = {name: forced(server, client, command, **env)
                for name, (client, command, env) in CASES.items()}
    finally:
        lock.release()
    return {name: (code, out, re.sub(r"load average \d+\.\d+ ", "load average LOAD ", err))
            for name, (code, out, err) in seen.items()}


def test_refusals_are_the_same_on_both_paths(server: Server,
                                             forkserver: subprocess.Popen[bytes]) -> None:
    server.add_client(SN)
    server.add_client(OTHER)
    server.cli("clients", "disable", OTHER)
    fast = refusals(server)
    assert served_count(server) == len(CASES) - 1  # all but the quick "true"
    os.kill(forkserver.pid, signal.SIGTERM)
    forkserver.wait(timeout=30)
    alone = refusals(server)
    assert served_count(server) == len(CASES) - 1
    assert fast == alone
    assert alone["over-the-cap"][2] == \
        "xsbackup: server busy: load average LOAD is over the limit 0\n"
    codes = {name: code for name, (code, _, _) in alone.items()}
    assert codes == {"unknown-client": 41, "disabled": 42, "bad-command": 40,
                     "hostile-path": 40, "hostile-restore": 40, "no-snapshot": 51,
                     "over-the-cap": 44, "busy": 58, "true-unknown": 41, "true": 0}
    assert all(err.count("\n") == 1 for code, _, err in alone.values() if code)


def test_stale_socket_or_none_runs_the_command_alone(
        server: Server, forkserver: subprocess.Popen[bytes], tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("one\n")
    os.kill(forkserver.pid, signal.SIGKILL)  # serve's server killed: its socket stays
    forkserver.wait(timeout=30)
    sock = Path(layout.forked_socket(server.root))
    assert sock.exists()
    r = local_push(server, SN, src)
    assert r.returncode == 0, r.stderr
    sock.unlink()
    assert forced(server, "NOSUCH", UPLOAD) == (41, "", "xsbackup: unknown client NOSUCH\n")
    assert served_count(server) == 0


def test_a_server_that_does_not_answer_is_not_waited_for(server: Server) -> None:
    """A server that is there but never answers (stopped, overloaded): the forced command
    gives up on it and runs alone, and the request never runs twice."""
    server.add_client(SN)
    sock = Path(layout.forked_socket(server.root))
    sock.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as mute:
        mute.bind(str(sock))
        mute.listen(8)  # connections wait in its backlog, never accepted
        assert forced(server, "NOSUCH", UPLOAD) == \
            (41, "", "xsbackup: unknown client NOSUCH\n")
        assert forced(server, SN, "list") == (0, "[]\n", "")


def test_a_peer_of_another_user_is_refused(server: Server,
                                           forkserver: subprocess.Popen[bytes]) -> None:
    """Only the service user's processes are served: a process of another user that
    reaches the socket is closed unanswered (and so runs the command itself)."""
    run = Path(layout.forked_socket(server.root)).parent
    os.chmod(run, 0o711)  # noqa: S103 - a mistaken chmod: SO_PEERCRED still holds
    os.chmod(run / "forced.sock", 0o777)  # noqa: S103 - the same
    fd = os.open(run, os.O_PATH | os.O_DIRECTORY)
    script = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect('/proc/self/fd/{fd}/forced.sock')\n"
        "body = b'/\\x004\\x00--root\\x00R\\x00ssh-command\\x00--client\\x00X'\n"
        "try:\n"
        "    s.sendall(b'xsbackup-forced-1 %d\\n' % len(body) + body)\n"
        "    answer = s.recv(64)\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    answer = b''\n"
        "print(os.getuid(), repr(answer))\n")
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", script], capture_output=True,
                           text=True, timeout=30, pass_fds=(fd,), check=False,
                           preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "65534 b''\n"  # connected, then closed without an answer
    assert served_count(server) == 0
    assert forkserver.poll() is None


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of ``pid``'s children."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append((int(entry), fields[0]))
    return out


def test_a_killed_forced_command_releases_the_lock(
        server: Server, forkserver: subprocess.Popen[bytes], tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "big"
    src.mkdir()
    for i in range(10):
        (src / f"blob{i}").write_bytes(os.urandom(200_000))
    rsh, env = _local_rsh(server, SN)
    slow = subprocess.Popen(["rsync", "-e", str(rsh), "-a", "--bwlimit=200", f"{src}/",
                             f"{SN}@local:documents/"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    current = server.store.volume_dir(SN, "documents") / "current"
    try:
        wait_for(lambda: current.is_dir() and any(current.iterdir()))
        assert forced(server, SN, UPLOAD)[0] == 48  # the session lock is held
        (front,) = [pid for pid, _ in children(slow.pid)]
        workers = [pid for pid, _ in children(forkserver.pid)]
        assert workers  # the transfer runs in a child of the server
        os.kill(front, signal.SIGKILL)  # the forced command is killed (sshd, an admin)
        # ... and so is the child that ran it for the server, as a signal to an in-process
        # forced command would have ended it; the server reaps it: no zombie.
        wait_for(lambda: not children(forkserver.pid))
    finally:
        slow.kill()  # the rest of a dropped connection: the client's end closes
        slow.wait()
    small = tmp_path / "small"
    small.mkdir()
    (small / "f").write_text("x\n")
    deadline = time.monotonic() + 30
    while True:  # the transfer's rsync ends once it notices the closed stream
        r = local_push(server, SN, small)
        if "already in progress" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stderr  # the lock was released with the killed session
    assert not children(forkserver.pid)


def test_the_socket_directory_is_the_service_users_alone(
        server: Server, forkserver: subprocess.Popen[bytes]) -> None:
    sock = Path(layout.forked_socket(server.root))
    st = sock.parent.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.geteuid()
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"not a request\n")
        assert s.recv(64) == b""  # no answer to anything else
    assert forkserver.poll() is None
