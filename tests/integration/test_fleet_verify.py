"""``fleet/verify.py``: a moved copy of snapshots checked against the source's content
manifests (what ``move-client`` runs on its target, as ``fleet verify-copy``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Server, local_push
from xsbackup.fleet.verify import Differs, verify
from xsbackup.snapshots import manifest

pytestmark = pytest.mark.integration

SN = "SHV00000001"


def two_snapshots(server: Server, tmp_path: Path) -> tuple[list[str], Path]:
    """Two promoted snapshots (with manifests) and an exact copy of them (``cp -a``)."""
    server.add_client(SN)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "same").write_bytes(os.urandom(50_000))
    (src / "sub" / "note").write_text("one\n")
    assert local_push(server, SN, src).returncode == 0
    (src / "sub" / "note").write_text("second\n")
    os.utime(src / "sub" / "note", (1_700_000_000, 1_700_000_000))  # surely changed
    assert local_push(server, SN, src).returncode == 0
    server.xsbackup("postprocess")
    ids = server.store.snapshot_ids(SN, "documents")
    assert len(ids) == 2
    copy = tmp_path / "copy"
    shutil.copytree(server.store.snapshots_dir(SN, "documents"), copy, symlinks=True,
                    copy_function=os.link)  # keeps the sharing, as the move's -H does
    return ids, copy


def run(server: Server, copy: Path, ids: list[str]) -> list[str]:
    done: list[str] = []
    verify(server.ctx().storage, lambda sid: copy / sid, SN, "documents", ids, done.append)
    return done


def test_an_exact_copy_is_verified_and_each_shared_inode_read_once(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids, copy = two_snapshots(server, tmp_path)
    read: list[str] = []
    real = manifest.digest_at

    def counting(name: str, dir_fd: int | None = None) -> tuple[str, int]:
        read.append(name)
        return real(name, dir_fd)

    monkeypatch.setattr(manifest, "digest_at", counting)
    assert run(server, copy, ids) == ids
    # "same" is one inode in both snapshots: read once; the changed note twice.
    assert sorted(Path(p).name for p in read) == ["note", "note", "same"]


def test_changed_content_of_the_same_size_and_mtime_is_found(
        server: Server, tmp_path: Path) -> None:
    ids, copy = two_snapshots(server, tmp_path)
    victim = copy / ids[1] / "sub" / "note"
    st = victim.stat()
    victim.unlink()  # its own inode: the first snapshot's copy stays right
    victim.write_text("SECOND\n")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(Differs, match=f"documents/{ids[1]}/sub/note: content differs"):
        run(server, copy, ids)


def test_a_missing_file_or_manifest_is_a_difference(server: Server, tmp_path: Path) -> None:
    ids, copy = two_snapshots(server, tmp_path)
    (copy / ids[0] / "same").unlink()
    with pytest.raises(Differs, match=f"documents/{ids[0]}/same: No such file"):
        run(server, copy, ids)
    (server.store.volume_dir(SN, "documents") / "manifests" / f"{ids[1]}.jsonl").unlink()
    with pytest.raises(Differs, match=f"documents/{ids[1]}: has no manifest"):
        run(server, copy, ids[1:])
