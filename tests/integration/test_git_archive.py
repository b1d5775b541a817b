"""``git archive --remote`` with the real git client, through the forced command under
OpenSSH and through the embedded SSH server; refusals checked with ``strace``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import XSBACKUP, Server, Sshd, local_push
from tests.integration.test_restore import fingerprint, sugar_datastore
from tests.integration.test_sshserver import running_embedded
from xsbackup.restore.gitarchive import FLUSH, pkt
from xsbackup.snapshots import postprocess
from xsbackup.store import snapshot_time

pytestmark = pytest.mark.integration
SN, OTHER = "SHF00112233", "SHF000OTHER"
SNAPSHOT_DIR_RE = re.compile(r"/snapshots/\d{4}-\d{2}-\d{2}T\d{6}Z")


@dataclass
class Pushed:
    server: Server
    old: str                        # the first snapshot's id
    old_tree: dict[str, tuple[object, ...]]
    new_tree: dict[str, tuple[object, ...]]


@pytest.fixture
def pushed(server: Server, tmp_path: Path) -> Pushed:
    """Two snapshots of SN's documents, a second apart, and OTHER's own snapshot."""
    server.add_client(SN)
    server.add_client(OTHER)
    src = sugar_datastore(tmp_path / "src", entries=3)
    assert local_push(server, SN, src).returncode == 0
    assert local_push(server, OTHER, src).returncode == 0
    postprocess.run_once(server.ctx())
    old_tree = fingerprint(src)
    (old,) = server.store.snapshot_ids(SN, "documents")
    time.sleep(1.05 - time.time() % 1)  # the next snapshot in a later second
    (src / "odd" / "suid").write_bytes(b"#!/bin/sh\necho changed\n")
    os.utime(src / "odd" / "suid", (1_650_000_000, 1_650_000_000))
    (src / "added").write_bytes(os.urandom(3000))
    (src / "odd" / "ñandú.txt").write_text("a non-ASCII name\n")
    assert local_push(server, SN, src).returncode == 0
    postprocess.run_once(server.ctx())
    assert len(server.store.snapshot_ids(SN, "documents")) == 2
    return Pushed(server, old, old_tree, fingerprint(src))


def git_env(sshd: Sshd, key: Path) -> dict[str, str]:
    return {**os.environ, "GIT_SSH_COMMAND": sshd.rsh(key).rsplit(" -p ", 1)[0],
            "HOME": str(key.parent)}


def git_archive(url: str, env: dict[str, str], *args: str,
                cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "archive", f"--remote={url}", *args], capture_output=True,
                          env=env, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL)


def untar(data: bytes, dest: Path, *tar_opts: str) -> dict[str, tuple[object, ...]]:
    dest.mkdir()
    r = subprocess.run(["tar", "-x", "-p", *tar_opts, "-C", str(dest)], input=data,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return fingerprint(dest)


def subset(tree: dict[str, tuple[object, ...]], *heads: str) -> dict[str, tuple[object, ...]]:
    return {k: v for k, v in tree.items() if k.split("/")[0] in heads}


def test_over_openssh_latest_id_and_time(pushed: Pushed, sshd: Sshd, tmp_path: Path) -> None:
    env = git_env(sshd, pushed.server.keys[SN])
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}/documents"
    when = snapshot_time(pushed.old).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, treeish, expected in (("latest", "latest", pushed.new_tree),
                                    ("head", "HEAD", pushed.new_tree),
                                    ("id", pushed.old, pushed.old_tree),
                                    ("time", when, pushed.old_tree)):
        r = git_archive(url, env, treeish)
        assert r.returncode == 0, r.stderr
        assert untar(r.stdout, tmp_path / name) == expected, name
    # tgz through the format hint git takes from --output, and --prefix
    out = tmp_path / "snap.tgz"
    r = git_archive(url, env, "--output", str(out), "--prefix=restored/", "latest")
    assert r.returncode == 0, r.stderr
    got = untar(out.read_bytes(), tmp_path / "tgz", "-z")
    got.pop("restored")
    assert got == {f"restored/{k}": v for k, v in pushed.new_tree.items()}
    with tarfile.open(out, "r:gz", encoding="utf-8", errors="surrogateescape") as tar:
        members = tar.getmembers()
    assert members[0].name == "restored"  # git's entry for the prefix directory
    assert members[0].isdir()
    odd = {m.name: m for m in members if m.name.startswith("restored/odd/")}
    # as git's tar: names in the ustar header as their bytes, no pax record for them
    for name in ("restored/odd/ñandú.txt", "restored/odd/bad-\udcff\udcfe-utf8"):
        assert "path" not in odd[name].pax_headers, name
        assert "hdrcharset" not in odd[name].pax_headers, name


def test_over_embedded_server_paths_and_zip(pushed: Pushed, tmp_path: Path) -> None:
    server = pushed.server
    with running_embedded(server) as embedded:
        env = git_env(embedded, server.keys[SN])
        url = f"ssh://{SN}@127.0.0.1:{embedded.port}/documents"
        r = git_archive(url, env, "latest")
        assert r.returncode == 0, r.stderr
        assert untar(r.stdout, tmp_path / "all") == pushed.new_tree
        assert b"remote: xsbackup: documents/" in r.stderr  # progress on band 2

        r = git_archive(url, env, "latest", "index", "odd/suid")
        assert r.returncode == 0, r.stderr
        expected = subset(pushed.new_tree, "index") | {
            k: pushed.new_tree[k] for k in ("odd", "odd/suid")}
        assert untar(r.stdout, tmp_path / "paths") == expected

        # zip of a subset; Info-ZIP's unzip restores symlinks, setuid (-K) and mtimes
        entry = next(k for k in pushed.new_tree if k.startswith("00/") and k.count("/") == 1)
        r = git_archive(url, env, "--format=zip", "latest", entry, "odd/suid",
                        "odd/link-to-passwd", "odd/relative-link")
        assert r.returncode == 0, r.stderr
        (tmp_path / "z.zip").write_bytes(r.stdout)
        (tmp_path / "zip").mkdir()
        u = subprocess.run(["unzip", "-q", "-K", str(tmp_path / "z.zip"), "-d",
                            str(tmp_path / "zip")], capture_output=True, timeout=60)
        assert u.returncode == 0, u.stderr
        got = fingerprint(tmp_path / "zip")
        want = {k: v for k, v in pushed.new_tree.items()
                if k.startswith(entry) or k in ("odd/suid", "odd/link-to-passwd",
                                                "odd/relative-link")}
        want |= {k: pushed.new_tree[k] for k in ("odd", entry.split("/")[0])}
        assert got == want
        assert got["odd/suid"][1] == 0o4755

        r = git_archive(url, env, "-v", "--prefix=p/", "latest", "odd/suid")
        assert r.returncode == 0, r.stderr
        assert b"remote: p/odd/suid" in r.stderr  # --verbose: the names on band 2

        r = git_archive(url, env, "--list")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [b"tar", b"tgz", b"tar.gz", b"zip"]

        r = git_archive(url, env, "no-such-snapshot")
        assert r.returncode != 0
        assert b"fatal: git archive: NACK 'no-such-snapshot' is neither" in r.stderr


# ---- refusals: nothing read --------------------------------------------------------------


@pytest.fixture
def traced(pushed: Pushed, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """git's ssh replaced by the forced command itself, run under strace: the git
    environment, and the trace file each run writes."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "openat.trace"
    ssh = tmp_path / "traced-ssh"
    ssh.write_text(
        "#!/bin/sh\n"
        'for last; do :; done\n'
        f'SSH_ORIGINAL_COMMAND="$last" exec strace -f -qq -e trace=open,openat,openat2 '
        f'-o {trace} {XSBACKUP} --root {pushed.server.root} ssh-command --client {SN}\n')
    ssh.chmod(0o755)
    return {**os.environ, "GIT_SSH_COMMAND": str(ssh), "GIT_SSH_VARIANT": "simple"}, trace


