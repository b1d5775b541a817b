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
from xsbackup.snapshots.snapshot import write_facts
from xsbackup.storage.btrfs import is_subvolume
from xsbackup.storage.choice import recorded
from xsbackup.storage.permissions import STAT_XATTR
from xsbackup.store import atomic_symlink, init_root

pytestmark = pytest.mark.integration
CLIENTS = ("SMA00000001", "SMA00000002", "SMA00000003")


def history(server: Server) -> dict[str, object]:
    out: dict[str, object] = {}
    for c in CLIENTS:
        for sid in server.store.snapshot_ids(c, "documents"):
            out[f"{c}/{sid}"] = state(server.store.snapshots_dir(c, "documents") / sid)
    return out


def hardlink_history(server: Server, client: str) -> None:
    """Ten snapshots as the hardlink backend's ingest and post-processor leave them:
    unchanged files hardlinked to the previous snapshot, a stored symlink, rsync's
    attribute records, odd modes and mtimes, the facts on each snapshot directory."""
    snaps = server.store.snapshots_dir(client, "documents")
    snaps.mkdir(parents=True)
    prev: Path | None = None
    for i in range(10):
        d = snaps / f"2026-11-{10 + i:02d}T120000Z"
        (d / "sub").mkdir(parents=True)
        if prev is None:
            (d / "sub" / "same.bin").write_bytes(os.urandom(10_000))
        else:
            os.link(prev / "sub" / "same.bin", d / "sub" / "same.bin")
        (d / f"f{i}.txt").write_text(f"{client} round {i}\n")
        os.chmod(d / f"f{i}.txt", 0o600 if i % 2 else 0o640)
        os.setxattr(d / f"f{i}.txt", STAT_XATTR, b"100666 0,0 1000:1000")
        (d / "link").write_text("f0.txt")  # a symlink, as --fake-super stores it
        os.utime(d / "sub", (1_000_000_000 + i, 1_000_000_000 + i))
        write_facts(d, {"created": f"2026-11-{10 + i:02d}T12:00:00+00:00", "files": i + 3,
                        "origin": {"client": client}})
        prev = d
    atomic_symlink(f"snapshots/{prev.name}", snaps.parent / "latest")


def test_migrate_keeps_everything_and_resumes(request: pytest.FixtureRequest,
                                             tmp_path: Path) -> None:
    root = backend_root(request, "btrfs", tmp_path)
    init_root(root)
    keys = tmp_path / "keys"
    keys.mkdir()
    server = Server(root, keys)
    server.configure("")
    _local_rsh(server, "")
    for c in CLIENTS:
        server.add_client(c)
        hardlink_history(server, c)
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
    src = tmp_path / "src"
    src.mkdir()
    (src / "after.txt").write_text("after\n")
    assert local_push(server, CLIENTS[0], src).returncode == 0
    postprocess.run_once(server.ctx())
    assert len(server.store.snapshot_ids(CLIENTS[0], "documents")) == 11
    again = orjson.loads(server.cli("migrate", "--to", "btrfs", "--json").stdout)
    assert again["migrated"] == []
