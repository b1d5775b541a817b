"""Admission on a real state root: the availability window and its reservations,
maintenance, load, disk thresholds (on a private tmpfs whose use only this test changes),
the quota against a usage.json that ``du`` really wrote, and the client checks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Server
from xsbackup import config
from xsbackup.clients.registry import Registry
from xsbackup.context import Context
from xsbackup.errors import (
    ClientDisabled,
    DiskFull,
    InodesFull,
    LoadTooHigh,
    Maintenance,
    OverQuota,
    UnknownClient,
)
from xsbackup.ingest import admission
from xsbackup.ingest.admission import Verdict
from xsbackup.snapshots import usage
from xsbackup.store import Store, disk_use, init_root
from xsbackup.units import format_bytes

T = 1_700_000_000.0  # the clock of these tests; grants are stamped with it
WINDOW = {"availability__window_count": 2, "availability__window_minutes": 5.0,
          "availability__reservation_minutes": 10.0}

Make = Callable[..., Context]


@pytest.fixture
def make_ctx(server: Server) -> Make:
    """A context of ``server``'s root with ``section__key=value`` settings overrides."""

    def make(**overrides: Any) -> Context:
        return Context(server.settings().replace(**overrides), server.store,
                       Registry(server.store))

    return make


def grants(store: Store) -> dict[str, float]:
    base = Path(admission.admissions_dir(store))
    return {p.name: p.stat().st_mtime for p in base.iterdir()} if base.is_dir() else {}


def test_window_admits_its_count_and_says_when_to_come_back(make_ctx: Make) -> None:
    ctx = make_ctx(**WINDOW)
    assert admission.availability(ctx, "A", T) == Verdict(True)
    assert admission.availability(ctx, "B", T + 2) == Verdict(True)
    # Full: the oldest grant leaves the window 300 s after it was made.
    assert admission.availability(ctx, "C", T + 3) == Verdict(False, "window", 298)
    assert admission.availability(ctx, "C", T + 299) == Verdict(False, "window", 2)
    assert grants(ctx.store) == {"A": T, "B": T + 2}
    # A's grant has left the window: C gets its place.
    assert admission.availability(ctx, "C", T + 300) == Verdict(True)
    assert grants(ctx.store) == {"A": T, "B": T + 2, "C": T + 300}
    # A larger window (what a reload would bring) admits at once.
    assert admission.availability(make_ctx(**{**WINDOW, "availability__window_count": 4}),
                                  "D", T + 301) == Verdict(True)


def test_a_reservation_repeats_without_taking_another_place(make_ctx: Make) -> None:
    ctx = make_ctx(**WINDOW)
    assert admission.availability(ctx, "A", T) == Verdict(True)
    for t in (T + 1, T + 200, T + 599):
        assert admission.availability(ctx, "A", t) == Verdict(True)
        assert admission.has_reservation(ctx, "A", t)
    assert grants(ctx.store) == {"A": T}  # not re-stamped: the reservation is not extended
    assert admission.availability(ctx, "B", T + 10) == Verdict(True)
    assert admission.availability(ctx, "C", T + 10) == Verdict(False, "window", 291)
    # After 10 minutes the reservation is over; A asks again like any client, and gets a
    # place because both old grants have left the window.
    assert not admission.has_reservation(ctx, "A", T + 600)
    assert admission.availability(ctx, "A", T + 600) == Verdict(True)
    assert grants(ctx.store)["A"] == T + 600


def test_a_reservation_is_not_refused_for_load(make_ctx: Make) -> None:
    assert admission.availability(make_ctx(**WINDOW), "A", T) == Verdict(True)
    busy = make_ctx(**WINDOW, admission__max_load=0.0)
    assert admission.availability(busy, "A", T + 5) == Verdict(True)
    assert admission.availability(busy, "B", T + 5) == Verdict(False, "load", 60)
    with pytest.raises(LoadTooHigh, match=r"load average .* is over the limit 0"):
        admission.check_server(busy)
    admission.check_server(busy, reserved=True)


def test_expired_grants_are_removed(make_ctx: Make) -> None:
    ctx = make_ctx(**WINDOW)
    for sn, t in (("A", T), ("B", T + 100), ("C", T + 400)):
        assert admission.availability(ctx, sn, t) == Verdict(True)
    # Kept for the longer of the window and the reservation: 10 minutes.
    assert admission.expire_grants(ctx, T + 599) == 0
    assert admission.expire_grants(ctx, T + 700) == 2
    assert grants(ctx.store) == {"C": T + 400}
    assert admission.expire_grants(ctx, T + 700) == 0


