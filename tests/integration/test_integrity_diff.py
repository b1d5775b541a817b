"""``diff`` and ``find`` against brute force (both client trees walked, bytes compared) on
randomised trees pushed with real rsync; the SSH verbs and their refusals."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, Sshd, local_push
from xsbackup.errors import NotReadable, SnapshotNotFound
from xsbackup.integrity import diff
from xsbackup.snapshots import postprocess
from xsbackup.snapshots.snapshot import read_facts

pytestmark = pytest.mark.integration
SN, OTHER = "SHF000DIFF1", "SHF000DIFF2"
BASE = 1_600_000_000
DIRS = ["", "x", "x/y", "z"]
NAMES = ["a", "b.txt", "c.odt", "essay.odt"]
_volumes = itertools.count()

FILE = st.tuples(st.sampled_from(DIRS), st.sampled_from(NAMES),
                 st.binary(max_size=40), st.sampled_from([0o644, 0o600, 0o755]))
OP = st.tuples(st.sampled_from(["add", "remove", "edit", "same-size-edit", "chmod",
                                "touch", "chmod-dir", "to-symlink", "retarget"]),
               st.integers(0, 50), st.binary(min_size=1, max_size=30))


def build(root: Path, files: dict[str, tuple[bytes, int]]) -> None:
    root.mkdir()
    for rel, (body, mode) in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
        os.chmod(p, mode)
        os.utime(p, ns=(BASE * 10**9, BASE * 10**9))


def mutate(b: Path, files: dict[str, tuple[bytes, int]],
           ops: list[tuple[str, int, bytes]]) -> None:
    """Apply ``ops`` to the copy ``b``; every content change also changes the mtime (as
    an editor does), so rsync's quick check sees it."""
    for n, (op, pick, data) in enumerate(ops):
        paths = sorted(str(p.relative_to(b)) for p in b.rglob("*")
                       if p.is_file() or p.is_symlink())
        when = (BASE + 1000 + n) * 10**9
        if op == "add":
            p = b / DIRS[pick % len(DIRS)] / f"new{n}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.utime(p, ns=(when, when))
            continue
        if op == "chmod-dir":
            dirs = sorted(p for p in b.rglob("*") if p.is_dir() and not p.is_symlink())
            if dirs:
                d = dirs[pick % len(dirs)]
                os.chmod(d, 0o700 if stat.S_IMODE(d.stat().st_mode) != 0o700 else 0o755)
            continue
        if not paths:
            continue
        p = b / paths[pick % len(paths)]
        if op == "retarget" and p.is_symlink():
            p.unlink()
            p.symlink_to(data.hex())
            os.utime(p, ns=(when, when), follow_symlinks=False)
            continue
        if p.is_symlink():
            continue
        if op == "remove":
            p.unlink()
        elif op == "edit":
            p.write_bytes(p.read_bytes() + data)
            os.utime(p, ns=(when, when))
        elif op == "same-size-edit":
            body = bytearray(p.read_bytes() or b"\0")
            body[0] ^= 0xFF
            p.write_bytes(bytes(body))
            os.utime(p, ns=(when, when))
        elif op == "chmod":
            os.chmod(p, p.stat().st_mode ^ 0o040)
        elif op == "touch":
            os.utime(p, ns=(when, when))
        elif op == "to-symlink":
            p.unlink()
            p.symlink_to(f"target-{n}")
            os.utime(p, ns=(when, when), follow_symlinks=False)


def items(root: Path) -> dict[str, tuple[int, os.stat_result, bytes]]:
    """Brute force: every path with its lstat and content (a symlink's target)."""
    out = {}
    for p in root.rglob("*"):
        s = p.lstat()
        body = os.readlink(p).encode() if p.is_symlink() else \
            p.read_bytes() if stat.S_ISREG(s.st_mode) else b""
        out[str(p.relative_to(root))] = (stat.S_IFMT(s.st_mode), s, body)
    return out


