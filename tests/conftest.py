"""Shared fixtures: a scrubbed environment, a state root in tmp_path, real OpenSSH sshd.

Every network test uses 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from xsbackup import config
from xsbackup.clients.registry import Registry, write_authorized_keys
from xsbackup.context import Context
from xsbackup.store import Store, init_root

XSBACKUP = str(Path(sys.executable).with_name("xsbackup"))
TEST_LIMITS = {"max_load": 1000.0, "max_blocks_pct": 100.0, "max_inodes_pct": 100.0}


@pytest.fixture(autouse=True)
def _scrub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith("XSBACKUP_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XSBACKUP_ROOT", str(tmp_path / "state"))


def run_cli(*args: str, input: str | None = None) -> Result:
    """``xsbackup ARGS`` in this process (click's CliRunner), for tests of parsing, output
    and exit codes; a test that needs a real process (a signal, a crash, sshd's forced
    command, ``serve``) runs ``XSBACKUP`` instead."""
    from xsbackup.cli.main import cli

    return CliRunner().invoke(cli, list(args), input=input, prog_name="xsbackup",
                              catch_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A state root with helpers to register clients and write its config."""

    root: Path
    keydir: Path
    keys: dict[str, Path] = field(default_factory=dict)
    backend: str = "hardlink"  # the storage backend of the root

    @property
    def store(self) -> Store:
        return Store(self.root)

    def settings(self) -> config.Settings:
        return config.load(self.root, environ={})

    def ctx(self) -> Context:
        return Context.open(self.settings())

    def configure(self, text: str) -> None:
        """Write the configuration file. The tests own their load and disk limits: those
        ``text`` does not set are raised out of reach, so a busy machine never turns a
        test's transfer into a refusal."""
        unset = "".join(f"{k} = {v}\n" for k, v in TEST_LIMITS.items()
                        if not re.search(rf"^{k}\s*=", text, re.MULTILINE))
        if "[admission]\n" in text:
            text = text.replace("[admission]\n", "[admission]\n" + unset, 1)
        else:
            text = "[admission]\n" + unset + text
        (self.root / "xsbackup.toml").write_text(text)

    def add_client(self, serial: str, nickname: str = "") -> Path:
        key = self.keydir / f"id_{serial}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", serial, "-f",
                        str(key)], check=True)
        Registry(self.store).add(serial, (key.with_suffix(".pub")).read_text(), nickname)
        write_authorized_keys(Registry(self.store), XSBACKUP)
        self.keys[serial] = key
        return key

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> Result:
        """``xsbackup --root ROOT ARGS`` in this process (``run_cli``); ``check``: it must
        succeed, as ``xsbackup(check=True)``."""
        r = run_cli("--root", str(self.root), *args, input=input)
        if check:
            assert r.exit_code == 0, f"xsbackup {' '.join(args)}: {r.output}"
        return r

    def xsbackup(self, *args: str, check: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([XSBACKUP, "--root", str(self.root), *args], capture_output=True,
                              text=True, check=check, env=env)


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Server:
    """A state root in tmp_path, stored by the hardlink backend; parametrised indirectly
    with a backend name (``tests.backends.BACKENDS``), on a loop-mounted filesystem for
    that backend, recorded as ``init`` would."""
    backend = getattr(request, "param", "hardlink")
    root = tmp_path / "state"
    if backend != "hardlink":
        from tests.backends import backend_root

        root = backend_root(request, backend, tmp_path)
    init_root(root)
    if backend != "hardlink":
        from xsbackup.storage.choice import record

        record(Store(root), backend)
    return new_server(root, tmp_path / "keys", backend)


def new_server(root: Path, keydir: Path, backend: str = "hardlink") -> Server:
    """The ``Server`` of the initialised state root ``root``, with its keys in
    ``keydir`` (made here) and an empty configuration."""
    keydir.mkdir()
    server = Server(root, keydir, backend=backend)
    server.configure("")
    # The rsh stand-in is written now, before any test starts threads: a file being
    # written while another thread forks stays open for writing in that child until it
    # execs, and exec'ing the script meanwhile fails with ETXTBSY (rsync exit 14).
    _local_rsh(server, "")
    return server


@pytest.fixture(scope="session")
def host_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostkey")
    key = d / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _sshd_binary() -> str:
    for cand in ("/usr/sbin/sshd", shutil.which("sshd") or ""):
        if cand and os.path.exists(cand):
            return cand
    pytest.fail("OpenSSH sshd is not installed (apt-get install openssh-server)")


@dataclass
class Sshd:
    port: int
    log: Path
    user: str

    def ssh_base(self, key: Path, user: str | None = None) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "PasswordAuthentication=no",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", str(key),
                "-p", str(self.port), "-l", user or self.user]

    def rsh(self, key: Path, user: str | None = None) -> str:
        return " ".join(self.ssh_base(key, user))

    def ssh(self, key: Path, command: str | None, user: str | None = None,
            timeout: float = 30, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = [*self.ssh_base(key, user), *extra, "127.0.0.1"]
        if command is not None:
            argv.append(command)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def rsync(self, key: Path, *args: str, user: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rsync", "-e", self.rsh(key, user), *args],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def running_sshd(directory: Path, host_key: Path, authorized_keys: Path,
                 extra: tuple[str, ...] = (),
                 more_keys: tuple[Path, ...] = ()) -> Iterator[tuple[int, Path]]:
    """OpenSSH sshd on a free loopback port with its own config in ``directory``;
    yields (port, log). Shared by every test that needs a real sshd. ``more_keys``:
    further authorized_keys files (the fleet tests' admin key)."""
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    directory.mkdir(exist_ok=True)
    log = directory / "sshd.log"
    cfg = directory / "sshd_config"
    keys = " ".join(str(k) for k in (authorized_keys, *more_keys))
    cfg.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"PidFile {directory / 'sshd.pid'}", f"AuthorizedKeysFile {keys}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "StrictModes no", "UsePAM no", "LogLevel VERBOSE",
        "MaxStartups 50", "MaxSessions 50", *extra, "",
    ]))
    with log.open("wb") as log_fh:
        proc = subprocess.Popen([_sshd_binary(), "-D", "-e", "-f", str(cfg)],
                                stderr=log_fh, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {log.read_text()}")
            time.sleep(0.05)
    else:
        pytest.fail("sshd did not start")
    try:
        yield port, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def sshd(server: Server, host_key: Path, tmp_path: Path) -> Iterator[Sshd]:
    """OpenSSH sshd on a loopback port with its own config, host key and the generated
    authorized_keys of ``server``."""
    user = pwd.getpwuid(os.getuid()).pw_name
    with running_sshd(tmp_path / "sshd", host_key, server.root / "ssh" / "authorized_keys",
                      ("PermitRootLogin forced-commands-only",
                       "Subsystem sftp internal-sftp")) as (port, log):
        yield Sshd(port, log, user)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A private 48 MiB tmpfs with 4000 inodes: disk use that no other process changes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,nr_inodes=4000", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def tree_state(root: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    """Every path under root with (mode, size, mtime_ns, inode, content-or-link)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                body = os.readlink(p).encode()
            elif p.is_file():
                body = p.read_bytes()
            else:
                body = b""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                             st.st_ino, body)
    return out


