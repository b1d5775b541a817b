"""Which snapshot a request names: latest, ids, minutes, times and volumes.

Snapshots are real directories in tmp_path, ``latest`` a real symlink, as the
post-processor leaves them; a planted symlink named like an id is never a snapshot.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xsbackup.errors import InvalidName, SnapshotNotFound
from xsbackup.restore import resolve
from xsbackup.store import Store

SN = "SN1"
VOL = "documents"
IDS = ["2026-01-02T030405Z", "2026-01-02T030455Z", "2026-01-02T030455Z-1",
       "2026-03-01T120000Z"]
PLANTED = "2027-01-01T000000Z"  # newer than every real snapshot


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state")
    snaps = store.snapshots_dir(SN, VOL)
    for sid in IDS:
        (snaps / sid).mkdir(parents=True)
    set_latest(store, IDS[-2])
    return store


def set_latest(store: Store, sid: str) -> None:
    link = store.volume_dir(SN, VOL) / "latest"
    link.unlink(missing_ok=True)
    link.symlink_to(f"snapshots/{sid}")


@pytest.fixture
def planted(store: Store, tmp_path: Path) -> Store:
    """A symlink named like the newest snapshot id, pointing at a real directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store.snapshots_dir(SN, VOL) / PLANTED).symlink_to(elsewhere)
    return store


@pytest.mark.parametrize("at", [None, "", "latest"])
def test_latest_follows_the_link(store: Store, at: str | None) -> None:
    assert resolve.resolve(store, SN, VOL, at) == IDS[-2]
    assert resolve.latest(store, SN, VOL) == IDS[-2]


def test_latest_without_a_link_is_the_newest(store: Store) -> None:
    (store.volume_dir(SN, VOL) / "latest").unlink()
    assert resolve.resolve(store, SN, VOL, "latest") == IDS[-1]


def test_latest_pointing_at_a_pruned_snapshot_is_the_newest(store: Store) -> None:
    set_latest(store, "2025-01-01T000000Z")
    assert resolve.resolve(store, SN, VOL, None) == IDS[-1]


@pytest.mark.parametrize("sid", IDS)
def test_an_id_names_itself(store: Store, sid: str) -> None:
    assert resolve.resolve(store, SN, VOL, sid) == sid


def test_an_absent_id_is_not_found(store: Store) -> None:
    with pytest.raises(SnapshotNotFound, match=f"^no snapshot 2001-01-01T000000Z of {VOL}$"):
        resolve.resolve(store, SN, VOL, "2001-01-01T000000Z")


@pytest.mark.parametrize(("at", "expected"), [
    ("2026-01-02T03:04:05Z", IDS[0]),               # exactly
    ("2026-01-02T03:04:30+00:00", IDS[0]),          # between
    ("2026-01-02T03:04:55", IDS[2]),                # naive is UTC; the newest of a tie
    ("2026-01-02T05:04:55+02:00", IDS[2]),          # another zone
    ("2026-02-01", IDS[2]),
    ("2999-01-01T00:00:00Z", IDS[-1]),
])
def test_a_time_is_the_newest_at_or_before(store: Store, at: str, expected: str) -> None:
    assert resolve.resolve(store, SN, VOL, at) == expected


def test_a_time_before_every_snapshot_is_not_found(store: Store) -> None:
    with pytest.raises(SnapshotNotFound, match="at or before 2000-01-01"):
        resolve.resolve(store, SN, VOL, "2000-01-01T00:00:00Z")


@pytest.mark.parametrize(("minute", "expected"), [
    ("2026-01-02_03:04", IDS[2]),
    ("2026-03-01_12:00", IDS[3]),
])
def test_a_minute_is_the_newest_of_that_minute(store: Store, minute: str,
                                               expected: str) -> None:
    assert resolve.resolve(store, SN, VOL, f"minute:{minute}") == expected


def test_a_minute_without_a_snapshot_is_not_found(store: Store) -> None:
    with pytest.raises(SnapshotNotFound, match="from 2026-01-02_03:05"):
        resolve.resolve(store, SN, VOL, "minute:2026-01-02_03:05")


@pytest.mark.parametrize("at", ["yesterday", "2026-13-01", "../2026-01-02T030405Z",
                                "2026-01-02T030405Z/..", "x" * 1000])
def test_anything_else_is_an_invalid_name(store: Store, at: str) -> None:
    with pytest.raises(InvalidName) as info:
        resolve.resolve(store, SN, VOL, at)
    assert len(info.value.message) < 150  # one short line, whatever was sent


