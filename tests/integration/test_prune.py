"""Prune and du on real trees: exclusivity, safety, crash recovery, the soft quota."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, local_push
from xsbackup.locking import client_lock, lock_directory
from xsbackup.retention import prune
from xsbackup.store import atomic_symlink, init_root
from xsbackup.units import format_bytes

pytestmark = pytest.mark.integration
SN = "SHF00112233"
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def make_history(server: Server, serial: str, days: list[int], volume: str = "documents",
                 size: int = 20_000, shared: int = 5) -> list[str]:
    """Snapshots ``days`` before NOW (oldest first), built as ingest would: unchanged files
    hardlinked to the previous snapshot, one new file per snapshot."""
    snaps = server.store.snapshots_dir(serial, volume)
    snaps.mkdir(parents=True, exist_ok=True)
    ids = []
    prev: Path | None = None
    for n, day in enumerate(sorted(days, reverse=True)):
        when = NOW - dt.timedelta(days=day, hours=n % 3)
        sid = when.strftime("%Y-%m-%dT%H%M%SZ")
        d = snaps / sid
        (d / "sub").mkdir(parents=True)
        for i in range(shared):
            name = f"sub/shared{i}.bin"
            if prev is not None:
                os.link(prev / name, d / name)
            else:
                (d / name).write_bytes(os.urandom(size))
        (d / f"own-{sid}.bin").write_bytes(os.urandom(size))
        ids.append(sid)
        prev = d
    atomic_symlink(f"snapshots/{ids[-1]}", server.store.volume_dir(serial, volume) / "latest")
    return ids


def brute_force(server: Server, serial: str) -> dict[str, int]:
    """Exclusive allocated bytes per snapshot, the slow obvious way."""
    where: dict[int, set[str]] = {}
    blocks: dict[int, int] = {}
    nlink: dict[int, int] = {}
    links: dict[int, int] = {}
    dirs: dict[str, int] = {}
    for volume in server.store.volumes(serial):
        for sid in server.store.snapshot_ids(serial, volume):
            root = server.store.snapshots_dir(serial, volume) / sid
            dirs[sid] = 0
            for p in root.rglob("*"):
                st = p.lstat()
                if p.is_dir():
                    dirs[sid] += st.st_blocks * 512
                    continue
                where.setdefault(st.st_ino, set()).add(sid)
                blocks[st.st_ino] = st.st_blocks * 512
                nlink[st.st_ino] = st.st_nlink
                links[st.st_ino] = links.get(st.st_ino, 0) + 1
    out = dict(dirs)
    for ino, sids in where.items():
        if len(sids) == 1 and links[ino] == nlink[ino]:
            (sid,) = sids
            out[sid] += blocks[ino]
    return out


def test_du_matches_brute_force(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    make_history(server, SN, [30, 20, 10, 5, 1])
    make_history(server, SN, [3, 2], volume="photos", size=50_000)
    # A link from outside the snapshots: that inode is never exclusive.
    first = server.store.snapshots_dir(SN, "documents") / server.store.snapshot_ids(
        SN, "documents")[0]
    os.link(next(first.glob("own-*.bin")), tmp_path / "outside-link")
    got = server.ctx().storage.measure(SN)
    expected = brute_force(server, SN)
    assert {s.id: s.exclusive for s in got.snapshots} == expected
    oldest = next(s for s in got.snapshots if s.id == first.name)
    assert oldest.shared == 20_000 + 5 * 20_000  # its own file (linked outside) + shared ones
    r = server.cli("du", SN, "--json")
    (row,) = orjson.loads(r.stdout)
    assert row["total"] == got.total
    assert [s["exclusive"] for s in row["snapshots"]] == [s.exclusive for s in got.snapshots]


def test_policy_prune_keeps_newest_and_reports(server: Server) -> None:
    server.add_client(SN)
    server.configure('[retention]\nkeep_within = "7d"\nkeep_first_monthly = 0\n')
    ids = make_history(server, SN, [200, 120, 100, 10, 3, 1])
    report = prune.policy_prune(server.ctx(), NOW)
    verdicts = {i.id: (i.keep, i.outcome) for i in report.items}
    assert [verdicts[i][0] for i in ids] == [False, False, False, False, True, True]
    assert verdicts[ids[0]][1] == "pruned"
    server.ctx().storage.purge()
    assert server.store.snapshot_ids(SN, "documents") == ids[-2:]
    assert os.listdir(server.store.trash_dir) == []
    # Whatever the policy, the newest survives.
    server.configure('[retention]\nkeep_within = ""\nkeep_first_monthly = 0\n')
    prune.policy_prune(server.ctx(), NOW + dt.timedelta(days=400))
    assert server.store.snapshot_ids(SN, "documents") == ids[-1:]
    assert server.store.latest_id(SN, "documents") == ids[-1]


def test_prune_skips_snapshots_being_read_and_running_transfers(server: Server) -> None:
    server.add_client(SN)
    server.configure('[retention]\nkeep_within = ""\nkeep_first_monthly = 0\n')
    ids = make_history(server, SN, [50, 40, 30])
    reader = lock_directory(server.store.snapshots_dir(SN, "documents") / ids[0], shared=True)
    try:
        report = prune.policy_prune(server.ctx(), NOW)
    finally:
        os.close(reader)
    outcome = {i.id: i.outcome for i in report.items}
    assert outcome[ids[0]] == "skipped: being read"
    assert outcome[ids[1]] == "pruned"
    transfer = client_lock(server.store.locks_dir, SN).acquire()
    try:
        report = prune.policy_prune(server.ctx(), NOW)
    finally:
        transfer.release()
    assert {i.outcome for i in report.items if not i.keep} == {"skipped: transfer in progress"}
    assert ids[0] in server.store.snapshot_ids(SN, "documents")


@pytest.mark.parametrize("point", ["prune-after-rename", "prune-during-delete"])
def test_killed_prune_is_finished_by_the_next_run(server: Server, point: str) -> None:
    server.add_client(SN)
    server.configure('[retention]\nkeep_within = ""\nkeep_first_monthly = 0\nkeep_last = 1\n')
    ids = make_history(server, SN, [9, 8, 7, 6], shared=40)
    env = {**os.environ, "XSBACKUP_CRASH_AT": point}
    r = subprocess.run([XSBACKUP, "--root", str(server.root), "prune", "--policy-only"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == -9
    # Nothing half-deleted outside trash/: every visible snapshot is whole.
    for sid in server.store.snapshot_ids(SN, "documents"):
        d = server.store.snapshots_dir(SN, "documents") / sid
        assert len(list((d / "sub").iterdir())) == 40
    assert os.listdir(server.store.trash_dir)
    server.cli("prune", "--policy-only")
    assert os.listdir(server.store.trash_dir) == []
    assert server.store.snapshot_ids(SN, "documents") == ids[-1:]


def test_over_quota_client_is_refused_and_status_says_why(server: Server,
                                                          tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(300_000))
    assert local_push(server, SN, src).returncode == 0
    server.cli("postprocess", "--once")
    server.cli("clients", "set-policy", SN, "--quota-bytes", "100KB")  # 97.7 KiB
    server.cli("du", SN)
    r = server.xsbackup("ssh-command", "--client", SN, check=False,
                        env={**os.environ, "SSH_ORIGINAL_COMMAND":
                             "rsync --server -logDtpre.iLsfxCIvu . documents/"})
    assert r.returncode == 49
    assert r.stderr.startswith(f"xsbackup: client {SN} is over its quota:")
    (row,) = orjson.loads(server.cli("status", "--json").stdout)["clients"]
    assert row["over_quota"] is True
    assert row["quota_bytes"] == 100_000
    assert "over its quota" in row["last_error"]
    # Sizes in IEC units, in the refusal line and in status.
    used = format_bytes(row["usage_bytes"])
    assert r.stderr == (f"xsbackup: client {SN} is over its quota: {used} of 97.7 KiB used; "
                        "ask the administrator to prune or raise the quota\n")
    (line,) = [x for x in server.cli("status").output.splitlines() if x.startswith(SN)]
    assert f" usage={used}/97.7 KiB over-quota " in line
    server.cli("clients", "set-policy", SN, "--quota-bytes", "0")
    assert local_push(server, SN, src).returncode == 0


def test_set_policy_is_validated_and_applied(server: Server) -> None:
    server.add_client(SN)
    bad = server.cli("clients", "set-policy", SN, "--keep-within", "soon", check=False)
    assert bad.exit_code == 3
    server.cli("clients", "set-policy", SN, "--keep-daily", "2", "--keep-within", "",
               "--keep-first-monthly", "0")
    ids = make_history(server, SN, [5, 4, 3, 2, 1])
    report = prune.policy_prune(server.ctx(), NOW, dry_run=True)
    kept = [i.id for i in report.items if i.keep]
    assert kept == ids[-2:]
    assert server.store.snapshot_ids(SN, "documents") == ids  # dry run deleted nothing


def test_soft_quota_on_a_real_small_filesystem(small_fs: Path, tmp_path: Path) -> None:
    root = small_fs / "state"
    init_root(root)
    keydir = tmp_path / "k"
    keydir.mkdir()
    server = Server(root, keydir)
    sizes = {"SHFHEAVY001": 400_000, "SHFMEDIUM01": 200_000, "SHFLIGHT001": 30_000}
    for serial, size in sizes.items():
        server.add_client(serial)
        make_history(server, serial, [9, 8, 7, 6, 5, 4, 3, 2, 1], size=size, shared=2)
    server.configure("[quota]\nsoft_quota_pct = 10\n")
    before = os.statvfs(root)
    used_before = (before.f_blocks - before.f_bfree) * before.f_frsize
    assert prune.over_quota(server.ctx())[0]
    report = prune.quota_trim(server.ctx())
    assert report.quota["result"] == "under quota"
    assert not prune.over_quota(server.ctx())[0]
    after = os.statvfs(root)
    freed = used_before - (after.f_blocks - after.f_bfree) * after.f_frsize
    assert abs(report.freed_estimate - freed) <= 0.05 * freed
    trimmed = [i.client for i in report.items]
    assert trimmed[0] == "SHFHEAVY001"  # heaviest first
    assert "SHFLIGHT001" not in trimmed  # under its fair share
    for serial in sizes:
        ids = server.store.snapshot_ids(serial, "documents")
        assert ids, serial
        assert server.store.latest_id(serial, "documents") == ids[-1]
    shutil.rmtree(root, ignore_errors=True)
