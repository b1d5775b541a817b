"""``fleet move-client``'s switch: until the registration moves, the client stays
registered on the source (disabled), whether the move stops on a transfer waiting for
the source's post-processor or is killed just before the switch."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest

from tests.conftest import local_push
from tests.fleet_kit import fleet_of
from tests.integration.test_fleet_move import SN, move, registered_on
from xsbackup.store import init_root

pytestmark = pytest.mark.integration


def test_the_client_stays_registered_on_the_source_until_the_switch(
        tmp_path: Path, host_key: Path) -> None:
    init_root(Path(os.environ["XSBACKUP_ROOT"]))
    with fleet_of(tmp_path / "fleet", host_key, ("a", "b")) as kit:
        a, b = kit.members["a"].server, kit.members["b"].server
        a.add_client(SN)
        src = tmp_path / "src"
        src.mkdir()
        for n in range(2):
            (src / "file").write_text(f"version {n}\n")
            assert local_push(a, SN, src).returncode == 0
        a.xsbackup("postprocess")
        (src / "file").write_text("version 2\n")
        assert local_push(a, SN, src).returncode == 0  # waits for the post-processor

        r = move(kit, None)
        assert r.returncode == 72, r.stderr
        assert "waiting for its post-processor" in r.stderr
        assert registered_on(kit) == ["a"]
        record = orjson.loads((a.store.client_dir(SN) / "client.json").read_bytes())
        assert record["disabled"] is True  # no backup lands on the source meanwhile

        a.xsbackup("postprocess")
        r = move(kit, "fleet-move-retired")  # killed just before the switch
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert registered_on(kit) == ["a"]

        r = move(kit, None)
        assert r.returncode == 0, r.stderr
        assert registered_on(kit) == ["b"]
        assert len(b.store.snapshot_ids(SN, "documents")) == 3
        moved = orjson.loads((b.store.client_dir(SN) / "client.json").read_bytes())
        assert moved["disabled"] is False  # the record as it was before the move
        assert not a.store.client_dir(SN).exists()
