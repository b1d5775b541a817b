"""The storage backend on real files: prepare, complete, promote, delete, purge, measure.

rsync is the real one, run locally with the options ``prepare`` returns, so a wrong
``--link-dest`` shows up as files that are not hardlinked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from xsbackup import config
from xsbackup.context import Context
from xsbackup.errors import ConfigError
from xsbackup.locking import FileLock, lock_directory
from xsbackup.storage import open_backend
from xsbackup.storage.base import DEDUP_FILES, Backend, IngestTarget
from xsbackup.storage.hardlink import HardlinkBackend
from xsbackup.store import Store, init_root

SN = "SHF00112233"
VOL = "documents"
IDS = ("2026-01-01T000000Z", "2026-01-02T000000Z", "2026-01-03T000000Z")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return init_root(tmp_path / "state")


@pytest.fixture
def backend(store: Store) -> Backend:
    return HardlinkBackend(store)


def rsync_into(target: IngestTarget, src: Path) -> None:
    """A local rsync with the backend's options, inheriting its descriptors."""
    r = subprocess.run(["rsync", "-a", *target.rsync_args, f"{src}/", f"{target.path}/"],
                       pass_fds=target.pass_fds, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def upload(backend: Backend, src: Path, sid: str) -> Path:
    with backend.prepare(SN, VOL) as target:
        rsync_into(target, src)
        return backend.complete(target, sid)


def source(tmp_path: Path, files: dict[str, bytes]) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, body in files.items():
        (src / name).write_bytes(body)
        os.utime(src / name, (1_700_000_000, 1_700_000_000))
    return src


def test_round_trip_links_unchanged_files_and_promotes(store: Store, backend: Backend,
                                                       tmp_path: Path) -> None:
    src = source(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"beta\n"})
    first = upload(backend, src, IDS[0])
    assert first == store.incoming_dir(SN, VOL) / IDS[0]
    assert not (store.volume_dir(SN, VOL) / "current").exists()
    assert store.incoming_ids(SN, VOL) == [IDS[0]]
    visible = backend.promote(SN, VOL, IDS[0])
    assert visible == store.snapshots_dir(SN, VOL) / IDS[0]
    assert store.incoming_ids(SN, VOL) == []
    assert store.latest_id(SN, VOL) == IDS[0]
    (src / "b.txt").write_bytes(b"beta changed\n")  # another size: rsync sees it
    second = upload(backend, src, IDS[1])
    assert (second / "a.txt").stat().st_ino == (visible / "a.txt").stat().st_ino
    assert (second / "b.txt").stat().st_ino != (visible / "b.txt").stat().st_ino
    assert (visible / "b.txt").read_bytes() == b"beta\n"  # history untouched
    backend.promote(SN, VOL, IDS[1])
    assert store.latest_id(SN, VOL) == IDS[1]
    # Promoting again changes nothing: the recovery path of a killed post-processor.
    backend.promote(SN, VOL, IDS[1])
    assert store.snapshot_ids(SN, VOL) == list(IDS[:2])
    assert store.latest_id(SN, VOL) == IDS[1]


def test_a_base_waiting_in_incoming_is_pinned_by_descriptor(backend: Backend,
                                                            tmp_path: Path) -> None:
    src = source(tmp_path, {"a.txt": b"alpha\n"})
    waiting = upload(backend, src, IDS[0])  # not promoted: the newest base is incoming/
    with backend.prepare(SN, VOL) as target:
        (fd,) = target.pass_fds
        assert f"--link-dest=/proc/self/fd/{fd}" in target.rsync_args
        # The post-processor promotes the base mid-transfer: the pinned base still works.
        backend.promote(SN, VOL, IDS[0])
        rsync_into(target, src)
        linked = target.path / "a.txt"
        assert linked.stat().st_ino == (waiting.parent.parent / "snapshots" / IDS[0] /
                                        "a.txt").stat().st_ino
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closing the target released the pin


