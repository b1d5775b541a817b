"""Content manifests and ``xsbackup check``: real backups over OpenSSH's sshd, real
damage on disk, the real CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import XSBACKUP, Server, Sshd, local_push, tree_state
from xsbackup.errors import DamageFound, StructureProblems
from xsbackup.integrity import check
from xsbackup.monitor import metrics, status
from xsbackup.server.service import DailyCheck
from xsbackup.snapshots import manifest, postprocess
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.store import get_xattrs

pytestmark = pytest.mark.integration
SN = "SHF00CHECK1"


def make_tree(src: Path, n: int = 12) -> None:
    (src / "sub" / "deep").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        where = src / ("sub" if i % 2 else "sub/deep") / f"f{i}.txt"
        where.write_bytes(f"file {i}\n".encode() * (i + 1))
    (src / "essay.odt").write_bytes(os.urandom(5000))


def push_ssh(server: Server, sshd: Sshd, src: Path) -> str:
    r = sshd.rsync(server.keys[SN], "-a", "--delete", f"{src}/", "127.0.0.1:documents/")
    assert r.returncode == 0, r.stderr
    postprocess.run_once(server.ctx())
    return server.store.snapshot_ids(SN, "documents")[-1]


@pytest.fixture
def two_snapshots(server: Server, sshd: Sshd, tmp_path: Path) -> tuple[Server, list[str]]:
    """Two snapshots of SN over sshd; the second changed one file, so the others share
    their inodes with the first."""
    server.add_client(SN)
    src = tmp_path / "src"
    make_tree(src)
    first = push_ssh(server, sshd, src)
    (src / "sub" / "f1.txt").write_bytes(b"changed\n")
    os.utime(src / "sub" / "f1.txt", (1_600_000_000, 1_600_000_000))
    second = push_ssh(server, sshd, src)
    assert first != second
    return server, [first, second]


def check_json(server: Server, *args: str) -> tuple[int, dict[str, Any]]:
    r = server.cli("check", SN, "--json", *args, check=False)
    return r.exit_code, orjson.loads(r.stdout)


def findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report["clients"][SN]["findings"])


def snap(server: Server, sid: str) -> Path:
    return server.store.snapshots_dir(SN, "documents") / sid


def test_a_flipped_byte_is_found_in_every_snapshot_sharing_it(
        two_snapshots: tuple[Server, list[str]]) -> None:
    server, sids = two_snapshots
    code, report = check_json(server, "--read-data")
    assert (code, findings(report)) == (0, [])
    assert report["clients"][SN]["inodes_read"] == report["clients"][SN]["inodes"] == 14

    victim = snap(server, sids[1]) / "essay.odt"
    st = victim.stat()
    assert st.st_ino == (snap(server, sids[0]) / "essay.odt").stat().st_ino
    with open(victim, "r+b") as fh:
        fh.seek(1234)
        byte = fh.read(1)
        fh.seek(1234)
        fh.write(bytes([byte[0] ^ 0x01]))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    before = tree_state(server.store.client_dir(SN) / "volumes")

    code, report = check_json(server)  # metadata only: same size and mtime, not seen
    assert (code, findings(report)) == (0, [])
    code, report = check_json(server, "--read-data")
    assert code == DamageFound.exit_code
    (found,) = findings(report)
    assert (found["kind"], found["path"], found["snapshots"], found["damage"]) == \
        ("content", "essay.odt", sids, True)
    assert report["clients"][SN]["inodes_read"] == 14  # each inode once, not once a snapshot
    assert tree_state(server.store.client_dir(SN) / "volumes") == before
    text = server.cli("check", SN, "--read-data", check=False)
    assert text.exit_code == DamageFound.exit_code
    assert "essay.odt" in text.stdout
    assert f"{sids[0]}, {sids[1]}" in text.stdout
    assert get_xattrs(server.store.client_dir(SN))["check_damaged"] == "1"
    exposition = metrics.render(server.store).decode()
    assert f'xsbackup_check_damaged_files{{client="{SN}"}} 1.0' in exposition
    assert f'xsbackup_check_last_time_seconds{{client="{SN}"}}' in exposition
    (row,) = status.client_rows(server.store, dt.datetime.now(dt.UTC))
    assert (row["check_damaged"], row["check_problems"]) == (1, 1)


def test_truncated_missing_and_replaced_files_are_found(
        two_snapshots: tuple[Server, list[str]]) -> None:
    server, sids = two_snapshots
    old, new = snap(server, sids[0]), snap(server, sids[1])
    os.truncate(new / "sub" / "f3.txt", 2)                 # shared by both snapshots
    (old / "sub" / "deep" / "f0.txt").unlink()             # only the first loses it
    replaced = new / "sub" / "deep" / "f2.txt"
    body, st = replaced.read_bytes(), replaced.stat()
    replaced.unlink()
    replaced.write_bytes(body)                             # same bytes, a new inode
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns))

    code, report = check_json(server)
    assert code == DamageFound.exit_code
    got = {(f["kind"], f["snapshot"], f["path"], tuple(f["snapshots"]))
           for f in findings(report)}
    assert got == {
        ("size", sids[0], "sub/f3.txt", tuple(sids)),
        ("missing", sids[0], "sub/deep/f0.txt", (sids[0],)),
        ("replaced", sids[1], "sub/deep/f2.txt", (sids[1],)),
    }


def test_an_unreadable_file_is_found(two_snapshots: tuple[Server, list[str]]) -> None:
    """A stored file that cannot be read: mode 000, and ``check`` run as root without
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv``), so the kernel refuses the open
    as it would to any other user; the store itself stays readable to its owner."""
    server, sids = two_snapshots
    victim = snap(server, sids[0]) / "essay.odt"          # shared by both snapshots
    os.chmod(victim, 0)
    no_override = "-dac_override,-dac_read_search"
    r = subprocess.run(["setpriv", f"--inh-caps={no_override}",
                        f"--bounding-set={no_override}", XSBACKUP, "--root",
                        str(server.root), "check", SN, "--read-data", "--json"],
                       capture_output=True, check=False)
    os.chmod(victim, 0o644)
    assert r.returncode == DamageFound.exit_code, r.stderr
    (found,) = findings(orjson.loads(r.stdout))
    assert (found["kind"], found["path"], found["snapshots"], found["damage"]) == \
        ("unreadable", "essay.odt", sids, True)
    code, report = check_json(server, "--read-data")       # readable again: clean
    assert (code, findings(report)) == (0, [])


def test_structure_problems_are_reported_and_nothing_changes(
        two_snapshots: tuple[Server, list[str]]) -> None:
    server, sids = two_snapshots
    store = server.store
    vol = store.volume_dir(SN, "documents")
    (vol / "incoming" / "2031-01-01T000000Z").mkdir()      # an orphaned transfer
    os.unlink(vol / "latest")
    os.symlink("snapshots/2030-01-01T000000Z", vol / "latest")  # dangling
    kept = vol / "manifests" / f"{sids[0]}.jsonl"
    original = kept.read_bytes()
    kept.unlink()
    before = tree_state(store.root / "clients")

    code, report = check_json(server)
    assert code == StructureProblems.exit_code
    got = {(f["kind"], f["snapshot"]) for f in findings(report)}
    assert got == {("orphaned-incoming", "2031-01-01T000000Z"),
                   ("dangling-latest", "2030-01-01T000000Z"),
                   ("missing-manifest", sids[0])}
    assert tree_state(store.root / "clients") == before

    os.unlink(vol / "latest")
    os.symlink(f"snapshots/{sids[1]}", vol / "latest")
    os.rmdir(vol / "incoming" / "2031-01-01T000000Z")
    code, report = check_json(server, "--repair-manifests", "--read-data")
    assert (code, findings(report)) == (0, [])
    assert report["clients"][SN]["repaired_manifests"] == [f"documents/{sids[0]}"]
    assert kept.read_bytes() == original
    assert kept.stat().st_mode & 0o777 == 0o444


def test_the_sample_rotates_over_every_inode(two_snapshots: tuple[Server, list[str]]) -> None:
    server, _ = two_snapshots
    ctx = server.ctx()
    nights = [dt.datetime(2026, 3, d, 2, 0, tzinfo=dt.UTC) for d in range(1, 5)]
    read: set[tuple[str, int]] = set()
    for i, night in enumerate(nights):
        report = check.run(ctx, SN, sample=25, now=lambda n=night: n)
        assert not report.findings
        assert not read & report.read_inodes  # a window never repeats within a round
        read |= report.read_inodes
        facts = get_xattrs(server.store.client_dir(SN))
        assert facts["check_at"] == night.isoformat()
        assert ("check_covered_at" in facts) == (i == 3)
    assert len(read) == report.inodes == 14
    assert facts["check_covered_at"] == nights[-1].isoformat()
    assert facts["check_position"] == "0"


def test_the_nightly_check_runs_once_a_night_and_rotates(
        two_snapshots: tuple[Server, list[str]]) -> None:
    server, _ = two_snapshots
    server.configure('[check]\nschedule = "02:00"\nsample_percent = 25\n')
    clock = [dt.datetime(2026, 3, 1, 1, 0, tzinfo=dt.UTC)]
    job = DailyCheck(server.ctx, clock=lambda: clock[0])
    facts = lambda: get_xattrs(server.store.client_dir(SN))  # noqa: E731
    job()
    assert "check_at" not in facts()  # before the schedule
    positions = []
    for day in range(1, 5):
        clock[0] = dt.datetime(2026, 3, day, 2, 30, tzinfo=dt.UTC)
        job()
        clock[0] = dt.datetime(2026, 3, day, 23, 0, tzinfo=dt.UTC)
        job()  # once a night only
        assert facts()["check_at"] == f"2026-03-0{day}T02:30:00+00:00"
        positions.append(facts()["check_position"])
        assert ("check_covered_at" in facts()) == (day == 4)
    assert positions == ["250000", "500000", "750000", "0"]
    assert (server.root / "last-check").read_text().startswith("2026-03-04T02:30")


def test_promotion_hashes_only_new_inodes(server: Server, tmp_path: Path) -> None:
    server.add_client(SN)
    src = tmp_path / "src"
    src.mkdir()
    for d in range(100):
        (src / f"d{d}").mkdir()
        for f in range(100):
            (src / f"d{d}" / f"{f}").write_bytes(b"%d.%d\n" % (d, f))
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    for _ in range(2):
        r = local_push(server, SN, src)
        assert r.returncode == 0, r.stderr
        postprocess.run_once(server.ctx())
    first, second = (read_facts(snap(server, s))["manifest"]
                     for s in server.store.snapshot_ids(SN, "documents"))
    assert first == {"files": 10_000, "reused": 0, "hashed_files": 10_000,
                     "hashed_bytes": total, "how": "built"}
    assert second == {"files": 10_000, "reused": 10_000, "hashed_files": 0,
                      "hashed_bytes": 0, "how": "linked"}
    kept = [server.store.volume_dir(SN, "documents") / "manifests" / f"{s}.jsonl"
            for s in server.store.snapshot_ids(SN, "documents")]
    assert kept[0].read_bytes() == kept[1].read_bytes()  # the same records, one file
    assert kept[0].stat().st_ino == kept[1].stat().st_ino
    assert len(kept[1].read_bytes().splitlines()) == 10_001  # the header and every file


def test_manifest_verb_carries_the_digest(two_snapshots: tuple[Server, list[str]],
                                          sshd: Sshd) -> None:
    server, sids = two_snapshots
    r = subprocess.run([*sshd.ssh_base(server.keys[SN]), "127.0.0.1",
                        f"manifest --at {sids[0]}"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {row["path"]: row for row in map(json.loads, r.stdout.splitlines())}
    essay = (snap(server, sids[0]) / "essay.odt").read_bytes()
    assert rows["essay.odt"]["blake2b"] == hashlib.blake2b(essay, digest_size=32).hexdigest()
    assert all("blake2b" in row for row in rows.values() if row["type"] == "file")
    assert "blake2b" not in rows["sub"]


def test_clients_show(two_snapshots: tuple[Server, list[str]]) -> None:
    server, sids = two_snapshots
    server.add_client("SHF00OTHER1")
    server.cli("clients", "alias", SN, "SHF00OTHER1")
    server.cli("clients", "set-policy", SN, "--keep-daily", "3", "--quota-bytes", "1GiB")
    server.cli("check", SN)
    row = orjson.loads(server.cli("clients", "show", SN, "--json").stdout)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(server.keys[SN])],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    assert [k["fingerprint"] for k in row["keys"]] == [fingerprint]
    assert row["aliases"] == ["SHF00OTHER1"]
    policy = {p["key"]: (p["value"], p["source"]) for p in row["policy"]}
    assert policy["keep_daily"] == (3, "client")
    assert policy["keep_weekly"][1] == "configuration"
    assert row["quota_bytes"] == 1 << 30
    assert row["usage_bytes"] > 0
    assert row["snapshot_count"] == 2
    assert row["volumes"][0]["latest"] == sids[1]
    assert row["last_success"]
    assert row["check"]["damaged"] == "0"
    text = server.cli("clients", "show", SN).stdout
    assert fingerprint in text
    assert "keep_daily" in text
    r = server.cli("clients", "show", "SHF0NOSUCH1", check=False)
    assert r.exit_code == 6


def test_a_deleted_snapshot_takes_its_manifest_along(
        two_snapshots: tuple[Server, list[str]]) -> None:
    server, sids = two_snapshots
    ctx = server.ctx()
    assert ctx.storage.manifest_ids(SN, "documents") == sids
    assert ctx.storage.delete(SN, "documents", sids[0]) == ""
    assert ctx.storage.manifest_ids(SN, "documents") == [sids[1]]
    code, report = check_json(server, "--read-data")
    assert (code, findings(report)) == (0, [])


@pytest.mark.parametrize("server", ["reflink"], indirect=True)
def test_reflink_promotion_reuses_digests_of_unchanged_files(server: Server,
                                                             tmp_path: Path) -> None:
    """Reflink snapshots share no inode with their predecessor: a digest is reused when
    the file in the persistent current/ has not changed since before the previous
    snapshot was copied. A client sending --ignore-times rewrites files whose size and
    mtime stay the same: they are hashed, and check --read-data agrees with every
    manifest."""
    import time

    server.add_client(SN)
    src = tmp_path / "src"
    make_tree(src)

    def push(*opts: str) -> dict[str, Any]:
        time.sleep(1.1)  # not a bound: snapshot ids have whole seconds, and the rule needs
        # a ctime before the previous id
        r = local_push(server, SN, src, "documents", *opts)
        assert r.returncode == 0, r.stderr
        postprocess.run_once(server.ctx())
        return read_facts(snap(server, server.store.snapshot_ids(SN, "documents")[-1]))[
            "manifest"]

    assert push()["hashed_files"] == 13
    push()  # files written within the first snapshot's second may be hashed once more
    facts = push()
    assert (facts["hashed_files"], facts["reused"]) == (0, 13)
    essay = src / "essay.odt"
    st = essay.stat()
    essay.write_bytes(os.urandom(st.st_size))
    os.utime(essay, ns=(st.st_atime_ns, st.st_mtime_ns))
    facts = push("--ignore-times")  # rsync then rebuilds every file of current/
    assert (facts["hashed_files"], facts["reused"]) == (13, 0)
    assert check.run(server.ctx(), SN, read_data=True).findings == []
    push()
    facts = push()
    assert (facts["hashed_files"], facts["reused"]) == (0, 13)


def test_damage_kept_from_one_snapshot_to_the_next_is_found_in_each(
        server: Server, tmp_path: Path) -> None:
    """``check`` compares a snapshot again only where its walk or its manifest differs
    from the snapshot checked before it (and parses a manifest with the same bytes as
    the last one only once): a damaged path that the next snapshot shares unchanged (the
    same file missing, the same foreign inode, the same unlisted inode linked into both)
    must still be a finding in each, as checking each snapshot alone finds it."""
    server.add_client(SN)
    src = tmp_path / "src"
    make_tree(src)
    sids = []
    for n in range(4):
        if n < 3:
            (src / f"new{n}.txt").write_bytes(b"n" * n)
        r = local_push(server, SN, src)
        assert r.returncode == 0, r.stderr
        postprocess.run_once(server.ctx())
        sids.append(server.store.snapshot_ids(SN, "documents")[-1])
    assert len(set(sids)) == 4
    manifests = server.store.volume_dir(SN, "documents") / "manifests"
    assert (manifests / f"{sids[3]}.jsonl").read_bytes() == \
        (manifests / f"{sids[2]}.jsonl").read_bytes()      # no change: the same manifest
    s0, s1, s2, s3 = (snap(server, sid) for sid in sids)
    for d in (s0, s1):
        (d / "sub" / "f1.txt").unlink()                    # missing from two in a row
    body = (s1 / "sub" / "f3.txt").read_bytes()
    st = (s1 / "sub" / "f3.txt").stat()
    for d in (s1, s2, s3):
        (d / "sub" / "f3.txt").unlink()
    (s1 / "sub" / "f3.txt").write_bytes(body)              # one foreign inode in three
    os.utime(s1 / "sub" / "f3.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    for d in (s2, s3):
        os.link(s1 / "sub" / "f3.txt", d / "sub" / "f3.txt")
    (s0 / "stray").write_bytes(b"stray")                   # unlisted, in all four
    for d in (s1, s2, s3):
        os.link(s0 / "stray", d / "stray")

    def kinds(report: check.Report) -> set[tuple[str, str, str]]:
        return {(f.kind, f.snapshot, f.path) for f in report.findings}

    whole = check.run(server.ctx(), SN, read_data=True)
    alone: set[tuple[str, str, str]] = set()
    for sid in sids:
        alone |= kinds(check.run(server.ctx(), SN, snapshot=sid, read_data=True))
    assert kinds(whole) == alone == {
        ("missing", sids[0], "sub/f1.txt"), ("missing", sids[1], "sub/f1.txt"),
        ("replaced", sids[1], "sub/f3.txt"), ("replaced", sids[2], "sub/f3.txt"),
        ("replaced", sids[3], "sub/f3.txt"),
        *(("unlisted", sid, "stray") for sid in sids)}
    assert [f.snapshot for f in whole.findings] == sorted(f.snapshot for f in whole.findings)


def test_files_dated_past_what_64_bits_of_nanoseconds_hold_are_promoted(
        server: Server, sshd: Sshd, tmp_path: Path) -> None:
    """A client's files dated after 2262 (past a signed 64-bit count of nanoseconds:
    ext4 dates files up to 2446) or long before 1970, sent over sshd and changed in a
    second backup: both promotions succeed, the manifest records each mtime exactly,
    and ``check --read-data`` finds nothing."""
    server.add_client(SN)
    src = tmp_path / "src"
    make_tree(src)
    future, past = src / "sub" / "future.txt", src / "sub" / "past.txt"
    dates = {future: 13_569_465_600 * 10**9 + 123, past: -2_000_000_000 * 10**9}
    for p, ns in dates.items():
        p.write_bytes(p.name.encode())
        os.utime(p, ns=(ns, ns))
    push_ssh(server, sshd, src)
    for p, ns in dates.items():  # new content, new inodes: the delta lists them
        p.write_bytes(p.name.encode() * 2)
        os.utime(p, ns=(ns + 10**9, ns + 10**9))
    sid = push_ssh(server, sshd, src)
    records = {r.path: r for r in manifest.read(server.ctx().storage, SN, "documents", sid)
               or []}
    for p, ns in dates.items():
        stored = snap(server, sid) / "sub" / p.name
        assert records[f"sub/{p.name}"].mtime_ns == stored.lstat().st_mtime_ns == ns + 10**9
    code, report = check_json(server, "--read-data")
    assert (code, findings(report)) == (0, [])
