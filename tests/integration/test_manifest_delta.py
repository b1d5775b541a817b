"""Delta manifests (version 4) on real backups: a delta rests on a whole manifest and the
deltas between, kept beside it as its ``base``, ``d1``, ... parts; one reader
(``manifest.read_bytes``) resolves it into the very bytes a manifest built from scratch
has; a delta over a delta holds only its own changes (a chain), and the chain becomes a
whole manifest once it grows; pruning the snapshots a chain came from breaks nothing, on
every backend; a crash between the delta's write and the facts is finished by the next
run; and every reader agrees with a whole manifest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.backends import BACKENDS
from tests.conftest import XSBACKUP, Server, local_push
from xsbackup.fleet import verify
from xsbackup.integrity import check
from xsbackup.snapshots import manifest, postprocess
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.storage.manifests import PART_SUFFIXES

pytestmark = pytest.mark.integration
SN, VOL = "SHF00DELTA1", "documents"


def scratch(tree: Path) -> bytes:
    """The whole manifest of ``tree`` built from nothing: every file read."""
    files = [(str(p.relative_to(tree)), p.lstat()) for p in tree.rglob("*")
             if p.is_file() and not p.is_symlink()]
    return manifest.build(tree, files, None, False)[0]


def push(server: Server, src: Path) -> tuple[str, dict[str, Any]]:
    r = local_push(server, SN, src)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    sid = server.store.snapshot_ids(SN, VOL)[-1]
    return sid, dict(read_facts(server.store.snapshots_dir(SN, VOL) / sid)["manifest"])


def agree(server: Server) -> None:
    """Every snapshot's manifest, as each reader gets it, is the one built from scratch;
    check --read-data and fleet verify-copy find nothing."""
    ctx = server.ctx()
    snaps = server.store.snapshots_dir(SN, VOL)
    ids = server.store.snapshot_ids(SN, VOL)
    for sid in ids:
        whole = scratch(snaps / sid)
        assert manifest.read_bytes(ctx.storage, SN, VOL, sid) == whole, sid
        assert manifest.read(ctx.storage, SN, VOL, sid) == manifest.parse_lines(whole)
    assert check.run(ctx, SN, read_data=True).findings == []
    done: list[str] = []
    verify.verify(ctx.storage, lambda sid: snaps / sid, SN, VOL, ids, done.append)
    assert done == ids


def tree(src: Path, n: int) -> None:
    for i in range(n):
        where = src / f"d{i % 3}" / f"f{i}.txt"
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(f"file {i}\n".encode() * (i % 7 + 1))


def parts(server: Server, sid: str) -> tuple[Path, ...]:
    """The snapshot's manifest files: its own, its base, then d1, d2, ... (whether or
    not they exist)."""
    d = server.store.volume_dir(SN, VOL) / "manifests"
    return tuple(d / f"{sid}{suffix}" for suffix in PART_SUFFIXES)


@pytest.mark.parametrize("server", BACKENDS, indirect=True)
def test_a_chain_survives_pruning_its_base_on_every_backend(server: Server,
                                                            tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    tree(src, 30)
    s0, f0 = push(server, src)
    assert f0["how"] == "built"
    (src / "d0" / "f0.txt").write_bytes(b"edited\n")
    (src / "d1" / "f1.txt").unlink()
    (src / "new.txt").write_bytes(b"new\n")
    for p in (src / "d2").iterdir():
        p.unlink()
    (src / "d2").rmdir()
    (src / "d2").write_bytes(b"a directory become a file\n")
    s1, f1 = push(server, src)
    s2, f2 = push(server, src)  # no change
    (src / "d2").unlink()
    (src / "d2").mkdir()
    (src / "d2" / "back.txt").write_bytes(b"and a directory again\n")
    (src / "d0" / "f3.txt").write_bytes(b"edited too\n")
    s3, f3 = push(server, src)
    if server.backend == "hardlink":  # btrfs and reflink hash more (ctime rules), and
        # reflink snapshots share no inode, so their manifests are whole
        assert [f1["how"], f2["how"], f3["how"]] == ["delta", "linked", "delta"]
        assert f3["hashed_files"] == 2
        _main, base, d1, d2 = parts(server, s3)[:4]
        assert base.stat().st_ino == parts(server, s0)[0].stat().st_ino
        assert d1.stat().st_ino == parts(server, s1)[0].stat().st_ino  # a chain
        assert not d2.exists()
        assert parts(server, s2)[0].stat().st_ino == parts(server, s1)[0].stat().st_ino
        assert b'"depth":2' in parts(server, s3)[0].read_bytes()
    agree(server)
    ctx = server.ctx()
    for sid in (s0, s1):  # the base's snapshot, then the first delta's
        assert ctx.storage.delete(SN, VOL, sid) == ""
        assert not any(p.exists() for p in parts(server, sid))
        agree(server)
    assert server.cli("check", SN, "--read-data").exit_code == 0
    rows = server.cli("diff", SN, s2, s3, "--json").stdout
    assert "back.txt" in rows
    assert "f3.txt" in rows
    assert s3 in server.cli("find", SN, "back.txt", "--json").stdout


def test_a_growing_delta_is_compacted_into_a_whole_manifest(server: Server,
                                                            tmp_path: Path) -> None:
    n = manifest.DELTA_MIN_LINES + 44  # a base this small: DELTA_MIN_LINES bounds a delta
    server.add_client(SN)
    src = tmp_path / "src"
    tree(src, n)
    files = sorted(src.rglob("*.txt"))
    push(server, src)

    def edit(some: list[Path], mark: bytes) -> None:
        for p in some:
            p.write_bytes(p.read_bytes() + mark)

    edit(files, b"all\n")
    s1, f1 = push(server, src)  # n records: over the bound, a whole manifest
    edit(files[:10], b"few\n")
    s2, f2 = push(server, src)
    edit(files[10:20], b"few more\n")
    s3, f3 = push(server, src)  # a delta over a delta: a chain of two over s1
    edit(files[20:n - 20], b"most\n")
    s4, f4 = push(server, src)  # the chain's lines would be over the bound
    assert [f1["how"], f2["how"], f3["how"], f4["how"]] == ["merged", "delta", "delta",
                                                           "merged"]
    assert [f2["hashed_files"], f3["hashed_files"]] == [10, 10]
    assert not parts(server, s1)[1].exists()
    assert not parts(server, s4)[1].exists()
    for sid in (s2, s3):
        base = parts(server, sid)[1]
        assert base.stat().st_ino == parts(server, s1)[0].stat().st_ino
    assert parts(server, s3)[2].stat().st_ino == parts(server, s2)[0].stat().st_ino
    head = parts(server, s3)[0].read_bytes().split(b"\n", 1)[0]
    assert b'"version":4' in head
    assert b'"records":10' in head  # its own changes only
    assert b'"depth":2' in head
    assert b'"lines":20' in head
    agree(server)


def test_a_crash_between_the_delta_and_the_facts_is_finished(server: Server,
                                                             tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    tree(src, 20)
    push(server, src)
    (src / "d0" / "f3.txt").write_bytes(b"changed\n")
    r = local_push(server, SN, src)
    assert r.returncode == 0, r.stderr
    crashed = subprocess.run([XSBACKUP, "--root", str(server.root), "postprocess", "--once"],
                             env={**os.environ, "XSBACKUP_CRASH_AT": "after-manifest"},
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == -9, crashed.stderr
    sid = server.store.incoming_ids(SN, VOL)[0]
    main, base = parts(server, sid)[:2]
    assert main.exists()
    assert base.exists()
    assert server.store.snapshot_ids(SN, VOL)[-1] != sid
    assert server.cli("postprocess", "--once").exit_code == 0
    assert server.store.snapshot_ids(SN, VOL)[-1] == sid
    facts = read_facts(server.store.snapshots_dir(SN, VOL) / sid)["manifest"]
    assert (facts["how"], facts["hashed_files"]) == ("delta", 1)  # type: ignore[index]
    agree(server)
