"""The state root's layout, names and ids, and its atomic writes, on real files."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from xsbackup.errors import InvalidName, StateRootError
from xsbackup.store import (
    LAYOUT_DIRS,
    Store,
    atomic_symlink,
    atomic_write,
    check_client,
    check_snapshot_id,
    check_volume,
    init_root,
    iter_clients,
    snapshot_id_for,
    snapshot_sort_key,
    snapshot_time,
)

SN = "SHF00112233"


def test_init_creates_the_layout_idempotently(tmp_path: Path) -> None:
    root = tmp_path / "state"
    with pytest.raises(StateRootError, match="not an xsbackup state root"):
        Store(root).require()
    store = init_root(root)
    assert sorted(os.listdir(root)) == sorted(LAYOUT_DIRS)
    assert (root / "locks").stat().st_mode & 0o777 == 0o700
    assert (root / "ssh").stat().st_mode & 0o777 == 0o700
    (root / "queue" / "kept").write_text("x")
    assert init_root(root) == store  # again: nothing lost
    assert (root / "queue" / "kept").read_text() == "x"
    assert store.require() is store


def test_paths_are_built_only_from_checked_names(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.volume_dir(SN, "documents") == tmp_path / "clients" / SN / "volumes" / \
        "documents"
    assert store.snapshots_dir(SN, "v") == store.volume_dir(SN, "v") / "snapshots"
    assert store.incoming_dir(SN, "v") == store.volume_dir(SN, "v") / "incoming"
    assert store.reports_dir(SN) == store.client_dir(SN) / "reports"
    for bad in ("../x", "a/b", "", "x" * 65, "a-b", "é"):
        with pytest.raises(InvalidName):
            store.client_dir(bad)
    for bad in ("..", ".", ".hidden", "a/b", "-x", "x" * 65):
        with pytest.raises(InvalidName):
            store.volume_dir(SN, bad)
    assert check_client("SHF_1") == "SHF_1"
    assert check_volume("datastore-current.v2") == "datastore-current.v2"


@pytest.mark.parametrize(("sid", "ok"), [
    ("2026-11-23T120000Z", True),
    ("2026-11-23T120000Z-12", True),
    ("2026-11-23T12:00:00Z", False),   # no colons in ids
    ("2026-11-23T120000", False),
    ("2026-11-23T120000Z-", False),
    ("latest", False),
])
def test_snapshot_id_syntax(sid: str, ok: bool) -> None:
    if ok:
        assert check_snapshot_id(sid) == sid
    else:
        with pytest.raises(InvalidName):
            check_snapshot_id(sid)


def test_ids_are_server_utc_and_sort_with_their_suffix() -> None:
    local = dt.datetime(2026, 11, 23, 14, 5, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert snapshot_id_for(local) == "2026-11-23T120509Z"
    assert snapshot_time("2026-11-23T120509Z-3") == dt.datetime(2026, 11, 23, 12, 5, 9,
                                                               tzinfo=dt.UTC)
    ids = ["2026-11-23T120509Z-10", "2026-11-23T120509Z", "2026-11-23T120509Z-2",
           "2025-01-01T000000Z"]
    assert sorted(ids, key=snapshot_sort_key) == [
        "2025-01-01T000000Z", "2026-11-23T120509Z", "2026-11-23T120509Z-2",
        "2026-11-23T120509Z-10"]


def test_listings_skip_what_is_not_theirs(tmp_path: Path) -> None:
    store = init_root(tmp_path / "state")
    snaps = store.snapshots_dir(SN, "documents")
    snaps.mkdir(parents=True)
    for name in ("2026-01-02T000000Z", "2026-01-01T000000Z-1", "2026-01-01T000000Z",
                 ".tmp-2026-01-03T000000Z", "notes.txt"):
        (snaps / name).mkdir()
    store.incoming_dir(SN, "documents").mkdir()
    (store.incoming_dir(SN, "documents") / "2026-01-03T000000Z").mkdir()
    (store.client_dir(SN) / "volumes" / ".hidden").mkdir()
    (store.clients_dir / "not a client").mkdir()
    assert store.snapshot_ids(SN, "documents") == [
        "2026-01-01T000000Z", "2026-01-01T000000Z-1", "2026-01-02T000000Z"]
    assert store.incoming_ids(SN, "documents") == ["2026-01-03T000000Z"]
    assert store.volumes(SN) == ["documents"]
    assert store.snapshot_ids(SN, "photos") == []
    assert list(iter_clients(store)) == [SN]


def test_latest_names_only_a_snapshot(tmp_path: Path) -> None:
    store = init_root(tmp_path / "state")
    vol = store.volume_dir(SN, "documents")
    vol.mkdir(parents=True)
    assert store.latest_id(SN, "documents") is None
    atomic_symlink("snapshots/2026-01-01T000000Z", vol / "latest")
    assert store.latest_id(SN, "documents") == "2026-01-01T000000Z"
    atomic_symlink("snapshots/2026-01-02T000000Z", vol / "latest")  # swapped over it
    assert store.latest_id(SN, "documents") == "2026-01-02T000000Z"
    atomic_symlink("/etc/passwd", vol / "latest")
    assert store.latest_id(SN, "documents") is None
    assert sorted(os.listdir(vol)) == ["latest"]  # no temporary link left behind


def test_atomic_write_replaces_whole_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "entry.json"
    atomic_write(path, b"old", mode=0o600)
    assert path.read_bytes() == b"old"
    assert path.stat().st_mode & 0o777 == 0o600
    inode = path.stat().st_ino
    atomic_write(path, b"new content", sync=False)
    assert path.read_bytes() == b"new content"
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert os.listdir(tmp_path) == ["entry.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "entry.json"
    atomic_write(path, b"old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "blocker", b"x")  # the final rename fails
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["blocker", "entry.json"]  # no temp file left