def brute_diff(a: Path, b: Path) -> set[tuple[str, str]]:
    ia, ib = items(a), items(b)
    out = {("added", p) for p in ib.keys() - ia.keys()}
    out |= {("removed", p) for p in ia.keys() - ib.keys()}
    for p in ia.keys() & ib.keys():
        (ka, sa, ba), (kb, sb, bb) = ia[p], ib[p]
        if ka != kb or ba != bb:
            out.add(("modified", p))
        elif stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode) or \
                (ka != stat.S_IFDIR and sa.st_mtime_ns != sb.st_mtime_ns):
            out.add(("metadata", p))
    return out


def brute_find(trees: dict[str, Path], pattern: str) -> dict[str, set[frozenset[str]]]:
    """path -> the sets of snapshots holding each distinct version of it."""
    import fnmatch

    found: dict[str, dict[tuple[int, bytes], set[str]]] = {}
    for sid, root in trees.items():
        for path, (kind, _, body) in items(root).items():
            subject = path if "/" in pattern else path.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(subject, pattern):
                found.setdefault(path, {}).setdefault((kind, body), set()).add(sid)
    return {p: {frozenset(s) for s in vs.values()} for p, vs in found.items()}


def push(server: Server, src: Path, volume: str) -> str:
    r = local_push(server, SN, src, volume)
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    return server.store.snapshot_ids(SN, volume)[-1]


@pytest.fixture
def client(server: Server) -> Server:
    server.add_client(SN)
    return server


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(FILE, min_size=1, max_size=8), ops=st.lists(OP, max_size=6),
       pattern=st.sampled_from(["essay.odt", "*.odt", "x/*", "x/y/*", "*"]))
def test_diff_and_find_agree_with_brute_force(
        client: Server, files: list[tuple[str, str, bytes, int]],
        ops: list[tuple[str, int, bytes]], pattern: str) -> None:
    server = client
    volume = f"v{next(_volumes)}"
    tree = {f"{d}/{n}".lstrip("/"): (body, mode) for d, n, body, mode in files}
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        build(a, tree)
        shutil.copytree(a, b, symlinks=True)
        mutate(b, tree, ops)
        sa = push(server, a, volume)
        sb = push(server, b, volume)
        r = server.cli("diff", SN, sa, sb, "--volume", volume, "--json")
        got = orjson.loads(r.stdout)
        assert {(c["kind"], c["path"]) for c in got["changes"]} == brute_diff(a, b)
        for c in got["changes"]:
            if c["type"] == "file" and c["kind"] != "removed":
                assert c["size_b"] == (b / c["path"]).stat().st_size

        r = server.cli("find", SN, pattern, "--volume", volume, "--json")
        matches = orjson.loads(r.stdout)
        got_find = {m["path"]: {frozenset(v["snapshots"]) for v in m["versions"]}
                    for m in matches}
        assert got_find == brute_find({sa: a, sb: b}, pattern)
        for m in matches:
            for v in m["versions"]:
                if v["type"] == "file":
                    body = ((a if sa in v["snapshots"] else b) / m["path"]).read_bytes()
                    assert v["blake2b"] == hashlib.blake2b(body, digest_size=32).hexdigest()
        newest = server.cli("find", SN, pattern, "--volume", volume, "--newest", "1",
                            "--json")
        assert {m["path"] for m in orjson.loads(newest.stdout)} == \
            set(brute_find({sb: b}, pattern))


def test_diff_reads_no_content_where_manifests_answer(client: Server, tmp_path: Path) -> None:
    """A chmod makes a new inode with the same content. Its stored copy is then damaged
    (same size and mtime): past the read budget, diff trusts the manifests' digests and
    reads nothing (metadata only); within it, diff reads and sees the bytes differ."""
    server = client
    src = tmp_path / "src"
    build(src, {"doc.odt": (b"same bytes", 0o644), "x/keep": (b"k", 0o644)})
    first = push(server, src, "documents")
    os.chmod(src / "doc.odt", 0o600)
    second = push(server, src, "documents")
    snaps = server.store.snapshots_dir(SN, "documents")
    stored = snaps / second / "doc.odt"
    st = stored.stat()
    stored.write_bytes(b"SAME bytes")
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, _, _, changes = diff.diff(server.ctx(), SN, first, "latest", read_budget=0)
    assert [(c.kind, c.path, c.what) for c in changes] == [("metadata", "doc.odt", ["mode"])]
    _, _, _, changes = diff.diff(server.ctx(), SN, first, "latest")  # small: read, compared
    assert [(c.kind, c.path, c.what) for c in changes] == \
        [("modified", "doc.odt", ["content", "mode"])]


