"""Per-serial system logins and the service account, with real users, sshd and rsync.

Run as root only. Each test makes its own service account (``useradd``, removed after),
a state root it owns, and runs xsbackup from a venv on the system Python, as a
deployment does: this test process's interpreter may live where the service account
cannot reach it (``/root``).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import xsbackup
from tests.conftest import TEST_LIMITS, free_port, running_sshd
from tests.integration.test_ingest_ssh import make_tree, same_content

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates system users: needs root"),
]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def system_venv() -> Iterator[Path]:
    """A venv on the system Python, world-readable, that imports this checkout (and the
    test venv's packages, built for the same Python minor version)."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(f"needs {SYSTEM_PYTHON} of Python {sys.version_info[:2]}")
    base = Path(tempfile.mkdtemp(prefix="xsb-sysvenv-", dir="/tmp"))
    mounts: list[Path] = []
    try:
        base.chmod(0o755)
        venv = base / "venv"
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python3*/site-packages"))
        ours = sysconfig.get_paths()["purelib"]
        package = Path(xsbackup.__file__).parent
        if not (_open_to_others(Path(ours)) and _open_to_others(package)):
            # The checkout (and the test venv in it) sits where the service account cannot
            # reach, e.g. a clone in a 0700 ``mktemp -d``: show it the packages through a
            # bind mount here, and this checkout's package as a copy ahead of them.
            mounted = base / "purelib"
            mounted.mkdir()
            subprocess.run(["mount", "--bind", ours, str(mounted)], check=True)
            mounts.append(mounted)
            # Read-only, so nothing through it (this fixture's clean-up included) can touch
            # the test venv.
            subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
            ours = str(mounted)
            skip = shutil.ignore_patterns("__pycache__")
            shutil.copytree(package, base / "src" / "xsbackup", ignore=skip)
            for mapped in ("_kit", "_hooks"):  # top-level restore/ and hooks/ (pyproject)
                spec = importlib.util.find_spec(f"xsbackup.{mapped}")
                assert spec is not None
                assert spec.submodule_search_locations
                shutil.copytree(spec.submodule_search_locations[0],
                                base / "src" / "xsbackup" / mapped, ignore=skip)
            (site / "0-xsbackup-checkout.pth").write_text(f"{base / 'src'}\n")
        (site / "xsbackup-under-test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        for name, module in (("xsbackup", "xsbackup.cli.main"),
                             ("xsbackup-login", "xsbackup.cli.login")):
            script = venv / "bin" / name
            script.write_text(f"#!{venv}/bin/python\nfrom {module} import main\nmain()\n")
            script.chmod(0o755)
        yield venv
    finally:
        for mounted in mounts:
            subprocess.run(["umount", str(mounted)], check=True)
        shutil.rmtree(base)  # only once unmounted: the test venv is behind the mount


def _open_to_others(path: Path) -> bool:
    """Whether an account that is neither the owner nor in the group can read ``path``:
    every directory on the way searchable by others, and ``path`` readable."""
    resolved = path.resolve()
    if not resolved.stat().st_mode & 0o004:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in resolved.parents)