@pytest.mark.parametrize("how", ["setting", "flag"])
def test_maintenance_refuses_everyone(make_ctx: Make, how: str) -> None:
    assert admission.availability(make_ctx(**WINDOW), "A", T) == Verdict(True)
    if how == "setting":
        ctx = make_ctx(**WINDOW, admission__maintenance=True)
    else:
        ctx = make_ctx(**WINDOW)
        ctx.store.maintenance_flag.touch()
    assert admission.maintenance_on(ctx)
    # Even a client holding a reservation.
    assert admission.availability(ctx, "A", T + 1) == Verdict(False, "maintenance", 300)
    assert admission.availability(ctx, "B", T + 1) == Verdict(False, "maintenance", 300)
    with pytest.raises(Maintenance):
        admission.check_server(ctx, reserved=True)
    assert grants(ctx.store) == {"A": T}


@pytest.fixture
def half_full(small_fs: Path, tmp_path: Path) -> Make:
    """A state root on a private tmpfs with about half its blocks and inodes used."""
    root = small_fs / "state"
    init_root(root)
    server = Server(root, tmp_path)
    server.configure("")
    with (small_fs / "ballast").open("wb") as fh:
        fh.write(os.urandom(1 << 20) * 24)
    (small_fs / "inodes").mkdir()
    for i in range(2000):
        (small_fs / "inodes" / str(i)).touch()
    use = disk_use(root)
    assert 40 < use.blocks_pct < 60, use
    assert 40 < use.inodes_pct < 60, use

    def make(**overrides: Any) -> Context:
        return Context.open(config.load(root, environ={}).replace(**overrides))

    return make


def test_disk_thresholds(half_full: Make) -> None:
    admission.check_server(half_full(admission__max_blocks_pct=60.0,
                                     admission__max_inodes_pct=60.0))
    blocks = half_full(admission__max_blocks_pct=40.0)
    with pytest.raises(DiskFull, match=r"server disk full: \d+\.\d% of blocks used \(limit 40%\)"):
        admission.check_server(blocks)
    assert admission.availability(blocks, "A", T) == Verdict(False, "blocks", 600)
    inodes = half_full(admission__max_inodes_pct=40.0)
    with pytest.raises(InodesFull, match=r"server out of inodes: \d+\.\d% used \(limit 40%\)"):
        admission.check_server(inodes)
    assert admission.availability(inodes, "A", T) == Verdict(False, "inodes", 600)
    # Blocks are checked first; a reservation does not bypass the disk.
    both = half_full(admission__max_blocks_pct=40.0, admission__max_inodes_pct=40.0)
    with pytest.raises(DiskFull):
        admission.check_server(both, reserved=True)
    assert not os.path.exists(admission.admissions_dir(blocks.store))


def test_quota_against_the_measured_usage(server: Server) -> None:
    registry = Registry(server.store)
    registry.add("SHF00000001", None)
    snap = server.store.snapshots_dir("SHF00000001", "documents") / "2024-05-01T120000Z"
    snap.mkdir(parents=True)
    (snap / "data.bin").write_bytes(os.urandom(200_000))
    total = usage.cached(server.ctx(), "SHF00000001").total
    written = orjson.loads((server.store.client_dir("SHF00000001") / "usage.json").read_bytes())
    assert written["usage"]["total"] == total >= 200_000

    def with_quota(quota: int | None) -> None:
        def change(c: Any) -> None:
            c.policy = {} if quota is None else {"quota_bytes": quota}
        client = registry.modify("SHF00000001", change)
        admission.check_quota(server.store, client)

    with_quota(None)
    with_quota(total + 1)
    used = format_bytes(total)
    with pytest.raises(OverQuota, match=f"over its quota: {used} of {used} used"):
        with_quota(total)
    with pytest.raises(OverQuota):
        with_quota(total - 1)
    # Never measured, or a cache that cannot be read: nothing to hold against the client.
    usage_json = server.store.client_dir("SHF00000001") / "usage.json"
    usage_json.write_bytes(b"{not json")
    with_quota(total - 1)
    usage_json.unlink()
    with_quota(total - 1)


def test_unknown_and_disabled_clients(server: Server) -> None:
    registry = Registry(server.store)
    with pytest.raises(UnknownClient, match="unknown client SHF00000009"):
        admission.check_client(registry, "SHF00000009")
    registry.add("SHF00000009", None)
    assert admission.check_client(registry, "SHF00000009").serial == "SHF00000009"
    registry.modify("SHF00000009", lambda c: setattr(c, "disabled", True))
    with pytest.raises(ClientDisabled, match="client SHF00000009 is disabled"):
        admission.check_client(registry, "SHF00000009")