def test_an_empty_volume_has_no_snapshot(store: Store) -> None:
    for at in (None, IDS[0], "2999-01-01"):
        with pytest.raises(SnapshotNotFound, match=r"^music has no snapshot yet$"):
            resolve.resolve(store, SN, "music", at)
    assert resolve.latest(store, SN, "music") is None


# ---- a symlink named like an id is never a snapshot ------------------------------------


def test_a_symlinked_id_is_not_found(planted: Store) -> None:
    with pytest.raises(SnapshotNotFound, match=f"no snapshot {PLANTED}"):
        resolve.resolve(planted, SN, VOL, PLANTED)
    assert not resolve.exists(planted, SN, VOL, PLANTED)
    assert PLANTED in planted.snapshot_ids(SN, VOL)  # the store lists the name ...
    assert resolve.snapshot_ids(planted, SN, VOL) == IDS  # ... resolution does not


def test_a_symlinked_id_is_never_latest_nor_at_a_time(planted: Store) -> None:
    (planted.volume_dir(SN, VOL) / "latest").unlink()
    assert resolve.resolve(planted, SN, VOL, "latest") == IDS[-1]
    set_latest(planted, PLANTED)
    assert resolve.resolve(planted, SN, VOL, "latest") == IDS[-1]
    assert resolve.latest(planted, SN, VOL) == IDS[-1]
    assert resolve.resolve(planted, SN, VOL, "2999-01-01T00:00:00Z") == IDS[-1]
    with pytest.raises(SnapshotNotFound):
        resolve.resolve(planted, SN, VOL, "minute:2027-01-01_00:00")


def test_a_volume_of_only_symlinks_has_no_snapshot(planted: Store, tmp_path: Path) -> None:
    snaps = planted.snapshots_dir(SN, "music")
    snaps.mkdir(parents=True)
    (snaps / PLANTED).symlink_to(planted.snapshots_dir(SN, VOL) / IDS[0])
    with pytest.raises(SnapshotNotFound, match="has no snapshot yet"):
        resolve.resolve(planted, SN, "music", PLANTED)
    assert resolve.latest(planted, SN, "music") is None


def test_a_file_named_like_an_id_is_not_a_snapshot(store: Store) -> None:
    (store.snapshots_dir(SN, VOL) / PLANTED).write_bytes(b"")
    assert not resolve.exists(store, SN, VOL, PLANTED)
    with pytest.raises(SnapshotNotFound):
        resolve.resolve(store, SN, VOL, PLANTED)


@pytest.mark.parametrize("sid", ["latest", "..", "2026-01-02T030405Z/../x", ""])
def test_exists_is_false_for_what_is_not_an_id(store: Store, sid: str) -> None:
    assert not resolve.exists(store, SN, VOL, sid)


# ---- volumes -----------------------------------------------------------------------------


def test_pick_volume(store: Store) -> None:
    assert resolve.pick_volume(store, SN, None) == VOL  # the only one
    assert resolve.pick_volume(store, SN, "music") == "music"  # named: taken as given
    (store.snapshots_dir(SN, "music")).mkdir(parents=True)
    with pytest.raises(InvalidName, match="several volumes"):
        resolve.pick_volume(store, SN, None)
    with pytest.raises(SnapshotNotFound, match="no snapshots yet"):
        resolve.pick_volume(store, "SN2", None)
    with pytest.raises(InvalidName):
        resolve.pick_volume(store, SN, "../x")


def test_offsite_snapshot_at_a_time_is_the_newest_at_or_before_it() -> None:
    """Off-site copies read a time by the same rule as local snapshots."""
    from xsbackup.offsite.recover import resolve as offsite_resolve
    from xsbackup.offsite.restic import Snapshot

    ids = ["2026-01-01T100000Z", "2026-01-02T100000Z", "2026-01-03T100000Z"]
    listing = [Snapshot(f"r{n}", f"r{n}", "2026-01-04T00:00:00Z", SN,
                        (f"volume:{VOL}", f"snapshot:{sid}")) for n, sid in enumerate(ids)]
    assert offsite_resolve(listing, SN, VOL, "2026-01-02T23:00:00")[1].id == "r1"
    assert offsite_resolve(listing, SN, None, "2026-01-03T10:00:00+00:00")[1].id == "r2"
    assert offsite_resolve(listing, SN, VOL, "2026-01-02T12:00:00+03:00")[1].id == "r0"
    with pytest.raises(SnapshotNotFound, match=r"no off-site snapshot of \w+ at or before"):
        offsite_resolve(listing, SN, VOL, "2025-12-31")
    with pytest.raises(InvalidName, match="neither a snapshot id nor an ISO time"):
        offsite_resolve(listing, SN, VOL, "yesterday")
