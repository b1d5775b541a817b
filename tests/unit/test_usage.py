"""Hardlink-aware usage: exclusive and shared bytes across snapshots, and its cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson
import pytest

from xsbackup import config
from xsbackup.context import Context
from xsbackup.snapshots import usage
from xsbackup.store import Store, init_root

SN = "SHF00112233"
IDS = ["2026-01-01T000000Z", "2026-01-02T000000Z", "2026-01-03T000000Z"]
KB = 4096  # sizes in whole blocks, so allocated bytes equal apparent bytes


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    init_root(tmp_path / "state")
    ctx = Context.open(config.load(tmp_path / "state", environ={}))
    ctx.store.client_dir(SN).mkdir(parents=True)
    return ctx


def snapshot(store: Store, sid: str, volume: str = "documents") -> Path:
    d = store.snapshots_dir(SN, volume) / sid
    d.mkdir(parents=True)
    return d


def write(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def alloc(path: Path) -> int:
    return path.lstat().st_blocks * 512


def test_exclusive_and_shared_bytes_across_snapshots(ctx: Context, tmp_path: Path) -> None:
    store = ctx.store
    s0, s1, s2 = (snapshot(store, sid) for sid in IDS)
    everywhere = write(s0 / "everywhere.bin", 8 * KB)      # in all three
    os.link(everywhere, s1 / "everywhere.bin")
    os.link(everywhere, s2 / "everywhere.bin")
    pair = write(s1 / "pair.bin", 4 * KB)                  # in s1 and s2
    os.link(pair, s2 / "pair.bin")
    only0 = write(s0 / "only0.bin", 2 * KB)                # one link
    twice = write(s0 / "twice.bin", 3 * KB)                # two links, both inside s0
    os.link(twice, s0 / "twice-again.bin")
    (s2 / "sub").mkdir()
    only2 = write(s2 / "sub" / "only2.bin", 5 * KB)
    escaped = write(s1 / "escaped.bin", 6 * KB)            # also linked outside snapshots
    os.link(escaped, tmp_path / "outside.bin")

    use = ctx.storage.measure(SN)
    by_id = {s.id: s for s in use.snapshots}
    u0, u1, u2 = (by_id[i] for i in IDS)
    assert (u0.files, u1.files, u2.files) == (4, 3, 3)
    assert u0.apparent == (8 + 2 + 3 + 3) * KB
    assert u0.exclusive == alloc(only0) + alloc(twice)
    assert u0.shared == 8 * KB
    assert u1.exclusive == 0  # each of its files is held elsewhere too
    assert u1.shared == u1.apparent == (8 + 4 + 6) * KB
    assert u2.exclusive == alloc(only2) + alloc(s2 / "sub")
    assert u2.shared == (8 + 4) * KB
    distinct = [everywhere, pair, only0, twice, only2, escaped, s2 / "sub"]
    assert use.total == sum(alloc(p) for p in distinct)
    assert use.apparent == u0.apparent + u1.apparent + u2.apparent
    assert use.exclusive_of("documents", IDS[0]) == u0.exclusive
    assert use.exclusive_of("documents", "2030-01-01T000000Z") == 0


def test_cache_is_keyed_by_the_snapshot_list(ctx: Context) -> None:
    store = ctx.store
    write(snapshot(store, IDS[0]) / "a.bin", 4 * KB)
    assert usage.last_total(store, SN) is None  # never measured
    seen: list[tuple[str, str]] = []
    first = usage.cached(ctx, SN, lambda v, s: seen.append((v, s)))
    assert seen == [("documents", IDS[0])]
    assert usage.last_total(store, SN) == first.total
    again = usage.cached(ctx, SN, lambda v, s: seen.append((v, s)))
    assert again == first
    assert len(seen) == 1  # served from usage.json, nothing walked
    write(snapshot(store, IDS[1]) / "b.bin", 8 * KB)
    assert usage.last_total(store, SN) == first.total  # stale until measured again
    grown = usage.cached(ctx, SN)
    assert grown.total > first.total
    assert [s.id for s in grown.snapshots] == IDS[:2]
    assert usage.last_total(store, SN) == grown.total
    usage.invalidate(store, SN)
    assert usage.last_total(store, SN) is None


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"usage": 3}',
                                     b'{"usage": {"total": "many"}}'])
def test_a_damaged_cache_reads_as_never_measured(ctx: Context, content: bytes) -> None:
    store = ctx.store
    write(snapshot(store, IDS[0]) / "a.bin", 4 * KB)
    (store.client_dir(SN) / "usage.json").write_bytes(content)
    assert usage.last_total(store, SN) is None
    measured = usage.cached(ctx, SN)  # and is measured again
    data = orjson.loads((store.client_dir(SN) / "usage.json").read_bytes())
    assert data["usage"]["total"] == measured.total == usage.last_total(store, SN)


def test_unfinished_transfers_are_their_clients_own(ctx: Context) -> None:
    """A transfer waiting in incoming/, and one running or interrupted in current/, count
    in the client's total; ``pending`` is what only they hold; a snapshot file they link
    to is not that snapshot's exclusive any more."""
    store = ctx.store
    old = write(snapshot(store, IDS[0]) / "old.bin", 4 * KB)
    vol = store.volume_dir(SN, "documents")
    waiting = vol / "incoming" / IDS[1]
    waiting.mkdir(parents=True)
    os.link(old, waiting / "old.bin")
    new = write(waiting / "new.bin", 8 * KB)
    current = vol / "current"
    current.mkdir()
    os.link(new, current / "new.bin")
    half = write(current / "half.bin", 16 * KB)
    (vol / "partial").mkdir()
    kept = write(vol / "partial" / "big.bin", 2 * KB)

    use = ctx.storage.measure(SN)
    assert use.total == alloc(old) + alloc(new) + alloc(half) + alloc(kept)
    assert use.pending == alloc(new) + alloc(half) + alloc(kept)
    (only,) = use.snapshots
    assert (only.exclusive, only.shared) == (0, 4 * KB)

    # While current/ exists its size changes with no list changing: measured every time.
    seen: list[str] = []
    for _ in range(2):
        assert usage.cached(ctx, SN, lambda v, s: seen.append(s)).total == use.total
    assert seen == [IDS[0], IDS[0]]
    assert usage.last_total(store, SN) == use.total
    shutil.rmtree(current)  # partial files are a transfer in flight too
    usage.cached(ctx, SN, lambda v, s: seen.append(s))
    assert seen == [IDS[0]] * 3
    shutil.rmtree(vol / "partial")  # nothing in flight: measured once, then cached
    for _ in range(2):
        usage.cached(ctx, SN, lambda v, s: seen.append(s))
    assert seen == [IDS[0]] * 4


def fill(path: Path) -> None:
    with path.open("wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * 65536)


def test_a_cache_that_finds_no_room_is_skipped(small_fs: Path) -> None:
    """On a full disk the figures are still given, and the cache is simply not written."""
    root = small_fs / "state"
    init_root(root)
    full = Context.open(config.load(root, environ={}))
    write(snapshot(full.store, IDS[0]) / "a.bin", 4 * KB)
    with pytest.raises(OSError, match="No space left on device"):
        fill(small_fs / "ballast")
    assert usage.cached(full, SN).total >= 4 * KB
    assert not (full.store.client_dir(SN) / "usage.json").exists()
    tally = usage.Tally(full)
    assert tally.get(SN).total >= 4 * KB
    (small_fs / "ballast").unlink()
    tally.flush()
    assert usage.last_total(full.store, SN) == tally.get(SN).total
