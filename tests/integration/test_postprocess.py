"""Post-processing: immutable history, crash safety, CJSON findings, parallel clients."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, local_push, tree_state
from xsbackup.snapshots import postprocess
from xsbackup.snapshots.postprocess import CRASH_POINTS
from xsbackup.snapshots.snapshot import read_facts

pytestmark = pytest.mark.integration
SN = "SHF00112233"


def history_state(server: Server, serial: str = SN, volume: str = "documents") -> dict:
    """Every visible snapshot: its tree (bytes, mode, mtime, inode) and its own xattrs."""
    out = {}
    for sid in server.store.snapshot_ids(serial, volume):
        d = server.store.snapshots_dir(serial, volume) / sid
        xattrs = {n: os.getxattr(d, n) for n in os.listxattr(d)}
        file_xattrs = {}
        for p in d.rglob("*"):
            if not p.is_symlink():
                file_xattrs[str(p.relative_to(d))] = {n: os.getxattr(p, n)
                                                      for n in os.listxattr(p)}
        out[sid] = (tree_state(d), xattrs, file_xattrs, d.stat().st_ino)
    return out


def run_pp(server: Server) -> dict[str, int]:
    return postprocess.run_once(server.ctx())


# The reflink backend's copies never share inodes, so its stats count every file as new.
@pytest.mark.parametrize("server", ["hardlink", "btrfs"], indirect=True)
def test_history_is_immutable_across_many_kinds_of_change(server: Server,
                                                          tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (src / name).write_text(f"{name} original\n")
    (src / "dir").mkdir()
    (src / "dir" / "e.bin").write_bytes(os.urandom(5000))
    changes = [
        lambda: os.chmod(src / "a.txt", 0o600),                         # chmod only
        lambda: os.utime(src / "b.txt", (1_000_000_000, 1_000_000_000)),  # touch only
        lambda: (src / "c.txt").write_text("c.txt changed content\n"),  # content
        (src / "d.txt").unlink,                                         # delete
        lambda: (src / "dir" / "new.txt").write_text("added\n"),        # add
        lambda: None,                                                   # no change at all
    ]
    assert local_push(server, SN, src).returncode == 0
    run_pp(server)
    seen = history_state(server)
    for change in changes:
        change()
        time.sleep(1.01)  # a new second: each snapshot gets its own plain id
        r = local_push(server, SN, src)
        assert r.returncode == 0, r.stderr
        run_pp(server)
        now = history_state(server)
        for sid, state in seen.items():
            assert now[sid] == state, f"snapshot {sid} changed"
        newest = server.store.snapshot_ids(SN, "documents")[-1]
        snap = server.store.snapshots_dir(SN, "documents") / newest
        assert sorted(str(p.relative_to(snap)) for p in snap.rglob("*")) == \
            sorted(str(p.relative_to(src)) for p in src.rglob("*"))
        seen = now
    assert len(seen) == len(changes) + 1
    last = server.store.snapshots_dir(SN, "documents") / server.store.snapshot_ids(
        SN, "documents")[-1]
    facts = read_facts(last)
    assert facts["new_bytes"] == 0  # the unchanged backup costs no new bytes
    assert facts["linked_files"] == facts["files"]


def _transfers(server: Server, tmp_path: Path, n: int) -> None:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for i in range(n):
        (src / f"f{i}.txt").write_text(f"round {i}\n")
        r = local_push(server, SN, src)
        assert r.returncode == 0, r.stderr
        time.sleep(1.01)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_every_step_then_recover(server: Server, tmp_path: Path, point: str) -> None:
    server.add_client(SN)
    _transfers(server, tmp_path, 2)
    env = {**os.environ, "XSBACKUP_CRASH_AT": point}
    crashed = subprocess.run([XSBACKUP, "--root", str(server.root), "postprocess", "--once"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
    store = server.store
    vol = store.volume_dir(SN, "documents")
    latest = store.latest_id(SN, "documents")
    if latest is not None:  # whatever is visible is complete
        assert "files" in read_facts(vol / "snapshots" / latest)
    recovered = server.cli("postprocess", "--once", "--json")
    assert recovered.exit_code == 0, recovered.stderr
    ids = store.snapshot_ids(SN, "documents")
    assert len(ids) == 2
    assert store.incoming_ids(SN, "documents") == []
    assert os.listdir(store.queue_dir) == []
    assert store.latest_id(SN, "documents") == ids[-1]
    for sid in ids:
        facts = read_facts(vol / "snapshots" / sid)
        assert facts["files"] == ids.index(sid) + 1
        assert facts["cjson"]["status"] == "ok"
    assert not [n for n in os.listdir(vol / "snapshots") if n.startswith(".")]


def test_lost_queue_entry_is_recovered(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    _transfers(server, tmp_path, 1)
    for name in os.listdir(server.store.queue_dir):
        os.unlink(server.store.queue_dir / name)  # as if ingest died before the queue write
    run_pp(server)
    assert len(server.store.snapshot_ids(SN, "documents")) == 1


def test_cjson_findings_flag_but_never_alter(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    server.configure("[postprocess]\ncjson_max_bytes = 2000\n")
    src = tmp_path / "ds"
    (src / "store").mkdir(parents=True)
    (src / "store" / "good.metadata").write_bytes(b'{"a":"x","b":1}')
    (src / "store" / "spaced.metadata").write_bytes(b'{"a": 1}')
    (src / "store" / "broken.metadata").write_bytes(b'{"a":')
    (src / "store" / "huge.cjson").write_bytes(b'"' + b"x" * 5000 + b'"')
    (src / "store" / "link.metadata").symlink_to("/etc/passwd")
    (src / "store" / "data.bin").write_bytes(b"\x00\x01 untouched")
    r = local_push(server, SN, src, "datastore")
    assert r.returncode == 0, r.stderr
    run_pp(server)
    (sid,) = server.store.snapshot_ids(SN, "datastore")
    snap = server.store.snapshots_dir(SN, "datastore") / sid
    for p in (src / "store").iterdir():
        if not p.is_symlink():
            assert (snap / "store" / p.name).read_bytes() == p.read_bytes()
    summary = read_facts(snap)["cjson"]
    assert summary["status"] == "flagged"
    assert summary["checked"] == 5
    assert summary["canonical"] == 1
    report = orjson.loads((server.store.reports_dir(SN) / "datastore" /
                           f"{sid}.cjson.json").read_bytes())
    by_path = {f["path"]: f for f in report["findings"]}
    assert by_path["store/spaced.metadata"]["status"] == "noncanonical"
    assert by_path["store/spaced.metadata"]["offset"] == 5
    assert by_path["store/broken.metadata"]["status"] == "invalid"
    assert by_path["store/huge.cjson"]["status"] == "too-large"
    assert "store/good.metadata" not in by_path
    # The symlink (stored inert by --fake-super as a plain file) is judged on its own
    # bytes, never by following it to /etc/passwd.
    assert by_path["store/link.metadata"]["status"] == "invalid"
    status = orjson.loads(server.cli("status", "--json").stdout)["clients"]
    assert status[0]["flagged"] == [f"datastore/{sid}"]
    assert status[0]["snapshot_count"] == 1


def test_twenty_clients_at_once_keep_per_client_order(server: Server, tmp_path: Path) -> None:
    serials = [f"SHF000000{i:02d}" for i in range(20)]
    for sn in serials:
        server.add_client(sn)

    def two_backups(sn: str) -> list[int]:
        src = tmp_path / sn
        src.mkdir()
        (src / "first").write_text("1\n")
        a = local_push(server, sn, src).returncode
        (src / "second").write_text("2\n")
        b = local_push(server, sn, src).returncode
        return [a, b]

    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(two_backups, serials))
    assert codes == [[0, 0]] * 20
    assert len(os.listdir(server.store.queue_dir)) == 40
    counts = run_pp(server)
    assert counts == {"promoted": 40}
    for sn in serials:
        first, second = server.store.snapshot_ids(sn, "documents")
        snaps = server.store.snapshots_dir(sn, "documents")
        assert sorted(os.listdir(snaps / first)) == ["first"]
        assert sorted(os.listdir(snaps / second)) == ["first", "second"]
        assert server.store.latest_id(sn, "documents") == second


def test_watch_wakes_on_new_work(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    server.configure("[postprocess]\nsweep_seconds = 3600\n")
    proc = subprocess.Popen([XSBACKUP, "--root", str(server.root), "postprocess", "--watch"])
    try:
        time.sleep(0.5)
        src = tmp_path / "src"
        src.mkdir()
        (src / "x").write_text("x\n")
        assert local_push(server, SN, src).returncode == 0
        deadline = time.monotonic() + 15
        while not server.store.snapshot_ids(SN, "documents"):
            assert time.monotonic() < deadline, "the watcher never promoted the transfer"
            time.sleep(0.1)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_snapshots_cli_json(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_bytes(b"12345")
    assert local_push(server, SN, src).returncode == 0
    run_pp(server)
    rows = orjson.loads(server.cli("snapshots", "list", SN, "--json").stdout)
    assert len(rows) == 1
    assert (rows[0]["files"], rows[0]["bytes"], rows[0]["new_bytes"]) == (1, 5, 5)
    assert rows[0]["latest"] is True
    shown = orjson.loads(server.cli("snapshots", "show", SN, rows[0]["id"], "--json").stdout)
    assert shown["origin"]["rsync_exit"] == 0
    missing = server.cli("snapshots", "show", SN, "2001-01-01T000000Z", check=False)
    assert missing.exit_code == 51
    assert "no snapshot 2001-01-01T000000Z" in missing.stderr


def test_link_limit_falls_back_to_a_copy(server: Server, tmp_path: Path) -> None:
    """A file at the filesystem's hardlink limit is copied, and the snapshot completes."""
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "popular.txt").write_text("linked everywhere\n")
    (src / "other.txt").write_text("other\n")
    assert local_push(server, SN, src).returncode == 0
    run_pp(server)
    (sid,) = server.store.snapshot_ids(SN, "documents")
    target = server.store.snapshots_dir(SN, "documents") / sid / "popular.txt"
    links = tmp_path / "links"
    links.mkdir()
    # ext4 allows 65000 links; fill the inode up (on the same filesystem as the state root).
    def fill() -> None:
        for n in range(70_000):
            os.link(target, links / f"l{n}")

    with pytest.raises(OSError, match="Too many links"):
        fill()
    time.sleep(1.01)
    r = local_push(server, SN, src)
    assert r.returncode == 0, r.stderr
    run_pp(server)
    first, second = server.store.snapshot_ids(SN, "documents")
    snaps = server.store.snapshots_dir(SN, "documents")
    assert (snaps / second / "popular.txt").read_text() == "linked everywhere\n"
    assert (snaps / second / "popular.txt").stat().st_ino != target.stat().st_ino
    assert (snaps / second / "other.txt").stat().st_ino == \
        (snaps / first / "other.txt").stat().st_ino


def test_links_against_a_transfer_not_yet_promoted(server: Server, tmp_path: Path) -> None:
    """A base still in incoming/ is linked too, even if it is promoted mid-transfer."""
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    (src / "same.bin").write_bytes(os.urandom(10_000))
    assert local_push(server, SN, src).returncode == 0
    time.sleep(1.01)
    (src / "new.txt").write_text("second\n")
    assert local_push(server, SN, src).returncode == 0  # no post-processing in between
    assert len(server.store.incoming_ids(SN, "documents")) == 2
    run_pp(server)
    first, second = (server.store.snapshots_dir(SN, "documents") / i
                     for i in server.store.snapshot_ids(SN, "documents"))
    assert (second / "same.bin").stat().st_ino == (first / "same.bin").stat().st_ino
    assert read_facts(second)["new_bytes"] == len("second\n")
