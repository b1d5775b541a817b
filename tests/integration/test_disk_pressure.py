"""A failed transfer never takes the server down, on a real 64 MiB tmpfs that runs out of
blocks, or of inodes.

* A transfer that fills the disk leaves nothing behind that keeps clients refused: once
  the administrator frees some unrelated space, both clients' next backups work.
* What an interrupted transfer kept for resuming is its own client's weight: the soft
  quota discards it before any snapshot, so another client's history is never trimmed
  for it, and prune works on a disk with no free block or inode at all.
* An interrupted transfer left untouched for ``ingest.abandon_partial_hours`` is
  discarded by the policy prune.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import Server, local_push
from xsbackup.retention import prune
from xsbackup.snapshots import postprocess
from xsbackup.store import disk_use, get_xattrs, init_root

pytestmark = pytest.mark.integration
A, B = "SHFAAAAAAA1", "SHFBBBBBBB1"
MIB = 1 << 20


def until_full(step: Callable[[int], object]) -> None:
    """Call ``step(0)``, ``step(1)``, ... until the filesystem says it is full."""
    def forever() -> None:
        n = 0
        while True:
            step(n)
            n += 1

    with pytest.raises(OSError, match="No space left on device") as full:
        forever()
    assert full.value.errno == errno.ENOSPC


@dataclass
class Scarcity:
    """What runs out, and how to use it up."""

    kind: str            # blocks | inodes
    mount: str           # tmpfs options

    def hog(self, src: Path) -> None:
        """A client tree bigger than the whole filesystem."""
        src.mkdir(parents=True, exist_ok=True)
        if self.kind == "blocks":
            for i in range(18):
                (src / f"video-{i:02d}.bin").write_bytes(b"\x5a" * (4 * MIB))
        else:
            for i in range(1500):
                (src / f"note-{i:04d}.txt").write_bytes(b"")

    def unhog(self, src: Path) -> None:
        for p in src.iterdir():
            if p.name.startswith(("video-", "note-")):
                p.unlink()

    def unrelated(self, where: Path) -> Path:
        """The administrator's files on the same filesystem, a few percent of it."""
        where.mkdir()
        if self.kind == "blocks":
            (where / "old-iso.bin").write_bytes(b"\x00" * (2 * MIB))
        else:
            for i in range(40):
                (where / f"{i}").write_bytes(b"")
        return where

    def fill(self, where: Path) -> None:
        """Use up every last block, or inode, in the existing directory ``where``."""
        if self.kind == "blocks":
            for name, chunk in (("filler.bin", 65536), ("tail.bin", 512)):
                with (where / name).open("wb", buffering=0) as fh:
                    until_full(lambda _, fh=fh, chunk=chunk: fh.write(b"\xff" * chunk))
            assert disk_use(where).free_bytes == 0
        else:
            until_full(lambda n: (where / f"filler-{n}").write_bytes(b""))
            assert os.statvfs(where).f_ffree == 0

    def pct(self, path: Path) -> float:
        use = disk_use(path)
        return use.blocks_pct if self.kind == "blocks" else use.inodes_pct


@pytest.fixture(params=[Scarcity("blocks", "size=64m"),
                        Scarcity("inodes", "size=64m,nr_inodes=1200")],
                ids=lambda s: s.kind)
