"""The availability window cannot be taken over: one source address holds at most
``availability.max_per_address`` grants, and serials with no snapshot yet (any device
can register itself) get at most ``availability.new_per_window`` places of a window, so
a client with history still gets its 200. Real state root, real snapshot, fixed clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, local_push
from xsbackup.clients.registry import Registry
from xsbackup.context import Context
from xsbackup.ingest import admission
from xsbackup.ingest.admission import Verdict
from xsbackup.snapshots import postprocess

T = 1_700_000_000.0
OLD = "SHF0000HIST"                     # a client with a snapshot
ATTACKER = "10.0.0.66"
NEW = [f"SHF{i:08d}" for i in range(10)]  # ten self-registered serials

Make = Callable[..., Context]


@pytest.fixture
def make_ctx(server: Server, tmp_path: Path) -> Make:
    server.add_client(OLD)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    assert local_push(server, OLD, src).returncode == 0
    assert postprocess.run_once(server.ctx()) == {"promoted": 1}

    def make(**overrides: Any) -> Context:
        return Context(server.settings().replace(**overrides), server.store,
                       Registry(server.store))

    return make


def test_ten_new_serials_from_one_address_fill_only_their_bound(make_ctx: Make) -> None:
    ctx = make_ctx()  # the defaults: window_count 10, max_per_address 2, new_per_window 5
    assert ctx.settings.availability.max_per_address == 2
    answers = [admission.availability(ctx, sn, T + i, ATTACKER) for i, sn in enumerate(NEW)]
    assert answers[:2] == [Verdict(True), Verdict(True)]
    # The address's first grant frees its place when its reservation (10 min) ends;
    # Retry-After rounds up, as the window's does.
    assert answers[2:] == [Verdict(False, "address", 601 - i) for i in range(2, 10)]
    # Everyone else still gets in: a client with history, and a new device elsewhere.
    assert admission.availability(ctx, OLD, T + 20, "10.0.0.5") == Verdict(True)
    assert admission.availability(ctx, "SHF0000FRSH", T + 21, "10.0.0.7") == Verdict(True)
    # A granted serial asking again keeps its reservation, whatever its address holds.
    assert admission.availability(ctx, NEW[0], T + 30, ATTACKER) == Verdict(True)


def test_new_serials_from_many_addresses_leave_room_for_clients_with_history(
        make_ctx: Make) -> None:
    ctx = make_ctx()
    answers = [admission.availability(ctx, sn, T + i, f"10.0.1.{i}")
               for i, sn in enumerate(NEW)]
    assert answers[:5] == [Verdict(True)] * 5
    # The oldest new grant leaves the window 300 s after it was made.
    assert answers[5:] == [Verdict(False, "new", 301 - i) for i in range(5, 10)]
    assert admission.availability(ctx, OLD, T + 20, "10.0.0.5") == Verdict(True)


def test_the_window_still_bounds_everyone(make_ctx: Make) -> None:
    ctx = make_ctx(availability__window_count=3, availability__new_per_window=2)
    assert admission.availability(ctx, NEW[0], T, "10.0.1.1") == Verdict(True)
    assert admission.availability(ctx, NEW[1], T + 1, "10.0.1.2") == Verdict(True)
    assert admission.availability(ctx, NEW[2], T + 2, "10.0.1.3") == Verdict(False, "new", 299)
    assert admission.availability(ctx, OLD, T + 3, "10.0.0.5") == Verdict(True)
    assert admission.availability(ctx, NEW[2], T + 4, "10.0.1.3") == \
        Verdict(False, "window", 297)


def test_a_local_proxy_or_an_unknown_address_is_not_bounded(make_ctx: Make) -> None:
    """Behind the shipped nginx snippet every request comes from loopback: the bound
    applies to the device's address, which the web layer passes on."""
    ctx = make_ctx(availability__new_per_window=10)
    for i, address in enumerate(["127.0.0.1", "::1", "::ffff:127.0.0.1", ""] * 2):
        assert admission.availability(ctx, NEW[i], T + i, address) == Verdict(True), address


def test_an_address_bound_of_0_is_off_and_the_mapped_v4_address_counts_as_v4(
        make_ctx: Make) -> None:
    ctx = make_ctx(availability__max_per_address=1)
    assert admission.availability(ctx, NEW[0], T, "10.0.0.66") == Verdict(True)
    assert admission.availability(ctx, NEW[1], T + 1, "::ffff:10.0.0.66") == \
        Verdict(False, "address", 600)
    off = make_ctx(availability__max_per_address=0)
    assert admission.availability(off, NEW[1], T + 2, "10.0.0.66") == Verdict(True)


def test_the_address_gets_its_places_back_when_its_reservations_end(make_ctx: Make) -> None:
    ctx = make_ctx()
    for i in range(2):
        assert admission.availability(ctx, NEW[i], T + i, ATTACKER) == Verdict(True)
    assert admission.availability(ctx, NEW[2], T + 599, ATTACKER) == \
        Verdict(False, "address", 2)
    assert admission.availability(ctx, NEW[2], T + 600, ATTACKER) == Verdict(True)


def test_a_grant_written_before_this_version_still_counts(make_ctx: Make) -> None:
    """Older grants are empty files: they take a window place, no address and no
    new-client place."""
    import os

    ctx = make_ctx(availability__window_count=1)
    base = Path(admission.admissions_dir(ctx.store))
    base.mkdir(exist_ok=True)
    (base / NEW[0]).write_bytes(b"")
    os.utime(base / NEW[0], (T, T))
    assert admission.availability(ctx, OLD, T + 1, "10.0.0.5") == Verdict(False, "window", 300)
