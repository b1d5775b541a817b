"""The post-processing queue: entry names, writes, reads, listing and the orphan sweep."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from xsbackup.snapshots import queue
from xsbackup.store import Store, init_root

SN = "SHF00112233"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return init_root(tmp_path / "state")


def test_write_read_and_order(store: Store) -> None:
    queue.write(store, "2026-01-02T000000Z", SN, "documents", {"rsync_exit": 0})
    queue.write(store, "2026-01-01T000000Z-2", "SHF2", "datastore.v2", {})
    queue.write(store, "2026-01-01T000000Z", SN, "photos", {"rsync_exit": 24})
    assert sorted(os.listdir(store.queue_dir)) == [
        "2026-01-01T000000Z-2.SHF2.datastore.v2.json",
        f"2026-01-01T000000Z.{SN}.photos.json",
        f"2026-01-02T000000Z.{SN}.documents.json"]
    entries = queue.pending(store)
    assert [(e.id, e.client, e.volume) for e in entries] == [
        ("2026-01-01T000000Z", SN, "photos"), ("2026-01-01T000000Z-2", "SHF2", "datastore.v2"),
        ("2026-01-02T000000Z", SN, "documents")]
    assert entries[0].data == {"id": "2026-01-01T000000Z", "client": SN, "volume": "photos",
                               "rsync_exit": 24}
    assert queue.depth(store) == 3


def test_names_that_are_not_entries_are_ignored(store: Store) -> None:
    for name in (".2026-01-01T000000Z.SN.v.json.tmp", "README", "x.y.z.json",
                 "2026-01-01T000000Z.bad-serial.v.json", "2026-01-01T000000Z.SN.json"):
        (store.queue_dir / name).write_bytes(b"{}")
    (store.queue_dir / f"2026-01-01T000000Z.{SN}.documents.json").write_bytes(b"{torn")
    assert queue.pending(store) == []  # the torn one is unreadable, not an entry
    assert queue.depth(store) == 1      # but it is waiting: the sweep rewrites it
    assert queue.read(store.queue_dir / "README") is None


def test_mark_promoted_keeps_the_origin(store: Store) -> None:
    path = queue.write(store, "2026-01-01T000000Z", SN, "documents", {"remote": "10.0.0.5"})
    (entry,) = queue.pending(store)
    queue.mark_promoted(entry)
    data = orjson.loads(path.read_bytes())
    assert data["promoted"] is True
    assert data["remote"] == "10.0.0.5"
    assert queue.read(path) is not None


def test_orphans_in_incoming_are_requeued_once(store: Store) -> None:
    for volume, sid in (("documents", "2026-01-01T000000Z"), ("photos", "2026-01-02T000000Z")):
        (store.incoming_dir(SN, volume) / sid).mkdir(parents=True)
    queue.write(store, "2026-01-01T000000Z", SN, "documents", {"rsync_exit": 0})
    assert queue.requeue_orphans(store) == 1
    assert queue.requeue_orphans(store) == 0
    recovered = next(e for e in queue.pending(store) if e.volume == "photos")
    assert recovered.data["recovered"] is True
    kept = next(e for e in queue.pending(store) if e.volume == "documents")
    assert kept.data["rsync_exit"] == 0  # an existing entry is never overwritten


def test_a_torn_entry_is_rewritten_by_the_sweep(store: Store) -> None:
    (store.incoming_dir(SN, "documents") / "2026-01-01T000000Z").mkdir(parents=True)
    torn = store.queue_dir / queue.entry_name("2026-01-01T000000Z", SN, "documents")
    torn.write_bytes(b"{torn")
    assert queue.requeue_orphans(store) == 1
    (entry,) = queue.pending(store)
    assert entry.path == torn
    assert entry.data["recovered"] is True