def _local_rsh(server: Server, serial: str) -> tuple[Path, dict[str, str]]:
    """A tiny rsh stand-in that sets SSH_ORIGINAL_COMMAND the way sshd would and runs the
    real forced command for ``serial``, and the environment it needs."""
    rsh = server.keydir / "local-rsh"
    if not rsh.exists():
        # Written aside and renamed into place: concurrent pushes (threads) must never run
        # a half-written or not yet executable script (rsync would exit 14).
        tmp = rsh.with_name(f"local-rsh.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(
            "#!/bin/sh\n"
            'while [ $# -gt 0 ]; do case "$1" in -l) shift 2;; -*) shift;; *) break;; esac; done\n'
            "shift\n"
            'SSH_ORIGINAL_COMMAND="$*" exec "$XSB" --root "$XSB_ROOT" '
            'ssh-command --client "$XSB_SN"\n'
        )
        tmp.chmod(0o755)
        tmp.rename(rsh)
    return rsh, {**os.environ, "XSB": XSBACKUP, "XSB_ROOT": str(server.root), "XSB_SN": serial}


def local_push(server: Server, serial: str, src: Path, volume: str = "documents",
               *opts: str) -> subprocess.CompletedProcess[str]:
    """rsync through the real forced command without sshd (``_local_rsh``)."""
    rsh, env = _local_rsh(server, serial)
    return subprocess.run(["rsync", "-e", str(rsh), "-a", "--delete", *opts, f"{src}/",
                           f"{serial}@local:{volume}/"], capture_output=True, text=True,
                          env=env, timeout=120)


def local_pull(server: Server, serial: str, source: str, dest: Path,
               *opts: str) -> subprocess.CompletedProcess[str]:
    """rsync ``source`` (``documents/latest/``, ...) back through the real forced command."""
    rsh, env = _local_rsh(server, serial)
    return subprocess.run(["rsync", "-e", str(rsh), "-a", *opts, f"{serial}@local:{source}",
                           f"{dest}/"], capture_output=True, text=True, env=env, timeout=120)
