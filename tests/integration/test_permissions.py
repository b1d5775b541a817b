"""Data at rest is the service account's alone: another local user (``nobody``) reads and
writes nothing under the state root; stored items are never group- or world-writable on
disk, while the client's own modes (0666, 0777, a symlink, setuid) come back exactly.

The state roots here live under a directory every user may traverse: pytest's own
``tmp_path`` is 0700, which would hide a loose root behind it."""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, local_pull, local_push
from tests.integration.test_restore import fingerprint
from xsbackup.storage.permissions import STAT_XATTR

pytestmark = pytest.mark.integration
SN = "SHF00112233"
ROOT = os.geteuid() == 0

# Run as another user: every path given on stdin that it could open for reading or
# writing, list, or create a file in.
PROBE = r"""
import json, os, stat, sys
got = {"read": [], "write": [], "list": [], "create": []}
for p in json.load(sys.stdin):
    try:
        st = os.lstat(p)
    except OSError:
        continue
    if stat.S_ISDIR(st.st_mode):
        try:
            os.listdir(p)
            got["list"].append(p)
        except OSError:
            pass
        try:
            os.close(os.open(os.path.join(p, ".probe"), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            got["create"].append(p)
        except OSError:
            pass
        continue
    for kind, flags in (("read", os.O_RDONLY), ("write", os.O_WRONLY)):
        try:
            os.close(os.open(p, flags | os.O_NOFOLLOW | os.O_NONBLOCK))
            got[kind].append(p)
        except OSError:
            pass
print(json.dumps(got))
"""


def as_nobody(paths: list[Path]) -> dict[str, list[str]]:
    if not ROOT:
        pytest.skip("acting as another user needs root")
    r = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", PROBE],
                       input=json.dumps([str(p) for p in paths]), capture_output=True,
                       text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def everything(root: Path) -> list[Path]:
    out = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        out += [Path(dirpath) / n for n in dirnames + filenames]
    return out


