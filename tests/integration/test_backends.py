"""The storage backends end to end on real filesystems: hardlink on tmp_path, btrfs and
reflink on loop-mounted btrfs and XFS images (``tests.backends``; skipped with the
reason without root or loop devices). Ingest, post-processing, restore, prune and kills
at every step, on each backend."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.backends import BACKENDS, loop_mount, unmount
from tests.conftest import XSBACKUP, Server, Sshd, _local_rsh, local_pull, local_push, run_cli
from xsbackup.snapshots import postprocess, usage
from xsbackup.snapshots.snapshot import read_facts

pytestmark = pytest.mark.integration
SN = "SBK00112233"
VOL = "documents"
EVERY = pytest.mark.parametrize("server", BACKENDS, indirect=True)
SNAPSHOTTING = pytest.mark.parametrize("server", ["btrfs", "reflink"], indirect=True)


def push(server: Server, src: Path) -> None:
    r = local_push(server, SN, src)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    (src / "b.txt").write_text("bravo\n")
    (src / "d").mkdir()
    (src / "d" / "c.bin").write_bytes(os.urandom(20_000))
    os.chmod(src / "a.txt", 0o664)
    os.symlink("a.txt", src / "link")
    return src


def state(top: Path) -> dict[str, tuple[int, int, int, bytes, dict[str, bytes]]]:
    """Every path: (mode, size, mtime, content or link target, xattrs)."""
    out = {}
    for p in [top, *sorted(top.rglob("*"))]:
        st = p.lstat()
        body = os.readlink(p).encode() if p.is_symlink() else \
            p.read_bytes() if p.is_file() else b""
        xattrs = {} if p.is_symlink() else {n: os.getxattr(p, n) for n in os.listxattr(p)}
        out[str(p.relative_to(top))] = (st.st_mode, st.st_size, st.st_mtime_ns, body, xattrs)
    return out


def client_view(top: Path) -> dict[str, tuple[int, int, bytes]]:
    """What a restore must give back: modes, mtimes (not of symlinks; of directories to
    the second, rsync's default precision, which the hardlink backend's ingest keeps)
    and contents."""
    return {k: (v[0], 0 if stat.S_ISLNK(v[0]) else
                v[2] // 10**9 if stat.S_ISDIR(v[0]) else v[2], v[3])
            for k, v in state(top).items() if k != "."}


def contents(top: Path) -> dict[str, bytes]:
    """Names and contents of a tree (a stored symlink is a file holding its target)."""
    return {k: v[3] for k, v in state(top).items() if k != "."}


def snap(server: Server, sid: str) -> Path:
    return server.store.snapshots_dir(SN, VOL) / sid


@EVERY
def test_history_stays_put_and_restores_exactly(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    src = source(tmp_path)
    push(server, src)
    (first,) = server.store.snapshot_ids(SN, VOL)
    before = state(snap(server, first))
    # A later transfer that chmods, touches and rewrites must not reach the old snapshot.
    os.chmod(src / "a.txt", 0o600)
    os.utime(src / "b.txt", (1_000_000_000, 1_000_000_000))
    (src / "d" / "c.bin").write_bytes(os.urandom(20_000))
    os.utime(src / "d" / "c.bin", (2_000_000_000, 2_000_000_000))  # not the same second
    push(server, src)
    ids = server.store.snapshot_ids(SN, VOL)
    assert len(ids) == 2
    assert ids[0] == first
    assert state(snap(server, first)) == before
    assert read_facts(snap(server, first))["files"] == 4
    dest = tmp_path / "restored"
    dest.mkdir()
    r = local_pull(server, SN, f"{VOL}/latest/", dest)
    assert r.returncode == 0, r.stderr
    assert client_view(dest) == client_view(src)
    status = orjson.loads(server.cli("status", "--json").stdout)
    assert status["storage"]["name"] == server.backend


@pytest.mark.parametrize("server", ["btrfs"], indirect=True)
def test_btrfs_snapshot_files_refuse_change_even_as_root(server: Server,
                                                         tmp_path: Path) -> None:
    server.add_client(SN)
    push(server, source(tmp_path))
    top = snap(server, server.store.snapshot_ids(SN, VOL)[0])
    f = top / "a.txt"
    for change in (lambda: f.open("ab").close(), lambda: os.chmod(f, 0o600),
                   lambda: os.utime(f, (1, 1)), lambda: (top / "new").write_text("x"),
                   lambda: os.setxattr(top, "user.xsbackup.files", b"0")):
        with pytest.raises(OSError, match="Read-only file system") as e:
            change()
        assert e.value.errno == errno.EROFS
    assert server.store.incoming_ids(SN, VOL) == []


@pytest.mark.parametrize("server", ["reflink"], indirect=True)
def test_reflink_snapshot_files_are_read_only_and_keep_client_modes(server: Server,
                                                                    tmp_path: Path) -> None:
    server.add_client(SN)
    src = source(tmp_path)
    push(server, src)
    top = snap(server, server.store.snapshot_ids(SN, VOL)[0])
    assert not stat.S_IMODE((top / "a.txt").stat().st_mode) & 0o222
    with pytest.raises(PermissionError):  # immutable, even for root
        (top / "a.txt").open("ab").close()
    with pytest.raises(PermissionError):
        os.chmod(top / "a.txt", 0o600)
    dest = tmp_path / "restored"
    dest.mkdir()
    assert local_pull(server, SN, f"{VOL}/latest/", dest).returncode == 0
    assert stat.S_IMODE((dest / "a.txt").stat().st_mode) == 0o664


@EVERY
def test_prune_deletes_and_frees(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    server.configure('[retention]\nkeep_within = ""\nkeep_first_monthly = 0\nkeep_last = 1\n')
    src = source(tmp_path)
    for i in range(3):
        (src / f"n{i}.bin").write_bytes(os.urandom(30_000))
        push(server, src)
    ids = server.store.snapshot_ids(SN, VOL)
    du = orjson.loads(server.cli("du", SN, "--json").stdout)[0]
    assert [s["id"] for s in du["snapshots"]] == ids
    assert du["method"] == {"hardlink": "walk", "btrfs": "btrfs filesystem du",
                            "reflink": "fiemap extents"}[server.backend]
    server.cli("prune", "--policy-only")
    assert server.store.snapshot_ids(SN, VOL) == ids[-1:]
    assert server.store.latest_id(SN, VOL) == ids[-1]
    assert os.listdir(server.store.trash_dir) == []
    assert not (server.root / "deleting").exists() or not os.listdir(server.root / "deleting")


@SNAPSHOTTING
def test_killed_mid_transfer_resumes_without_leftovers(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    src = source(tmp_path)
    push(server, src)
    (src / "big.bin").write_bytes(os.urandom(400_000))
    rsh, env = _local_rsh(server, SN)
    client = subprocess.Popen(["rsync", "-e", str(rsh), "-a", "--delete", "--bwlimit=40",
                               f"{src}/", f"{SN}@local:{VOL}/"], env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    current = server.store.volume_dir(SN, VOL) / "current"
    deadline = time.monotonic() + 30
    while not [n for n in os.listdir(current) if n.startswith(".big.bin.")]:
        assert time.monotonic() < deadline, "the transfer never started writing"
        time.sleep(0.05)
    os.killpg(client.pid, signal.SIGKILL)  # the client, the forced command and its rsync
    client.wait()
    time.sleep(0.2)
    assert len(server.store.snapshot_ids(SN, VOL)) == 1
    assert server.store.incoming_ids(SN, VOL) == []
    push(server, src)
    newest = snap(server, server.store.snapshot_ids(SN, VOL)[-1])
    assert contents(newest) == contents(src)
    assert not list(newest.rglob(".*"))


@SNAPSHOTTING
def test_killed_after_the_snapshot_is_recovered(server: Server, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server.add_client(SN)
    src = source(tmp_path)
    monkeypatch.setenv("XSBACKUP_CRASH_AT", "after-snapshot")
    assert local_push(server, SN, src).returncode != 0
    monkeypatch.delenv("XSBACKUP_CRASH_AT")
    assert server.store.snapshot_ids(SN, VOL) == []
    postprocess.run_once(server.ctx())  # the orphan in incoming/ is queued and promoted
    (sid,) = server.store.snapshot_ids(SN, VOL)
    assert contents(snap(server, sid)) == contents(src)
    (src / "later.txt").write_text("later\n")
    push(server, src)
    assert contents(snap(server, server.store.snapshot_ids(SN, VOL)[-1])) == contents(src)


@SNAPSHOTTING
@pytest.mark.parametrize("point", ["after-xattrs", "after-rename", "after-latest"])
def test_killed_mid_promotion_is_finished(server: Server, tmp_path: Path, point: str) -> None:
    server.add_client(SN)
    src = source(tmp_path)
    assert local_push(server, SN, src).returncode == 0
    crashed = subprocess.run([XSBACKUP, "--root", str(server.root), "postprocess", "--once"],
                             env={**os.environ, "XSBACKUP_CRASH_AT": point},
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -9, crashed.stderr
    for sid in server.store.snapshot_ids(SN, VOL):  # whatever is visible is whole
        assert "files" in read_facts(snap(server, sid))
    server.cli("postprocess", "--once")
    (sid,) = server.store.snapshot_ids(SN, VOL)
    assert server.store.incoming_ids(SN, VOL) == []
    assert server.store.latest_id(SN, VOL) == sid
    assert contents(snap(server, sid)) == contents(src)


# The reflink backend deletes as the hardlink one does (tests/integration/test_prune.py);
# its purge also clears the immutable attribute first.
@pytest.mark.parametrize(("server", "point"), [("btrfs", "prune-after-rename"),
                                               ("btrfs", "prune-during-delete"),
                                               ("reflink", "prune-during-delete")],
                         indirect=["server"])
def test_killed_mid_delete_is_finished(server: Server, tmp_path: Path, point: str) -> None:
    server.add_client(SN)
    server.configure('[retention]\nkeep_within = ""\nkeep_first_monthly = 0\nkeep_last = 1\n')
    src = source(tmp_path)
    for i in range(2):
        (src / f"n{i}.txt").write_text(f"{i}\n")
        push(server, src)
    ids = server.store.snapshot_ids(SN, VOL)
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "prune", "--policy-only"],
                       env={**os.environ, "XSBACKUP_CRASH_AT": point}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    assert server.store.snapshot_ids(SN, VOL) == ids[-1:]
    assert contents(snap(server, ids[-1])) == contents(src)
    server.cli("prune", "--policy-only")
    assert os.listdir(server.store.trash_dir) == []
    assert not (server.root / "deleting").exists() or not os.listdir(server.root / "deleting")


def test_init_chooses_records_and_refuses_a_switch(tmp_path: Path) -> None:
    got = {kind: loop_mount(kind, 320 << 20) for kind in ("btrfs", "reflink")}
    try:
        for kind, mount in got.items():
            if isinstance(mount, str):
                pytest.skip(mount)
            root = str(mount[1] / "state")
            r = run_cli("--root", root, "init")
            assert r.exit_code == 0, r.output
            assert f"storage backend {kind}" in r.output
            assert f"storage.recorded_backend = '{kind}'" in \
                run_cli("--root", root, "config").output
            r = run_cli("--root", root, "init", "--backend", "hardlink")
            assert r.exit_code == 25, r.output
        plain = str(tmp_path / "plain")
        r = run_cli("--root", plain, "init", "--backend", "btrfs")
        assert r.exit_code == 24
        assert "not on btrfs" in r.output
        assert run_cli("--root", plain, "init").exit_code == 0
        Path(plain, "xsbackup.toml").write_text('[storage]\nbackend = "btrfs"\n')
        r = run_cli("--root", plain, "status")
        assert r.exit_code == 25
        assert "stored by the hardlink backend" in r.output
    finally:
        for mount in got.values():
            if not isinstance(mount, str):
                unmount(*mount)


def test_missing_btrfs_progs_is_a_clear_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from xsbackup.errors import BackendUnavailable
    from xsbackup.storage.btrfs import btrfs

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="btrfs-progs"):
        btrfs("--version", why="test")


def test_fair_share_quota_on_btrfs(tmp_path: Path) -> None:
    from tests.conftest import new_server
    from xsbackup.retention import prune
    from xsbackup.storage.choice import record
    from xsbackup.store import Store, init_root

    got = loop_mount("btrfs", 256 << 20)
    if isinstance(got, str):
        pytest.skip(got)
    try:
        root = got[1] / "state"
        init_root(root)
        record(Store(root), "btrfs")
        server = new_server(root, tmp_path / "keys", "btrfs")
        server.configure('[quota]\nsoft_quota_pct = 70\n[retention]\nkeep_within = ""\n')
        rounds = {"SBKHEAVY001": (6, 20 << 20), "SBKMEDIUM01": (3, 10 << 20),
                  "SBKLIGHT001": (1, 1 << 20)}
        for serial, (n, size) in rounds.items():
            server.add_client(serial)
            src = tmp_path / serial
            src.mkdir()
            for _ in range(n):  # each round replaces the client's one big file
                (src / "blob.bin").write_bytes(os.urandom(size))
                r = local_push(server, serial, src)
                assert r.returncode == 0, r.stderr
            postprocess.run_once(server.ctx())
        over, use = prune.over_quota(server.ctx())
        assert over, use
        assert server.ctx().storage.measure("SBKHEAVY001").snapshots[0].exclusive >= 20 << 20
        report = prune.quota_trim(server.ctx())
        assert report.quota["result"] == "under quota", report.quota
        assert not prune.over_quota(server.ctx())[0]
        trimmed = [i.client for i in report.items]
        assert set(trimmed) == {"SBKHEAVY001"}  # the heaviest, alone
        heavy = server.store.snapshot_ids("SBKHEAVY001", VOL)
        assert 1 <= len(heavy) < 6
        assert [i.id for i in report.items] == sorted(i.id for i in report.items)  # oldest
        assert server.store.latest_id("SBKHEAVY001", VOL) == heavy[-1]
        assert len(server.store.snapshot_ids("SBKMEDIUM01", VOL)) == 3
    finally:
        unmount(*got)


@pytest.mark.parametrize("server", ["btrfs"], indirect=True)
def test_a_client_that_does_not_delete_gets_only_what_it_sent(server: Server,
                                                               tmp_path: Path) -> None:
    server.add_client(SN)
    src = source(tmp_path)
    rsh, env = _local_rsh(server, SN)
    for _ in range(2):
        r = subprocess.run(["rsync", "-e", str(rsh), "-a", f"{src}/", f"{SN}@local:{VOL}/"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        postprocess.run_once(server.ctx())
        (src / "b.txt").unlink(missing_ok=True)  # gone before the second transfer
    first, second = server.store.snapshot_ids(SN, VOL)
    assert (snap(server, first) / "b.txt").exists()
    assert contents(snap(server, second)) == contents(src)


def test_btrfs_usage_from_qgroups_when_quotas_are_on(tmp_path: Path) -> None:
    from tests.conftest import new_server
    from xsbackup.storage.choice import record
    from xsbackup.store import Store, init_root

    got = loop_mount("btrfs", 256 << 20)
    if isinstance(got, str):
        pytest.skip(got)
    try:
        subprocess.run(["btrfs", "quota", "enable", str(got[1])], check=True)
        root = got[1] / "state"
        init_root(root)
        record(Store(root), "btrfs")
        server = new_server(root, tmp_path / "keys", "btrfs")
        server.add_client(SN)
        src = source(tmp_path)
        for _ in range(2):  # each snapshot holds its own version of blob.bin
            (src / "blob.bin").write_bytes(os.urandom(1 << 20))
            push(server, src)
        use = server.ctx().storage.measure(SN)
        assert use.method == "btrfs qgroups"
        assert use.snapshots[0].exclusive >= 1 << 20
        assert use.total >= 2 << 20
    finally:
        unmount(*got)


@EVERY
def test_usage_is_measured_once_between_transfers(server: Server, tmp_path: Path) -> None:
    """A finished transfer leaves nothing pending (btrfs and reflink keep ``current/``
    for the next one): ``du``, prune and the quota read the cached figures."""
    server.add_client(SN)
    push(server, source(tmp_path))
    seen: list[str] = []
    first = usage.cached(server.ctx(), SN, progress=lambda v, sid: seen.append(sid))
    assert seen  # measured...
    seen.clear()
    again = usage.cached(server.ctx(), SN, progress=lambda v, sid: seen.append(sid))
    assert seen == []  # ...once
    assert again == first


@EVERY
def test_newly_excluded_and_protected_files_leave_later_snapshots(server: Server, sshd: Sshd,
                                                                   tmp_path: Path) -> None:
    """A snapshot holds exactly what the client sent, on every backend: a file it now
    excludes, or protects from deletion with a ``P`` rule after removing it, is in the
    older snapshots only (the hardlink backend's fresh tree; the others' ``R *`` rule)."""
    key = server.add_client(SN)
    src = source(tmp_path)
    (src / "d" / "old.log").write_text("log\n")
    (src / "gone.txt").write_text("removed before the second backup\n")
    dest = f"{SN}@127.0.0.1:{VOL}/"
    r = sshd.rsync(key, "-a", "--delete", f"{src}/", dest)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    first_view = contents(snap(server, server.store.snapshot_ids(SN, VOL)[0]))
    (src / "gone.txt").unlink()
    r = sshd.rsync(key, "-a", "--delete", "--exclude=*.log", "--filter=P gone.txt",
                   f"{src}/", dest)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    first, second = server.store.snapshot_ids(SN, VOL)
    assert contents(snap(server, first)) == first_view
    assert {"d/old.log", "gone.txt"} <= set(first_view)
    expected = {k: v for k, v in contents(src).items() if not k.endswith(".log")}
    assert contents(snap(server, second)) == expected