def ssh_json(sshd: Sshd, key: Path, command: str) -> tuple[int, list[Any], str]:
    r = subprocess.run([*sshd.ssh_base(key), "127.0.0.1", command], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return r.returncode, rows, r.stderr


def test_diff_and_find_over_ssh_only_for_own_snapshots(server: Server, sshd: Sshd,
                                                       tmp_path: Path) -> None:
    key = server.add_client(SN)
    other = server.add_client(OTHER)
    src = tmp_path / "src"
    build(src, {"essay.odt": (b"v1", 0o644)})
    first = push(server, src, "documents")
    (src / "essay.odt").write_bytes(b"version 2")
    second = push(server, src, "documents")
    r = local_push(server, OTHER, src, "secret")
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())

    code, rows, err = ssh_json(sshd, key, f"diff {first} latest")
    assert code == 0, err
    assert [(c["kind"], c["path"]) for c in rows] == [("modified", "essay.odt")]
    code, rows, err = ssh_json(sshd, key, "find essay.odt")
    assert code == 0, err
    assert [[v["snapshots"] for v in m["versions"]] for m in rows] == [[[first], [second]]]

    for command in (f"diff latest latest --from {OTHER}", f"find essay.odt --from {OTHER}"):
        code, rows, err = ssh_json(sshd, key, command)
        assert (code, rows) == (NotReadable.exit_code, []), err
        assert f"may not read the snapshots of {OTHER}" in err
    for command in ("diff latest latest --volume secret", "find essay.odt --volume secret"):
        code, rows, err = ssh_json(sshd, key, command)
        assert (code, rows) == (SnapshotNotFound.exit_code, []), err
    code, rows, err = ssh_json(sshd, other, "find essay.odt")
    assert code == 0, err
    assert [m["volume"] for m in rows] == ["secret"]


@pytest.mark.parametrize("server", ["hardlink", "btrfs"], indirect=True)
def test_in_place_changes_on_every_backend(server: Server, tmp_path: Path) -> None:
    """btrfs keeps inode numbers from one snapshot to the next, so there the same inode
    number alone proves nothing: a chmod rsync makes in place must still be a change to
    ``diff`` and a new record to the manifest (``check --read-data`` agrees with every
    manifest), and a file untouched since the previous snapshot is reused."""
    import time

    from xsbackup.integrity import check

    sn = "SHF00INPLACE"
    server.add_client(sn)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(6):
        (src / "d" / f"f{i}").write_bytes(b"x" * (i + 1))

    def push() -> tuple[str, dict[str, Any]]:
        time.sleep(1.1)  # not a bound: snapshot ids have whole seconds, and on btrfs a
        # file is reused when its ctime is before the previous id (snapshot.Changes)
        r = local_push(server, sn, src)
        assert r.returncode == 0, r.stderr
        postprocess.run_once(server.ctx())
        sid = server.store.snapshot_ids(sn, "documents")[-1]
        return sid, read_facts(server.store.snapshots_dir(sn, "documents") / sid)["manifest"]

    first, _ = push()
    os.chmod(src / "d" / "f1", 0o600)
    (src / "d" / "f2").write_bytes(b"yy")
    os.utime(src / "d" / "f2", (1_600_000_000, 1_600_000_000))
    second, facts = push()
    assert facts["hashed_files"] >= 2
    _, _, _, changes = diff.diff(server.ctx(), sn, first, second)
    assert {(c.kind, c.path) for c in changes} == {("metadata", "d/f1"), ("modified", "d/f2")}
    third, _ = push()
    fourth, facts = push()
    assert (facts["hashed_files"], facts["how"]) == (0, "linked")
    assert diff.diff(server.ctx(), sn, second, third)[3] == []
    assert diff.diff(server.ctx(), sn, third, fourth)[3] == []
    assert check.run(server.ctx(), sn, read_data=True).findings == []