def test_an_interrupted_transfer_is_reused_but_never_stored(store: Store, backend: Backend,
                                                            tmp_path: Path) -> None:
    vol = store.volume_dir(SN, VOL)
    src = source(tmp_path, {"done.bin": os.urandom(5000), "new.txt": b"new\n"})
    with backend.prepare(SN, VOL) as target:  # killed: nothing completed
        (target.path / "done.bin").write_bytes((src / "done.bin").read_bytes())
        os.utime(target.path / "done.bin", (1_700_000_000, 1_700_000_000))
        (target.path / "stale.tmp").write_bytes(b"half a file")
    with backend.prepare(SN, VOL) as target:
        assert f"--link-dest={vol / 'resume'}" in target.rsync_args
        assert (vol / "resume" / "stale.tmp").exists()
        resumed_ino = (vol / "resume" / "done.bin").stat().st_ino
        rsync_into(target, src)
        incoming = backend.complete(target, IDS[0])
        assert (incoming / "done.bin").stat().st_ino == resumed_ino
        assert (vol / "resume").exists()  # kept until the transfer is queued and closed
    assert not (vol / "resume").exists()
    assert sorted(p.name for p in incoming.iterdir()) == ["done.bin", "new.txt"]
    assert os.listdir(store.trash_dir) == []


def test_delete_refuses_a_snapshot_being_read_then_purge_reclaims(
        store: Store, backend: Backend, tmp_path: Path) -> None:
    src = source(tmp_path, {"a.txt": b"alpha\n"})
    for sid in IDS[:2]:
        upload(backend, src, sid)
        backend.promote(SN, VOL, sid)
    reader = lock_directory(store.snapshots_dir(SN, VOL) / IDS[0], shared=True)
    try:
        assert backend.delete(SN, VOL, IDS[0]) == "being read"
    finally:
        os.close(reader)
    assert backend.delete(SN, VOL, IDS[0]) == ""
    assert backend.delete(SN, VOL, IDS[0]) == "already gone"
    assert store.snapshot_ids(SN, VOL) == [IDS[1]]
    assert len(os.listdir(store.trash_dir)) == 1
    with FileLock(store.locks_dir / "trash.lock").acquire():
        assert backend.purge() == 0  # another purger is at work: return at once
    assert len(os.listdir(store.trash_dir)) == 1
    seen: list[int] = []
    removed = backend.purge(seen.append)
    assert removed == 2  # the one file inside, then the snapshot directory
    assert seen == [1, 2]
    assert os.listdir(store.trash_dir) == []
    assert (store.snapshots_dir(SN, VOL) / IDS[1] / "a.txt").read_bytes() == b"alpha\n"


def test_measure_after_the_round_trip(backend: Backend, tmp_path: Path) -> None:
    src = source(tmp_path, {"same.bin": os.urandom(40_000), "own.bin": os.urandom(8_000)})
    for n, sid in enumerate(IDS[:2]):
        (src / "own.bin").write_bytes(os.urandom(8_000))
        os.utime(src / "own.bin", (1_600_000_000 + n, 1_600_000_000 + n))  # rsync sees it
        upload(backend, src, sid)
        backend.promote(SN, VOL, sid)
    use = backend.measure(SN)
    assert [(s.volume, s.id) for s in use.snapshots] == [(VOL, IDS[0]), (VOL, IDS[1])]
    for s in use.snapshots:
        assert (s.files, s.apparent, s.shared) == (2, 48_000, 40_000)
        assert 8_000 <= s.exclusive < 8_000 + 3 * 4096  # own.bin and the directory
    assert use.total >= 40_000 + 2 * 8_000


def test_the_factory_and_the_setting(tmp_path: Path) -> None:
    settings = config.load(tmp_path, environ={})
    assert settings.storage.backend == "auto"  # the root's record; none: hardlink
    ctx = Context.open(settings, require=False)
    info = ctx.storage.describe()
    assert info.name == "hardlink"
    assert DEDUP_FILES in info.capabilities
    assert isinstance(open_backend("hardlink", Store(tmp_path)), HardlinkBackend)
    with pytest.raises(ConfigError, match=r"storage\.backend"):
        open_backend("zfs", Store(tmp_path))
    with pytest.raises(ConfigError, match="must be one of auto, hardlink"):
        config.load(tmp_path, environ={"XSBACKUP_STORAGE_BACKEND": "zfs"})