def pupil_tree(base: Path) -> Path:
    """A pupil's files with every mode a careless device has."""
    base.mkdir(parents=True)
    (base / "essay.txt").write_text("my essay\n")
    os.chmod(base / "essay.txt", 0o644)
    (base / "shared.txt").write_text("anyone may write this on the device\n")
    os.chmod(base / "shared.txt", 0o666)  # noqa: S103 - the case itself
    (base / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(base / "run.sh", 0o777)  # noqa: S103 - the case itself
    (base / "open").mkdir()
    (base / "open" / "inside.txt").write_text("in an open directory\n")
    os.chmod(base / "open", 0o777)  # noqa: S103 - the case itself
    (base / "link").symlink_to("/etc/passwd")
    (base / "suid").write_text("#!/bin/sh\n")
    os.chmod(base / "suid", 0o4755)  # noqa: S103 - the case itself
    for p in base.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1_600_000_000, 1_600_000_100))
    return base


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[Server]:
    """A server whose state root is made by ``xsbackup init`` (the administrator's way)
    under a directory every local user may traverse."""
    parent = Path(tempfile.mkdtemp(prefix="xsb-perm-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        keydir = tmp_path / "keys"
        keydir.mkdir()
        server = Server(parent / "state", keydir)
        server.xsbackup("init")
        server.configure("")
        yield server
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def snapshot_of(server: Server) -> Path:
    (sid,) = server.store.snapshot_ids(SN, "documents")[-1:]
    return server.store.snapshots_dir(SN, "documents") / sid


def test_another_local_user_reads_and_writes_nothing(open_server: Server,
                                                     tmp_path: Path) -> None:
    server = open_server
    server.add_client(SN)
    assert local_push(server, SN, pupil_tree(tmp_path / "src")).returncode == 0
    server.xsbackup("postprocess", "--once")
    paths = everything(server.root)
    snap = snapshot_of(server)
    for must in (snap / "essay.txt", snap / "link", server.root / "log" / "xsbackup.log"):
        assert must in paths
    assert as_nobody(paths) == {"read": [], "write": [], "list": [], "create": []}
    assert stat.S_IMODE(server.root.stat().st_mode) == 0o700


def test_stored_items_are_never_group_or_world_writable_and_restore_exactly(
        server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    src = pupil_tree(tmp_path / "src")
    expected = fingerprint(src)
    assert local_push(server, SN, src).returncode == 0
    server.xsbackup("postprocess", "--once")
    snap = snapshot_of(server)
    loose = {str(p.relative_to(snap)): oct(p.lstat().st_mode) for p in everything(snap)
             if p.lstat().st_mode & 0o022}
    assert loose == {}
    # The client's modes live in rsync's record, where restores read them.
    assert os.getxattr(snap / "shared.txt", STAT_XATTR).split()[0] == b"100666"

    pulled = tmp_path / "pulled"
    r = local_pull(server, SN, "documents/latest/", pulled)
    assert r.returncode == 0, r.stderr
    assert fingerprint(pulled) == expected

    untarred = tmp_path / "untarred"
    untarred.mkdir()
    archive = subprocess.Popen(
        [XSBACKUP, "--root", str(server.root), "ssh-command", "--client", SN],
        env={**os.environ, "SSH_ORIGINAL_COMMAND": "archive --volume documents"},
        stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-p", "-C", str(untarred)], stdin=archive.stdout,
                         capture_output=True, timeout=60)
    assert archive.wait(timeout=60) == 0
    assert archive.stdout is not None
    archive.stdout.close()
    assert tar.returncode == 0, tar.stderr
    if not ROOT:  # tar cannot restore setuid for an unprivileged user
        expected = {k: v for k, v in expected.items() if k != "suid"}
    assert {k: v for k, v in fingerprint(untarred).items() if k in expected} == expected

    # Unchanged files still hardlink to the tightened ones: nothing is stored twice.
    assert local_push(server, SN, src).returncode == 0
    server.xsbackup("postprocess", "--once")
    first, second = (server.store.snapshots_dir(SN, "documents") / sid
                     for sid in server.store.snapshot_ids(SN, "documents"))
    for name in ("essay.txt", "shared.txt", "run.sh", "link", "suid", "open/inside.txt"):
        assert (first / name).lstat().st_ino == (second / name).lstat().st_ino, name


def test_init_tightens_an_older_root_and_status_warns(server: Server,
                                                      tmp_path: Path) -> None:
    server.add_client(SN)
    src = pupil_tree(tmp_path / "src")
    assert local_push(server, SN, src).returncode == 0
    server.xsbackup("postprocess", "--once")
    snap = snapshot_of(server)
    # What an older version left: an open root, a stored 0666 file with no record.
    os.chmod(server.root, 0o755)  # noqa: S103 - the case itself
    os.removexattr(snap / "shared.txt", STAT_XATTR)
    os.chmod(snap / "shared.txt", 0o666)  # noqa: S103 - the case itself

    (warning,) = orjson.loads(server.cli("status", "--json").stdout)["warnings"]
    assert warning.startswith(f"state root {server.root} is mode 0755: every local user")
    text = server.xsbackup("status")
    assert f"warning: state root {server.root} is mode 0755" in text.stderr

    out = server.xsbackup("init").stdout
    assert "mode 0700; 1 stored items lost group or world write" in out
    assert stat.S_IMODE(server.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((snap / "shared.txt").stat().st_mode) == 0o644
    assert orjson.loads(server.cli("status", "--json").stdout)["warnings"] == []
    assert "warning" not in server.xsbackup("status").stderr
    pulled = tmp_path / "pulled"
    assert local_pull(server, SN, "documents/latest/", pulled).returncode == 0
    assert fingerprint(pulled) == fingerprint(src)


def test_a_root_group_may_read_but_no_more(server: Server) -> None:
    group = grp.getgrgid(1).gr_name  # "daemon" on Debian
    server.configure(f'[storage]\nroot_group = "{group}"\n')
    server.xsbackup("init")
    st = server.root.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, 1)
    assert orjson.loads(server.cli("status", "--json").stdout)["warnings"] == []
    os.chmod(server.root, 0o770)  # noqa: S103 - the case itself
    (warning,) = orjson.loads(server.cli("status", "--json").stdout)["warnings"]
    assert "is mode 0770: its group can write there; run xsbackup init to make it 0750" \
        in warning
    server.configure('[storage]\nroot_group = "no-such-group-xsb"\n')
    r = server.xsbackup("init", check=False)
    assert r.returncode != 0
    assert r.stderr == "xsbackup: error: storage.root_group: there is no group " \
                       "'no-such-group-xsb'\n"