def opened_below(trace: Path, root: Path) -> list[str]:
    """The paths below the state root that the traced process opened."""
    return [line for line in trace.read_text().splitlines() if str(root) in line]


REFUSALS = [
    ("other client's volume", f"/clients/{OTHER}/documents", ("latest",),
     f"NACK {SN} may not read the snapshots of {OTHER}"),
    ("../ path", "/documents", ("latest", "../../../clients"), "contains '..'"),
    ("unknown treeish", "/documents", ("v1.0",), "'v1.0' is neither a snapshot id"),
    ("no such volume", "/nothing", ("latest",), "NACK"),
    ("not a volume path", "/documents/latest", ("latest",), "is not a volume"),
    ("--add-file", "/documents", ("--add-file=/etc/shadow", "latest"),
     "NACK options '--add-file' and '--remote' cannot be used together"),
    ("--mtime", "/documents", ("--mtime=now", "latest"), "NACK option --mtime"),
]


def test_refusals_read_nothing(pushed: Pushed, traced: tuple[dict[str, str], Path]) -> None:
    """Each refusal is git's ``fatal:`` line and exit 128, and the forced command opened
    no snapshot (nor anything of the other client) to decide it."""
    env, trace = traced
    for why, repo, args, message in REFUSALS:
        trace.unlink(missing_ok=True)
        r = git_archive(f"ssh://{SN}@host{repo}", env, *args)
        assert r.returncode == 128, (why, r.stderr)
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1, (why, lines)
        assert lines[0].startswith("fatal: git archive: NACK"), (why, lines)
        assert message in lines[0], (why, lines)
        assert r.stdout == b""
        opened = opened_below(trace, pushed.server.root)
        assert opened, "the trace saw nothing: it cannot prove anything"
        assert not [o for o in opened if SNAPSHOT_DIR_RE.search(o) or OTHER in o], (why, opened)


def test_options_git_itself_refuses(pushed: Pushed, traced: tuple[dict[str, str], Path]) -> None:
    """git's client keeps --remote, --exec and --output for itself, so only a hand-made
    client sends them: the forced command answers it as git's own server would."""
    env, trace = traced
    for arg, why in (("--remote=ssh://elsewhere/x", b"Unexpected option --remote"),
                     ("--exec=/bin/sh", b"the option '--exec' requires '--remote'"),
                     ("--output=/tmp/x", b"Unexpected option --output"),
                     ("-o", b"Unexpected option --output")):
        trace.unlink(missing_ok=True)
        request = pkt(f"argument {arg}\n".encode()) + pkt(b"argument latest\n") + FLUSH
        r = subprocess.run([env["GIT_SSH_COMMAND"], "host", "git-upload-archive '/documents'"],
                           input=request, capture_output=True, timeout=60)
        assert r.returncode == 40, r.stderr
        assert r.stdout == pkt(b"NACK " + why + b"\n"), r.stdout
        assert not [o for o in opened_below(trace, pushed.server.root)
                    if SNAPSHOT_DIR_RE.search(o)]