@dataclass
class Deployment:
    """A service account, a state root it owns, and xsbackup on the system Python."""

    base: Path
    root: Path
    account: pwd.struct_passwd
    venv: Path

    def xsbackup(self, *args: str, as_service: bool = False) -> subprocess.CompletedProcess[str]:
        argv = [str(self.venv / "bin" / "xsbackup"), "--root", str(self.root), *args]
        if as_service:
            argv = ["runuser", "-u", self.account.pw_name, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _unique(prefix: str) -> str:
    # Other test runs on this machine share /etc/passwd: every name is this run's own.
    return f"{prefix}{secrets.token_hex(4)}"


@pytest.fixture
def deployment(system_venv: Path) -> Iterator[Deployment]:
    name = _unique("xsbt")
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                    "/nonexistent", "--shell", "/usr/sbin/nologin", name], check=True)
    base = Path(tempfile.mkdtemp(prefix="xsb-deploy-", dir="/tmp"))
    try:
        base.chmod(0o755)
        account = pwd.getpwnam(name)
        root = base / "state"
        root.mkdir()
        os.chown(root, account.pw_uid, account.pw_gid)
        d = Deployment(base, root, account, system_venv)
        r = d.xsbackup("init", as_service=True)
        assert r.returncode == 0, r.stderr
        # As every test's: a busy machine must not turn the transfer into a refusal.
        cfg = root / "xsbackup.toml"
        cfg.write_text("[admission]\n" + "".join(f"{k} = {v}\n"
                                                   for k, v in TEST_LIMITS.items()))
        os.chown(cfg, account.pw_uid, account.pw_gid)
        yield d
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["userdel", "--force", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture
def serial() -> Iterator[str]:
    sn = _unique("SHT").upper()
    yield sn
    subprocess.run(["userdel", "--force", sn], capture_output=True, check=False)


def keypair(base: Path, name: str) -> Path:
    key = base / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_ds_backup_logs_in_as_its_serial_with_the_service_accounts_ids(
        deployment: Deployment, serial: str, host_key: Path, tmp_path: Path) -> None:
    d = deployment
    key = keypair(d.base, "device")
    r = d.xsbackup("clients", "add", serial, "--pubkey", f"{key}.pub", "--system-user")
    assert r.returncode == 0, r.stderr
    login = pwd.getpwnam(serial)
    assert (login.pw_uid, login.pw_gid) == (d.account.pw_uid, d.account.pw_gid)
    assert login.pw_uid != 0
    assert login.pw_gid != 0
    # Run as root, the command wrote the state root as the service account.
    for path in [d.root, *d.root.rglob("*")]:
        assert path.lstat().st_uid == d.account.pw_uid, path
    with running_sshd(tmp_path / "sshd", host_key,
                      d.root / "ssh" / "authorized_keys") as (port, _):
        home = tmp_path / "xo"
        trees = {"datastore-current": make_tree(home / ".sugar/default/datastore"),
                 "power-logs": make_tree(home / "power-logs"),
                 "documents": make_tree(home / "Documents")}
        ssh = (f'ssh -F /dev/null -o "PasswordAuthentication no" -o "StrictHostKeyChecking no"'
               f" -i {key} -l {serial} -p {port} -o UserKnownHostsFile=/dev/null"
               " -o LogLevel=ERROR")
        for dest, src in trees.items():
            r = subprocess.run(["rsync", "-z", "-rlt", "--partial", "--delete",
                                "--timeout=160", "-e", ssh, f"{src}/", f"127.0.0.1:{dest}"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        flag = tmp_path / "flag"
        flag.write_bytes(b"")
        r = subprocess.run(["rsync", "-z", "-rlt", "--timeout", "10", "-T", "/tmp", "-e", ssh,
                            str(flag), f"127.0.0.1:/var/lib/ds-backup/completion/{serial}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    r = d.xsbackup("postprocess", "--once", as_service=True)
    assert r.returncode == 0, r.stderr
    clients = d.root / "clients" / serial
    assert os.getxattr(clients, "user.xsbackup.last_completion")
    for dest, vol in (("datastore-current", "datastore"), ("power-logs", "power-logs"),
                      ("documents", "documents")):
        same_content(trees[dest], clients / "volumes" / vol / "latest")
    r = d.xsbackup("clients", "remove", serial)
    assert r.returncode == 0, r.stderr
    with pytest.raises(KeyError):
        pwd.getpwnam(serial)
    assert d.root.joinpath("ssh", "authorized_keys").stat().st_uid == d.account.pw_uid


def test_service_user_names_the_account(deployment: Deployment, serial: str) -> None:
    d = deployment
    os.chown(d.root, 0, 0)  # a state root owned by root: the account must be named
    os.chmod(d.root, 0o711)  # noqa: S103 (traversal only: the account reaches what it owns)
    key = keypair(d.base, "device")
    r = d.xsbackup("clients", "add", serial, "--pubkey", f"{key}.pub", "--system-user")
    assert r.returncode == 12
    assert r.stderr.startswith(f"xsbackup: error: the owner of {d.root} is root (uid 0, gid 0)")
    assert len(r.stderr.splitlines()) == 1
    with pytest.raises(KeyError):
        pwd.getpwnam(serial)
    assert not (d.root / "clients" / serial).exists()  # refused before anything is written
    r = d.xsbackup("clients", "add", serial, "--pubkey", f"{key}.pub", "--system-user",
                   "--service-user", "root")
    assert r.returncode == 12
    assert "service account root is root" in r.stderr
    r = d.xsbackup("clients", "add", serial, "--pubkey", f"{key}.pub", "--system-user",
                   "--service-user", d.account.pw_name)
    assert r.returncode == 0, r.stderr
    login = pwd.getpwnam(serial)
    assert (login.pw_uid, login.pw_gid) == (d.account.pw_uid, d.account.pw_gid)


@pytest.mark.parametrize("which", ["ssh", "http"])
def test_serve_on_a_privileged_port_is_one_line(deployment: Deployment, which: str) -> None:
    d = deployment
    ports = {"ssh": str(free_port()), "http": str(free_port())}
    ports[which] = "1"  # below 1024: the service account may not bind it
    r = d.xsbackup("serve", "--ssh-port", ports["ssh"], "--http-port", ports["http"],
                   as_service=True)
    assert r.returncode == 19
    assert r.stderr == (f"xsbackup: error: cannot listen on 127.0.0.1:1 ({which}): "
                        "Permission denied; ports below 1024 need root or "
                        "CAP_NET_BIND_SERVICE\n")