def scarce(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Scarcity, Path]]:
    """A private 64 MiB tmpfs (with 1200 inodes for the inode case), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", request.param.mount, "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.strip()}")
    try:
        yield request.param, mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def two_clients(mnt: Path, tmp_path: Path, config: str) -> tuple[Server, dict[str, Path]]:
    """A server on the tmpfs with clients A and B, one small snapshot each."""
    keydir = tmp_path / "keys"
    keydir.mkdir()
    server = Server(mnt / "state", keydir)
    init_root(server.root)
    server.configure(config)
    sources = {}
    for serial in (A, B):
        server.add_client(serial)
        src = tmp_path / serial
        src.mkdir()
        (src / "diary.txt").write_text(f"{serial}'s diary\n")
        sources[serial] = src
        assert local_push(server, serial, src).returncode == 0
    postprocess.run_once(server.ctx())
    return server, sources


def test_a_transfer_that_fills_the_disk_never_keeps_clients_refused(
        scarce: tuple[Scarcity, Path], tmp_path: Path) -> None:
    scarcity, mnt = scarce
    server, sources = two_clients(mnt, tmp_path,
                                  "[admission]\nmax_blocks_pct = 95\nmax_inodes_pct = 95\n")
    unrelated = scarcity.unrelated(mnt / "admin")
    scarcity.hog(sources[A])
    failed = local_push(server, A, sources[A])
    assert failed.returncode not in (0, 24)

    # The administrator deletes something unrelated; the pupil deletes the videos.
    for p in unrelated.iterdir():
        p.unlink()
    scarcity.unhog(sources[A])
    (sources[B] / "diary.txt").write_text("B's diary, day two\n")
    for serial in (B, A):
        r = local_push(server, serial, sources[serial])
        assert r.returncode == 0, f"{serial}: {r.stderr}"
    assert postprocess.run_once(server.ctx()) == {"promoted": 2}
    for serial in (A, B):
        assert len(server.store.snapshot_ids(serial, "documents")) == 2
    assert not (server.store.volume_dir(A, "documents") / "current").exists()
    assert "the disk is full, so it will not be resumed" in \
        get_xattrs(server.store.client_dir(A))["last_error"]


def history(server: Server, serial: str, src: Path, count: int, size: int) -> list[str]:
    """``count`` real backups, each with that week's file of ``size`` bytes only (so each
    snapshot alone holds one)."""
    for i in range(count):
        for old in src.glob("week-*.bin"):
            old.unlink()
        (src / f"week-{i:02d}.bin").write_bytes(bytes([i + 1]) * size)
        assert local_push(server, serial, src).returncode == 0
        postprocess.run_once(server.ctx())
    return server.store.snapshot_ids(serial, "documents")


def test_the_quota_prune_discards_debris_first_even_on_a_full_disk(
        scarce: tuple[Scarcity, Path], tmp_path: Path) -> None:
    scarcity, mnt = scarce
    # Admission lets the disk fill up completely, so A's interrupted transfer is kept for
    # resuming; the soft quota is at half the disk.
    server, sources = two_clients(mnt, tmp_path, "[admission]\nmax_blocks_pct = 100\n"
                                  "max_inodes_pct = 100\n[quota]\nsoft_quota_pct = 50\n")
    b_history = history(server, B, sources[B], 8, 5 * MIB // 2)  # 20 MiB: over its share
    (mnt / "admin").mkdir()
    scarcity.hog(sources[A])
    assert local_push(server, A, sources[A]).returncode not in (0, 24)
    assert (server.store.volume_dir(A, "documents") / "current").is_dir()
    scarcity.fill(mnt / "admin")

    r = server.xsbackup("prune", "--quota-only", "--json", check=False)
    assert (r.returncode, r.stderr) == (0, "")
    quota = orjson.loads(r.stdout)["quota"]
    assert [(p["client"], p["outcome"]) for p in quota["partials"]] == [(A, "discarded")]
    assert quota["quota"]["result"] == "under quota"
    assert quota["items"] == []
    assert server.store.snapshot_ids(B, "documents") == b_history
    assert not (server.store.volume_dir(A, "documents") / "current").exists()
    assert scarcity.pct(mnt) < 50


def test_prune_works_with_nothing_free(scarce: tuple[Scarcity, Path],
                                       tmp_path: Path) -> None:
    scarcity, mnt = scarce
    server, sources = two_clients(mnt, tmp_path, "[quota]\nsoft_quota_pct = 10\n")
    b_history = history(server, B, sources[B], 6, 3 * MIB)
    (mnt / "admin").mkdir()
    scarcity.fill(mnt / "admin")
    r = server.xsbackup("prune", "--json", check=False)
    assert (r.returncode, r.stderr) == (0, "")
    quota = orjson.loads(r.stdout)["quota"]
    assert quota["quota"]["rounds"] >= 1
    trimmed = [(i["client"], i["id"], i["outcome"]) for i in quota["items"]]
    assert trimmed
    assert {(c, o) for c, _, o in trimmed} == {(B, "pruned")}
    assert server.store.snapshot_ids(B, "documents") == \
        [s for s in b_history if s not in {i for _, i, _ in trimmed}]
    assert server.store.snapshot_ids(B, "documents")[-1] == b_history[-1]
    # Measured before deleting, cached only afterwards, when there was room.
    assert (server.store.client_dir(A) / "usage.json").exists()


def test_an_abandoned_transfer_is_discarded_after_its_age(small_fs: Path,
                                                         tmp_path: Path) -> None:
    server, sources = two_clients(small_fs, tmp_path, "[admission]\nmax_blocks_pct = 100\n"
                                  "max_inodes_pct = 100\n[ingest]\n"
                                  "abandon_partial_hours = 24\n")
    Scarcity("blocks", "").hog(sources[A])
    assert local_push(server, A, sources[A]).returncode not in (0, 24)
    current = server.store.volume_dir(A, "documents") / "current"
    assert current.is_dir()
    now = dt.datetime.now(dt.UTC)
    kept = prune.policy_prune(server.ctx(), now)
    assert kept.partials == []
    assert current.is_dir()
    later = prune.policy_prune(server.ctx(), now + dt.timedelta(hours=25))
    (gone,) = later.partials
    assert (gone.client, gone.outcome) == (A, "discarded")
    # The tree, and the half-sent file rsync kept (its --partial-dir) to resume it.
    assert gone.discarded[0] == "current"
    assert [p.split("/")[0] for p in gone.discarded[1:]] == ["partial"]
    assert not current.exists()
    assert os.listdir(current.parent / "partial") == []
    assert server.store.snapshot_ids(A, "documents")  # history untouched
