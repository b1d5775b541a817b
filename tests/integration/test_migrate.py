"""``xsbackup migrate --to btrfs`` on a loop-mounted btrfs image: three clients with ten
hardlink snapshots each become read-only subvolumes with the same ids, bytes, modes,
mtimes, xattrs and facts, also when the first run is killed halfway."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.backends import backend_root
from tests.conftest import XSBACKUP, Server, _local_rsh, local_push
from tests.integration.test_backends import state
from xsbackup.snapshots import postprocess
from xsbackup.storage.btrfs import is_subvolume
from xsbackup.storage.choice import recorded
from xsbackup.store import init_root

pytestmark = pytest.mark.integration
CLIENTS = ("SMA00000001", "SMA00000002", "SMA00000003")


def history(server: Server) -> dict[str, object]:
    out: dict[str, object] = {}
    for c in CLIENTS:
        for sid in server.store.snapshot_ids(c, "documents"):
            out[f"{c}/{sid}"] = state(server.store.snapshots_dir(c, "documents") / sid)
    return out


def test_migrate_keeps_everything_and_resumes(request: pytest.FixtureRequest,
                                             tmp_path: Path) -> None:
    root = backend_root(request, "btrfs", tmp_path)
    init_root(root)
    keys = tmp_path / "keys"
    keys.mkdir()
    server = Server(root, keys)
    server.configure("")
    _local_rsh(server, "")
    for n, c in enumerate(CLIENTS):
        server.add_client(c)
        src = tmp_path / c
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "same.bin").write_bytes(os.urandom(10_000))
        for i in range(10):
            (src / f"f{i}.txt").write_text(f"{c} round {i}\n")
            os.chmod(src / "sub" / "same.bin", 0o600 if i % 2 else 0o644)
            os.utime(src / "f0.txt", (1_000_000_000 + i, 1_000_000_000 + i))
            r = local_push(server, c, src)
            assert r.returncode == 0, r.stderr
        postprocess.run_once(server.ctx())
        assert len(server.store.snapshot_ids(c, "documents")) == 10, n
    before = history(server)
    assert recorded(server.store) is None

    killed = subprocess.run([XSBACKUP, "--root", str(root), "migrate", "--to", "btrfs"],
                            env={**os.environ, "XSBACKUP_CRASH_AT": "migrate-after-snapshot"},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert history(server) == before  # nothing half-converted is visible
    assert server.store.maintenance_flag.exists()  # transfers stay refused meanwhile

    r = server.cli("migrate", "--to", "btrfs", "--json")
    report = orjson.loads(r.stdout)
    assert len(report["migrated"]) == 30
    assert recorded(server.store) == "btrfs"
    assert not server.store.maintenance_flag.exists()
    assert history(server) == before
    for c in CLIENTS:
        snaps = server.store.snapshots_dir(c, "documents")
        assert all(is_subvolume(snaps / s) for s in os.listdir(snaps))
    assert os.listdir(server.store.trash_dir) == []
    assert orjson.loads(server.cli("status", "--json").stdout)["storage"]["name"] == "btrfs"

    # Backups go on, now as btrfs snapshots; a second migrate has nothing to do.
    (tmp_path / CLIENTS[0] / "after.txt").write_text("after\n")
    assert local_push(server, CLIENTS[0], tmp_path / CLIENTS[0]).returncode == 0
    postprocess.run_once(server.ctx())
    assert len(server.store.snapshot_ids(CLIENTS[0], "documents")) == 11
    again = orjson.loads(server.cli("migrate", "--to", "btrfs", "--json").stdout)
    assert again["migrated"] == []
