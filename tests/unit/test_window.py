"""``ingest.window``: a process's memory of grants and client records gives the same
decisions as reading the files, whatever another process changes meanwhile."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import Server
from tests.unit.test_admission import WINDOW, Make
from xsbackup.clients.registry import Registry
from xsbackup.context import Context
from xsbackup.errors import ClientDisabled, UnknownClient
from xsbackup.ingest import admission
from xsbackup.ingest.admission import Verdict
from xsbackup.ingest.window import Memory, admissions_dir

T = 1_700_000_000.0


@pytest.fixture
def make_ctx(server: Server) -> Make:
    """As in test_admission: a context of ``server``'s root with settings overrides."""

    def make(**overrides: Any) -> Context:
        return Context(server.settings().replace(**overrides), server.store,
                       Registry(server.store))

    return make


def test_grants_by_another_process_count_in_the_remembered_window(make_ctx: Make) -> None:
    ctx = make_ctx(**WINDOW)  # window_count 2, window 5 min, reservation 10 min
    serve = Memory()
    assert admission.availability(ctx, "A", T, memory=serve) == Verdict(True)
    # Another process (no memory of its own) takes the second place...
    assert admission.availability(ctx, "B", T + 1) == Verdict(True)
    # ...which the remembering one sees: the window is full.
    assert admission.availability(ctx, "C", T + 2, memory=serve) == Verdict(False, "window", 299)
    # A grant file removed behind its back frees the place.
    os.unlink(os.path.join(admissions_dir(ctx.store), "B"))
    assert admission.availability(ctx, "C", T + 3, memory=serve) == Verdict(True)
    # A renewed grant (a new file with the same name) is read again: A's new grant is at
    # T + 300, so at T + 301 the window holds C and A, and D must wait.
    assert admission.availability(ctx, "A", T + 600) == Verdict(True)
    assert admission.availability(ctx, "D", T + 301, memory=serve).reason == "window"
    # A grant being written (its temporary name) is no grant.
    open(os.path.join(admissions_dir(ctx.store), ".E.1.tmp"), "w").close()
    assert set(serve.grants.all(ctx.store)) == {"A", "C"}


def test_remembered_records_follow_the_registry(server: Server) -> None:
    server.add_client("SHF00000001")
    registry = Registry(server.store)
    records = Memory().records
    records.check(registry, "SHF00000001")
    registry.modify("SHF00000001", lambda c: setattr(c, "disabled", True))
    with pytest.raises(ClientDisabled):
        records.check(registry, "SHF00000001")
    registry.modify("SHF00000001", lambda c: setattr(c, "disabled", False))
    records.check(registry, "SHF00000001")
    registry.remove("SHF00000001")
    with pytest.raises(UnknownClient):
        records.check(registry, "SHF00000001")
    with pytest.raises(UnknownClient):
        records.check(registry, "SHF00000009")
