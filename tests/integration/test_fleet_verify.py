"""``fleet/verify.py``: a moved copy of snapshots checked against the source's content
manifests (what ``move-client`` runs on its target, as ``fleet verify-copy``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Server, local_push
from xsbackup.fleet.verify import Differs, digests, verify
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


def digests_of(snaps: Path, ids: list[str]) -> dict[str, str]:
    return dict(digests(lambda sid: snaps / sid, ids))


def test_the_sources_digests_find_every_metadata_difference(
        server: Server, tmp_path: Path) -> None:
    """The copy's walk against the source's digests: equal for an exact copy; a changed
    mode, mtime or xattr, an extra entry or a hardlink lost each names the snapshot."""
    ids, copy = two_snapshots(server, tmp_path)
    source = digests_of(server.store.snapshots_dir(SN, "documents"), ids)
    assert run_with(server, copy, ids, source) == ids
    first, second = copy / ids[0], copy / ids[1]

    def differs(sid: str) -> None:
        with pytest.raises(Differs, match=f"documents/{sid}: its entries or metadata"):
            run_with(server, copy, ids, source)

    (first / "sub").chmod(0o700)
    differs(ids[0])
    (first / "sub").chmod((server.store.snapshots_dir(SN, "documents") / ids[0] / "sub")
                          .stat().st_mode & 0o7777)
    assert run_with(server, copy, ids, source) == ids
    top = second.stat()

    def restored() -> None:  # the snapshot directory's mtime, after its entries changed
        os.utime(second, ns=(top.st_atime_ns, top.st_mtime_ns))

    (second / "extra").write_text("not on the source\n")
    restored()
    differs(ids[1])
    (second / "extra").unlink()
    restored()
    assert run_with(server, copy, ids, source) == ids
    os.setxattr(second / "sub" / "note", "user.added", b"1")
    differs(ids[1])
    os.removexattr(second / "sub" / "note", "user.added")
    same = second / "same"  # shared with the first snapshot: made its own inode
    st = same.stat()
    body = same.read_bytes()
    same.unlink()
    same.write_bytes(body)
    for name in os.listxattr(first / "same"):  # the same xattrs, mode and mtime
        os.setxattr(same, name, os.getxattr(first / "same", name))
    os.chmod(same, st.st_mode & 0o7777)
    os.utime(same, ns=(st.st_atime_ns, st.st_mtime_ns))
    restored()
    differs(ids[1])
    same.unlink()
    os.link(first / "same", same)
    restored()
    assert run_with(server, copy, ids, source) == ids


def run_with(server: Server, copy: Path, ids: list[str], expected: dict[str, str],
             owners: bool = True) -> list[str]:
    done: list[str] = []
    verify(server.ctx().storage, lambda sid: copy / sid, SN, "documents", ids, done.append,
           expected=expected, owners=owners)
    return done


def test_owners_are_compared_only_when_asked(server: Server, tmp_path: Path) -> None:
    """rsync keeps owners only when the receiving end runs as root: without ``owners``
    (both sides), a copy owned by someone else is the same copy."""
    ids, copy = two_snapshots(server, tmp_path)
    snaps = server.store.snapshots_dir(SN, "documents")
    os.lchown(copy / ids[1] / "sub", 12345, 12345)  # a directory: its own inode here
    with pytest.raises(Differs, match=f"documents/{ids[1]}: its entries or metadata"):
        run_with(server, copy, ids, digests_of(snaps, ids))
    plain = dict(digests(lambda sid: snaps / sid, ids, owners=False))
    assert run_with(server, copy, ids, plain, owners=False) == ids
